// The real file system: Node's fs for reads, writes and syncs, and the cdp-native addon for what
// fs lacks (fallocate ranges, SEEK_DATA/SEEK_HOLE). Small synchronous writes stay on the event
// loop on purpose: a page-cache write is a few microseconds, cheaper than a thread-pool hop.

import fs from 'node:fs';
import * as native from 'cdp-native';
import type { FileHandle, FileSystem, OpenOptions } from './file-system.js';

class NodeFileHandle implements FileHandle {
  readonly path: string;
  private fd: number;

  constructor(path: string, fd: number) {
    this.path = path;
    this.fd = fd;
  }

  readSync(target: Buffer, positionBytes: number): number {
    let doneBytes = 0;
    while (doneBytes < target.length) {
      const readBytes = fs.readSync(this.fd, target, doneBytes, target.length - doneBytes, positionBytes + doneBytes);
      if (readBytes === 0) break;
      doneBytes += readBytes;
    }
    return doneBytes;
  }

  writeSync(source: Buffer, positionBytes: number): void {
    let doneBytes = 0;
    while (doneBytes < source.length) {
      doneBytes += fs.writeSync(this.fd, source, doneBytes, source.length - doneBytes, positionBytes + doneBytes);
    }
  }

  async read(target: Buffer, positionBytes: number): Promise<number> {
    let doneBytes = 0;
    while (doneBytes < target.length) {
      const readBytes = await new Promise<number>((resolve, reject) => {
        fs.read(this.fd, target, doneBytes, target.length - doneBytes, positionBytes + doneBytes, (error, bytesRead) =>
          error ? reject(error) : resolve(bytesRead),
        );
      });
      if (readBytes === 0) break;
      doneBytes += readBytes;
    }
    return doneBytes;
  }

  writeBatch(sources: readonly Buffer[], positionsBytes: readonly number[]): Promise<void> {
    return native.pwriteBatch(this.fd, sources, positionsBytes);
  }

  writeAligned(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable = false): Promise<void> {
    return native.pwriteAligned(this.fd, prefix, sources, positionBytes, alignmentBytes, durable);
  }

  writeAlignedSync(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable = false): void {
    native.pwriteAlignedSync(this.fd, prefix, sources, positionBytes, alignmentBytes, durable);
  }

  readCached(target: Buffer, positionBytes: number): number {
    return native.preadNoWait(this.fd, target, positionBytes);
  }

  async writev(sources: readonly Buffer[], positionBytes: number): Promise<void> {
    let pending = sources.filter((buffer) => buffer.length > 0);
    let position = positionBytes;
    while (pending.length > 0) {
      const written = await new Promise<number>((resolve, reject) => {
        fs.writev(this.fd, pending, position, (error, bytesWritten) => (error ? reject(error) : resolve(bytesWritten)));
      });
      position += written;
      pending = dropWrittenPrefix(pending, written);
    }
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (error) => (error ? reject(error) : resolve())));
  }

  zeroRange(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes > 0) native.zeroRange(this.fd, offsetBytes, lengthBytes);
  }

  async allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    // fallocate of fresh space is a metadata operation: quick enough to run inline.
    if (lengthBytes > 0) native.allocate(this.fd, offsetBytes, lengthBytes);
  }

  seekData(offsetBytes: number): number {
    return native.seekData(this.fd, offsetBytes);
  }

  seekHole(offsetBytes: number): number {
    return native.seekHole(this.fd, offsetBytes);
  }

  sizeBytes(): number {
    return fs.fstatSync(this.fd).size;
  }

  truncate(sizeBytes: number): void {
    fs.ftruncateSync(this.fd, sizeBytes);
  }

  close(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}

function dropWrittenPrefix(buffers: Buffer[], writtenBytes: number): Buffer[] {
  let remaining = writtenBytes;
  const rest: Buffer[] = [];
  for (const buffer of buffers) {
    if (remaining >= buffer.length) {
      remaining -= buffer.length;
      continue;
    }
    rest.push(remaining > 0 ? buffer.subarray(remaining) : buffer);
    remaining = 0;
  }
  return rest;
}

export const nodeFileSystem: FileSystem = {
  open(path: string, options: OpenOptions = {}): FileHandle {
    let flags = options.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (options.create) flags |= fs.constants.O_CREAT;
    if (options.exclusive) flags |= fs.constants.O_EXCL;
    if (options.direct) flags |= fs.constants.O_DIRECT;
    return new NodeFileHandle(path, fs.openSync(path, flags, 0o600));
  },
  exists: (path) => fs.existsSync(path),
  mkdirp: (path) => void fs.mkdirSync(path, { recursive: true, mode: 0o700 }),
  list: (path) => fs.readdirSync(path).sort(),
  remove: (path) => fs.rmSync(path, { force: true }),
  removeTree: (path) => fs.rmSync(path, { recursive: true, force: true }),
  rename: (fromPath, toPath) => fs.renameSync(fromPath, toPath),
  async syncDirectory(path: string): Promise<void> {
    const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      await new Promise<void>((resolve, reject) => fs.fsync(fd, (error) => (error ? reject(error) : resolve())));
    } finally {
      fs.closeSync(fd);
    }
  },
  freeBytes(path: string): number {
    const stats = fs.statfsSync(path);
    return stats.bavail * stats.bsize;
  },
  capacityBytes(path: string): number {
    const stats = fs.statfsSync(path);
    return stats.blocks * stats.bsize;
  },
  allocatedBytes(path: string): number {
    try {
      return fs.statSync(path).blocks * 512;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw error;
    }
  },
  bootId(): Buffer {
    try {
      const text = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, '');
      if (/^[0-9a-f]{32}$/.test(text)) return Buffer.from(text, 'hex');
    } catch {
      // Not Linux, or /proc is not mounted: unknown.
    }
    return Buffer.alloc(16);
  },
};
