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

/** Records are applied in this many parallel lanes of stripes of this size (see apply). */
const applyLaneCount = 4;
const applyStripeBytes = 1024 * 1024;

interface ApplyLane {
  buffers: Buffer[];
  positions: number[];
}

function newLanes(): ApplyLane[] {
  return Array.from({ length: applyLaneCount }, () => ({ buffers: [], positions: [] }));
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
   * Apply records in log order, on worker threads: data records go out as batches of positioned
   * writes, one batch per lane, the lanes in parallel (page-cache writes scale with threads).
   * A lane takes the records of every applyLaneCount-th stripe of the volume, so records in
   * different lanes never overlap and each lane keeps its records in order. A record that spans
   * stripes, and zeroing (a metadata change), wait for everything before them.
   */
  async apply(records: readonly AppendedRecord[]): Promise<void> {
    let lanes = newLanes();
    const flushLanes = async (): Promise<void> => {
      const pending = lanes.filter((lane) => lane.buffers.length > 0);
      lanes = newLanes();
      await Promise.all(pending.map((lane) => this.handle.writeBatch(lane.buffers, lane.positions)));
    };
    for (const record of records) {
      if (record.kind === RecordKind.data) {
        const firstStripe = Math.floor(record.offsetBytes / applyStripeBytes);
        const lastStripe = Math.floor((record.offsetBytes + record.lengthBytes - 1) / applyStripeBytes);
        if (firstStripe === lastStripe) {
          const lane = lanes[firstStripe % applyLaneCount]!;
          lane.buffers.push(record.data!);
          lane.positions.push(record.offsetBytes);
          continue;
        }
        await flushLanes();
        await this.handle.writeBatch([record.data!], [record.offsetBytes]);
      } else if (record.kind === RecordKind.zeroes || record.kind === RecordKind.trim) {
        await flushLanes();
        this.handle.zeroRange(record.offsetBytes, record.lengthBytes);
      }
    }
    await flushLanes();
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
