// The storage layer's only door to files. Everything it persists goes through these two
// interfaces, so tests can put a simulated file system with injected faults (lost unsynced
// writes, torn writes, failing syncs) in place of the real one (node-file-system.ts).

import { randomBytes } from 'node:crypto';

export interface FileHandle {
  readonly path: string;
  /** Read into target at positionBytes; returns bytes read (short only at end of file). */
  readSync(target: Buffer, positionBytes: number): number;
  /** Write all of source at positionBytes (into the page cache; durable after datasync). */
  writeSync(source: Buffer, positionBytes: number): void;
  /** Read into target at positionBytes off the event loop; resolves with bytes read. */
  read(target: Buffer, positionBytes: number): Promise<number>;
  /** Write the buffers back to back from positionBytes, off the event loop. */
  writev(sources: readonly Buffer[], positionBytes: number): Promise<void>;
  /** Write sources[i] at positionsBytes[i] for every i, in order, off the event loop. */
  writeBatch(sources: readonly Buffer[], positionsBytes: readonly number[]): Promise<void>;
  /**
   * Write prefix then sources, zero-padded to a multiple of alignmentBytes, at positionBytes (a
   * multiple of it), off the event loop: the only write a handle opened `direct` may do. With
   * `durable` the write is durable when it resolves (RWF_DSYNC), as if followed by datasync.
   */
  writeAligned(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable?: boolean): Promise<void>;
  /** writeAligned on the calling thread, for small writes where a worker-thread hop costs more. */
  writeAlignedSync(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable?: boolean): void;
  /** Read what the page cache holds, without waiting for the disk: bytes read, 0 if none cached. */
  readCached(target: Buffer, positionBytes: number): number;
  /** Make every completed write of this file durable (fdatasync). */
  datasync(): Promise<void>;
  /** Make the range read as zeroes, keeping its space allocated. */
  zeroRange(offsetBytes: number, lengthBytes: number): void;
  /** Reserve space for the range (extending the file if needed), off the event loop. */
  allocate(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Next offset at or after offsetBytes holding data, or -1 if none. */
  seekData(offsetBytes: number): number;
  /** Next offset at or after offsetBytes starting a hole (end of file counts), or -1 past the end. */
  seekHole(offsetBytes: number): number;
  sizeBytes(): number;
  truncate(sizeBytes: number): void;
  close(): void;
}

export interface OpenOptions {
  /** Create the file if it is missing. */
  create?: boolean;
  /** Fail with EEXIST if it exists (with create). */
  exclusive?: boolean;
  /** Open without write access. */
  readOnly?: boolean;
  /** Bypass the page cache (O_DIRECT): only writeAligned, zeroRange, allocate and datasync then. */
  direct?: boolean;
}

export interface FileSystem {
  open(path: string, options?: OpenOptions): FileHandle;
  exists(path: string): boolean;
  mkdirp(path: string): void;
  /** Names in a directory, sorted. */
  list(path: string): string[];
  remove(path: string): void;
  removeTree(path: string): void;
  rename(fromPath: string, toPath: string): void;
  /** Make creations, renames and removals in a directory durable (fsync of the directory). */
  syncDirectory(path: string): Promise<void>;
  /** Bytes free for unprivileged use on the file system holding path. */
  freeBytes(path: string): number;
  /** Size in bytes of the file system holding path. */
  capacityBytes(path: string): number;
  /** Bytes the file system gives the file at path (its allocated blocks; 0 if it does not exist). */
  allocatedBytes(path: string): number;
  /**
   * An identifier of the current machine boot (16 bytes). A process crash keeps the page cache,
   * a machine restart does not; recovery tells them apart by this. Absent or all zeroes: unknown,
   * treated as a restart.
   */
  bootId?(): Buffer;
}

/** The write in progress (or last queued) to each file, per file system: writes to one file run one at a time. */
const atomicWritesInProgress = new WeakMap<FileSystem, Map<string, Promise<void>>>();

/**
 * Write a small file so that a crash leaves either the old or the new content, never a mix:
 * write a temporary file, sync it, rename it over the file, sync the directory. Each write has a
 * temporary name of its own (PATH.<random>.tmp), and writes to one file run one at a time in the
 * order they were asked for, so the last one asked for is what the file holds. Temporaries a
 * crash left behind are removed by the next write to the same file.
 */
export function writeFileAtomic(fileSystem: FileSystem, path: string, content: Buffer): Promise<void> {
  let writes = atomicWritesInProgress.get(fileSystem);
  if (writes === undefined) {
    writes = new Map();
    atomicWritesInProgress.set(fileSystem, writes);
  }
  const previous = writes.get(path) ?? Promise.resolve();
  const write = previous.catch(() => undefined).then(() => writeFileAtomicNow(fileSystem, path, content));
  const settled = write.catch(() => undefined);
  writes.set(path, settled);
  void settled.then(() => {
    if (writes.get(path) === settled) writes.delete(path);
  });
  return write;
}

async function writeFileAtomicNow(fileSystem: FileSystem, path: string, content: Buffer): Promise<void> {
  removeLeftTemporaries(fileSystem, path);
  const temporaryPath = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = fileSystem.open(temporaryPath, { create: true, exclusive: true });
  try {
    handle.writeSync(content, 0);
    await handle.datasync();
  } catch (error) {
    handle.close();
    fileSystem.remove(temporaryPath);
    throw error;
  }
  handle.close();
  fileSystem.rename(temporaryPath, path);
  await fileSystem.syncDirectory(directoryOf(path));
}

/** Temporaries of earlier writes to `path` that a crash cut short (none is in progress: writes to a file are serialized). */
function removeLeftTemporaries(fileSystem: FileSystem, path: string): void {
  const directory = directoryOf(path);
  const name = path.slice(directory === '/' ? 1 : directory.length + 1);
  const isTemporary = (candidate: string): boolean => candidate.startsWith(`${name}.`) && /^\.[0-9a-f]{12}\.tmp$/.test(candidate.slice(name.length));
  for (const candidate of fileSystem.list(directory).filter(isTemporary)) fileSystem.remove(`${directory}/${candidate}`);
}

/** Read a whole small file. */
export function readWholeFile(fileSystem: FileSystem, path: string): Buffer {
  const handle = fileSystem.open(path, { readOnly: true });
  try {
    const content = Buffer.alloc(handle.sizeBytes());
    let doneBytes = 0;
    while (doneBytes < content.length) {
      const readBytes = handle.readSync(content.subarray(doneBytes), doneBytes);
      if (readBytes === 0) break;
      doneBytes += readBytes;
    }
    return content.subarray(0, doneBytes);
  } finally {
    handle.close();
  }
}

export function directoryOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash <= 0 ? (slash === 0 ? '/' : '.') : path.slice(0, slash);
}
