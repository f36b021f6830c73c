// Types of cdp-native. README.md is the specification: errors, limits, platforms.

/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`, continuing
 * from `initial` (the CRC of the bytes before it; default 0). Unsigned 32-bit.
 * `crc32c(b, crc32c(a))` equals `crc32c(concatenation of a and b)`.
 * @throws TypeError (code ERR_INVALID_ARG_TYPE or ERR_OUT_OF_RANGE) on bad arguments.
 */
export declare function crc32c(data: Uint8Array, initial?: number): number;

/** `crc32c` over `buffers` as if they were one concatenated buffer. */
export declare function crc32cv(buffers: readonly Uint8Array[], initial?: number): number;

/** Which CRC-32C code this process runs: the SSE4.2 instruction or slicing-by-8 tables. */
export declare const crc32cImplementation: 'sse4.2' | 'table';

/**
 * fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeroes, its whole blocks
 * are freed, the file size is unchanged.
 * @throws SystemCallError (syscall 'fallocate'), TypeError on bad arguments.
 */
export declare function punchHole(fd: number, offsetBytes: number, lengthBytes: number): void;

/**
 * fallocate(ZERO_RANGE | KEEP_SIZE): the range reads as zeroes and stays allocated,
 * the file size is unchanged.
 * @throws SystemCallError (syscall 'fallocate'), TypeError on bad arguments.
 */
export declare function zeroRange(fd: number, offsetBytes: number, lengthBytes: number): void;

/**
 * fallocate(0): reserves blocks for the range; extends the file when the range
 * ends past its end.
 * @throws SystemCallError (syscall 'fallocate'), TypeError on bad arguments.
 */
export declare function allocate(fd: number, offsetBytes: number, lengthBytes: number): void;

/**
 * lseek(SEEK_DATA): the first offset at or after `offsetBytes` that holds data,
 * or -1 when there is none (lseek's ENXIO). Moves the file position of `fd`.
 * @throws SystemCallError (syscall 'lseek'), TypeError on bad arguments.
 */
export declare function seekData(fd: number, offsetBytes: number): number;

/**
 * lseek(SEEK_HOLE): the first offset at or after `offsetBytes` in a hole (the end
 * of the file counts as one), or -1 when `offsetBytes` is at or past the end.
 * Moves the file position of `fd`.
 * @throws SystemCallError (syscall 'lseek'), TypeError on bad arguments.
 */
export declare function seekHole(fd: number, offsetBytes: number): number;

/**
 * fstat's st_blksize: the file system's preferred I/O size for the file, in bytes.
 * @throws SystemCallError (syscall 'fstat'), TypeError on bad arguments.
 */
export declare function blockSize(fd: number): number;

/** What the file and socket functions throw when their system call fails; shaped like Node's fs errors. */
export interface SystemCallError extends Error {
  /** The errno name, for example 'EBADF', 'EOPNOTSUPP', 'ENOSPC', 'EINVAL'; 'UNKNOWN' for an unlisted errno. */
  code: string;
  /** The errno negated, as in Node's fs errors (EBADF gives -9). */
  errno: number;
  syscall: 'fallocate' | 'lseek' | 'fstat' | 'setsockopt' | 'flock';
}

/**
 * Write buffers[i] at positions[i] for every i, in order, on a libuv worker thread. Adjacent
 * writes are joined into one pwritev; partial writes are finished; the first failure rejects
 * the promise with a SystemCallError (syscall 'pwritev') and stops the batch. The buffers must
 * not change until the promise settles.
 * @throws TypeError on bad arguments (synchronously).
 */
export declare function pwriteBatch(fd: number, buffers: readonly Uint8Array[], positions: readonly number[]): Promise<void>;

/**
 * Copy `prefix` and then `buffers` into one buffer aligned to `alignmentBytes`, zero-padded to a
 * multiple of it, and write that at `positionBytes` (a multiple of it) on a libuv worker thread:
 * the shape O_DIRECT needs. With `durable`, the write is made with RWF_DSYNC: durable, data and
 * the metadata to find it, when the promise resolves. Rejects with a SystemCallError
 * (syscall 'pwrite').
 * @throws TypeError on bad arguments (synchronously).
 */
export declare function pwriteAligned(
  fd: number,
  prefix: Uint8Array,
  buffers: readonly Uint8Array[],
  positionBytes: number,
  alignmentBytes: number,
  durable?: boolean,
): Promise<void>;

/**
 * Read into `target` at `positionBytes` only what the page cache holds (preadv2 with RWF_NOWAIT):
 * returns the bytes read, possibly fewer than asked and 0 when the next byte is not cached (or the
 * kernel cannot tell). Never waits for the disk.
 */
export declare function preadNoWait(fd: number, target: Uint8Array, positionBytes: number): number;

/** `pwriteAligned` done on the calling thread; throws instead of rejecting. For small writes. */
export declare function pwriteAlignedSync(
  fd: number,
  prefix: Uint8Array,
  buffers: readonly Uint8Array[],
  positionBytes: number,
  alignmentBytes: number,
  durable?: boolean,
): void;

/**
 * Tune glibc's allocator for a long-running server doing large I/O: a fixed mmap threshold of
 * 128 KiB (freed large blocks go back to the system instead of staying in arenas) and at most two
 * arenas. Process-wide; call once at start. No effect on other C libraries.
 */
export declare function limitAllocatorRetention(): void;

/**
 * Keepalive on a connected TCP socket: SO_KEEPALIVE, the first probe after `idleSeconds` of
 * silence (TCP_KEEPIDLE), then one every `intervalSeconds` (TCP_KEEPINTVL); after `probeCount`
 * unanswered probes (TCP_KEEPCNT) the kernel ends the connection with ETIMEDOUT. Each at least 1.
 * `fd` is the socket's descriptor (`socket._handle.fd` of a net.Socket on Linux).
 * @throws SystemCallError (syscall 'setsockopt': ENOTSOCK, EOPNOTSUPP for a unix socket, EBADF), TypeError on bad arguments.
 */
export declare function setTcpKeepAlive(fd: number, idleSeconds: number, intervalSeconds: number, probeCount: number): void;

/**
 * TCP_USER_TIMEOUT: the longest sent data or a keepalive probe may stay unacknowledged before the
 * kernel ends the connection with ETIMEDOUT; 0 restores the system's default.
 * @throws SystemCallError (syscall 'setsockopt'), TypeError on bad arguments.
 */
export declare function setTcpUserTimeout(fd: number, timeoutMs: number): void;

/**
 * Take the exclusive advisory lock of an open file without waiting (flock LOCK_EX | LOCK_NB):
 * true when this open file now holds it, false when another open file holds it (in this process
 * or another). Closing the file, or the death of the process, releases it.
 * @throws SystemCallError (syscall 'flock') when flock fails otherwise (EBADF, ENOLCK, ...).
 */
export declare function lockExclusive(fd: number): boolean;
