// The live image (primary.img): the volume's current contents, written in place. It is fully
// allocated when the volume is created, and zeroing keeps the space allocated, so applying a
// write that is already durable in the log never meets a full disk.

import type { FileHandle, FileSystem } from './io/file-system.js';
import type { AppendedRecord } from './write-log/batch.js';
import { RecordKind } from './write-log/record.js';

/** One extent of allocation status, as block status reports it. */
export interface AllocationExtent {
  lengthBytes: number;
  /** True when the range is a hole (unallocated or known to read as zeroes). */
  hole: boolean;
}

/** Reads up to this size are tried from the page cache on the event loop first. */
const cachedReadBytesMax = 128 * 1024;

export class PrimaryImage {
  readonly sizeBytes: number;
  private readonly handle: FileHandle;

  private constructor(handle: FileHandle, sizeBytes: number) {
    this.handle = handle;
    this.sizeBytes = sizeBytes;
  }

  /** Create the image file and reserve its space. */
  static async create(fileSystem: FileSystem, path: string, sizeBytes: number): Promise<void> {
    const handle = fileSystem.open(path, { create: true, exclusive: true });
    try {
      handle.truncate(sizeBytes);
      await handle.allocate(0, sizeBytes);
      await handle.datasync();
    } finally {
      handle.close();
    }
  }

  static open(fileSystem: FileSystem, path: string, sizeBytes: number, readOnly = false): PrimaryImage {
    return new PrimaryImage(fileSystem.open(path, { readOnly }), sizeBytes);
  }

  /**
   * Read what the page cache holds on the event loop (no thread hop), and anything it does not
   * hold on a worker thread, so a read that must wait for the disk never stalls other requests.
   * Large reads always go to a worker thread, so several copy at once on other cores.
   */
  async read(offsetBytes: number, target: Buffer): Promise<void> {
    let doneBytes = target.length <= cachedReadBytesMax ? this.handle.readCached(target, offsetBytes) : 0;
    if (doneBytes < target.length) doneBytes += await this.handle.read(target.subarray(doneBytes), offsetBytes + doneBytes);
    if (doneBytes < target.length) target.fill(0, doneBytes);
  }

  /**
   * Apply records in log order. Runs of data records go to a worker thread as one batch of
   * positioned writes; zeroing (a metadata change) happens in between, in its place.
   */
  async apply(records: readonly AppendedRecord[]): Promise<void> {
    let buffers: Buffer[] = [];
    let positions: number[] = [];
    for (const record of records) {
      if (record.kind === RecordKind.data) {
        buffers.push(record.data!);
        positions.push(record.offsetBytes);
      } else if (record.kind === RecordKind.zeroes || record.kind === RecordKind.trim) {
        if (buffers.length > 0) await this.handle.writeBatch(buffers, positions);
        buffers = [];
        positions = [];
        this.handle.zeroRange(record.offsetBytes, record.lengthBytes);
      }
    }
    if (buffers.length > 0) await this.handle.writeBatch(buffers, positions);
  }

  writeData(offsetBytes: number, data: Buffer): void {
    this.handle.writeSync(data, offsetBytes);
  }

  zero(offsetBytes: number, lengthBytes: number): void {
    this.handle.zeroRange(offsetBytes, lengthBytes);
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  /** Allocation of [offsetBytes, offsetBytes + lengthBytes), from SEEK_DATA/SEEK_HOLE, merged. */
  allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): AllocationExtent[] {
    const endBytes = offsetBytes + lengthBytes;
    const extents: AllocationExtent[] = [];
    let position = offsetBytes;
    while (position < endBytes && extents.length < extentCountMax) {
      const nextData = this.handle.seekData(position);
      const isHole = nextData === -1 || nextData > position;
      const boundary = isHole ? (nextData === -1 ? endBytes : nextData) : this.handle.seekHole(position);
      const extentEnd = Math.min(boundary === -1 ? endBytes : boundary, endBytes);
      extents.push({ lengthBytes: extentEnd - position, hole: isHole });
      position = extentEnd;
    }
    return extents;
  }

  close(): void {
    this.handle.close();
  }
}
