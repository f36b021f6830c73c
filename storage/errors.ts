// Errors the storage layer reports to its callers. Each carries a stable code named after the
// POSIX errno it corresponds to; the server maps codes to NBD error values in one place.

export type StorageErrorCode =
  | 'EIO' // an I/O error, or the volume is failed after an unrecoverable log error
  | 'ENOSPC' // no space for the log, or a write past the end of the volume
  | 'EPERM' // a write to a read-only device
  | 'EINVAL' // a request the device cannot take (range, alignment, arguments)
  | 'ENOTSUP' // an operation the device does not offer (e.g. a fast zero it cannot do)
  | 'ESHUTDOWN' // the device is closing
  | 'ECANCELED' // a long operation (verification) was cancelled
  | 'ENOENT' // a volume or file that does not exist
  | 'EEXIST' // a volume that already exists
  | 'ECORRUPT' // an on-disk structure failed its checks
  | 'EEXPIRED'; // an instant the retention policy no longer keeps

export class StorageError extends Error {
  readonly code: StorageErrorCode;
  /** Facts for the caller (EEXPIRED: the nearest kept instants). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: StorageErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options);
    this.name = 'StorageError';
    this.code = code;
    this.details = options?.details;
  }
}

/** Turn an error from the operating system into a StorageError, keeping it as the cause. */
export function storageErrorFromSystem(error: unknown, doing: string): StorageError {
  if (error instanceof StorageError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
    return new StorageError('ENOSPC', `${doing}: no space left (${code})`, { cause: error });
  }
  if (code === 'ENOENT') return new StorageError('ENOENT', `${doing}: ${message}`, { cause: error });
  return new StorageError('EIO', `${doing}: ${message}`, { cause: error });
}

/** An error's message followed by its causes' ("Database failed to open: Corruption: ..."), for reports. */
export function messageWithCauses(error: unknown): string {
  const messages: string[] = [];
  for (let current: unknown = error; current !== undefined && current !== null && messages.length < 4; current = (current as { cause?: unknown }).cause) {
    const message = current instanceof Error ? current.message : String(current);
    if (!messages.some((earlier) => earlier.includes(message))) messages.push(message);
    if (!(current instanceof Error)) break;
  }
  return messages.join(': ');
}

/** An invariant of ours does not hold: a bug, never a consequence of input. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}
