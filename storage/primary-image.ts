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

  read(offsetBytes: number, target: Buffer): void {
    const readBytes = this.handle.readSync(target, offsetBytes);
    if (readBytes < target.length) target.fill(0, readBytes);
  }

  /** Apply one data-changing record (in log order). */
  apply(record: AppendedRecord): void {
    if (record.kind === RecordKind.data) {
      this.handle.writeSync(record.data!, record.offsetBytes);
    } else if (record.kind === RecordKind.zeroes || record.kind === RecordKind.trim) {
      this.handle.zeroRange(record.offsetBytes, record.lengthBytes);
    }
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
