// Reads data back out of the write log: the bytes of an extent, from the record that holds them
// (as written, or compressed in frames: storage/write-log/payload-codec.ts). Segments are opened
// for reading through the page cache and kept open, a bounded number at once (one in use by a
// read is never closed under it); decoded frames are kept in a cache bounded by
// storageLimits.decodedFrameCacheBytes.

import type { FileHandle, FileSystem } from '../io/file-system.js';
import type { ExtentSource } from '../index/extents.js';
import { storageLimits } from '../limits.js';
import { DecodedFrameCache, readRecordData } from '../write-log/payload-codec.js';
import { recordHeaderBytes } from '../write-log/record.js';
import { segmentFileName } from '../write-log/segment.js';

const openSegmentCountMax = 64;

interface OpenSegmentReader {
  handle: FileHandle;
  readsInFlight: number;
}

export class LogDataReader {
  private readonly segments = new Map<number, OpenSegmentReader>();
  private readonly frames = new DecodedFrameCache(storageLimits.decodedFrameCacheBytes);

  constructor(
    private readonly fileSystem: FileSystem,
    private readonly logDirectory: string,
  ) {}

  /**
   * Read the data of `source` for volume range [startBytes, startBytes + target.length) into
   * target. What the page cache (and the frame cache) holds is read at once (and null returned);
   * only the rest goes to a worker thread.
   */
  read(source: ExtentSource, startBytes: number, target: Buffer): Promise<void> | null {
    const segment = this.segment(source.segmentNumber);
    const stored = {
      file: segment.handle,
      fileKey: String(source.segmentNumber),
      payloadPositionBytes: source.recordOffsetBytes + recordHeaderBytes,
      compressed: source.compressed,
    };
    const reading = readRecordData(stored, startBytes - source.volumeOffsetBytes, target, this.frames);
    if (reading === null) return null;
    segment.readsInFlight++;
    return reading.finally(() => segment.readsInFlight--);
  }

  close(): void {
    for (const segment of this.segments.values()) segment.handle.close();
    this.segments.clear();
  }

  private segment(segmentNumber: number): OpenSegmentReader {
    let segment = this.segments.get(segmentNumber);
    if (segment !== undefined) {
      this.segments.delete(segmentNumber); // most recently used last
      this.segments.set(segmentNumber, segment);
      return segment;
    }
    if (this.segments.size >= openSegmentCountMax) {
      for (const [oldestNumber, oldest] of this.segments) {
        if (oldest.readsInFlight > 0) continue;
        oldest.handle.close();
        this.segments.delete(oldestNumber);
        break;
      }
    }
    segment = { handle: this.fileSystem.open(`${this.logDirectory}/${segmentFileName(segmentNumber)}`, { readOnly: true }), readsInFlight: 0 };
    this.segments.set(segmentNumber, segment);
    return segment;
  }
}
