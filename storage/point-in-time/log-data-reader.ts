// Reads history's data back: the bytes of an extent, from the record that holds them in a log
// segment or a pack (as written, or compressed in frames: storage/write-log/payload-codec.ts), or
// from the base image (extents.ts, fileNumbers). Files are opened for reading through the page
// cache and kept open, a bounded number at once (one in use by a read is never closed under it;
// a file deleted while open stays readable through its handle); decoded frames are kept in a
// cache bounded by storageLimits.decodedFrameCacheBytes.

import type { FileHandle, FileSystem } from '../io/file-system.js';
import { fileNumbers, type ExtentSource } from '../index/extents.js';
import { indexLimits, storageLimits } from '../limits.js';
import { packFileName } from '../retention/pack-file.js';
import { DecodedFrameCache, readRecordData } from '../write-log/payload-codec.js';
import { recordHeaderBytes } from '../write-log/record.js';
import { segmentFileName } from '../write-log/segment.js';


interface OpenSegmentReader {
  handle: FileHandle;
  readsInFlight: number;
  /** The file was deleted: close the handle when the last read ends (the file system frees it only then). */
  closeWhenIdle: boolean;
}

export class LogDataReader {
  private readonly segments = new Map<number, OpenSegmentReader>();
  private readonly frames = new DecodedFrameCache(storageLimits.decodedFrameCacheBytes);

  constructor(
    private readonly fileSystem: FileSystem,
    private readonly paths: HistoryFilePaths,
  ) {}

  /**
   * Read the data of `source` for volume range [startBytes, startBytes + target.length) into
   * target. What the page cache (and the frame cache) holds is read at once (and null returned);
   * only the rest goes to a worker thread.
   */
  read(source: ExtentSource, startBytes: number, target: Buffer): Promise<void> | null {
    const segment = this.segment(source.segmentNumber);
    const fromBase = source.segmentNumber === fileNumbers.baseImage; // the base image is the volume, byte for byte
    const stored = {
      file: segment.handle,
      fileKey: String(source.segmentNumber),
      payloadPositionBytes: fromBase ? 0 : source.recordOffsetBytes + recordHeaderBytes,
      compressed: !fromBase && source.compressed,
    };
    const reading = readRecordData(stored, fromBase ? startBytes : startBytes - source.volumeOffsetBytes, target, this.frames);
    if (reading === null) return null;
    segment.readsInFlight++;
    return reading.finally(() => {
      segment.readsInFlight--;
      if (segment.closeWhenIdle && segment.readsInFlight === 0) this.closeSegment(source.segmentNumber, segment);
    });
  }

  /**
   * The file was deleted (a segment or a pack expiry made unnecessary): close its handle now, or
   * when the reads using it end. A kept handle would hold the file's blocks on the file system.
   */
  forget(fileNumber: number): void {
    const segment = this.segments.get(fileNumber);
    if (segment === undefined) return;
    segment.closeWhenIdle = true;
    if (segment.readsInFlight === 0) this.closeSegment(fileNumber, segment);
  }

  private closeSegment(fileNumber: number, segment: OpenSegmentReader): void {
    segment.handle.close();
    if (this.segments.get(fileNumber) === segment) this.segments.delete(fileNumber);
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
    if (this.segments.size >= indexLimits.openLogFileCountMax) {
      for (const [oldestNumber, oldest] of this.segments) {
        if (oldest.readsInFlight > 0) continue;
        oldest.handle.close();
        this.segments.delete(oldestNumber);
        break;
      }
    }
    segment = { handle: this.fileSystem.open(this.pathOf(segmentNumber), { readOnly: true }), readsInFlight: 0, closeWhenIdle: false };
    this.segments.set(segmentNumber, segment);
    return segment;
  }

  private pathOf(fileNumber: number): string {
    if (fileNumber === fileNumbers.baseImage) return this.paths.base;
    if (fileNumber >= fileNumbers.packFirst) return `${this.paths.packs}/${packFileName(fileNumber - fileNumbers.packFirst)}`;
    return `${this.paths.log}/${segmentFileName(fileNumber)}`;
  }
}

/** Where a volume's history files live. */
export interface HistoryFilePaths {
  log: string;
  packs: string;
  base: string;
}
