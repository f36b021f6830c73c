// Fills the unused part of a log segment with zeroes, in the background, at a bounded rate.
//
// Segments are allocated with fallocate, which leaves "unwritten" extents: the first write to
// each block must also record, in the file system journal, that the block now holds data, and
// an fdatasync (or a durable write) then commits that journal entry too. Blocks that already
// hold zeroes need no such change, so a FLUSH costs one device write (measured here: 9.4k
// against 7.7k durable 4 KiB writes per second). A filler works ahead of the log writer, at a
// bounded rate, until the segment is full; when the writer overtakes it (under heavy writes),
// it jumps ahead of the writer again.

import { logBlockBytes, segmentHeaderBytes, type OpenSegment } from './segment.js';

const zeroChunk = Buffer.alloc(4 * 1024 * 1024);
const noPrefix = Buffer.alloc(0);
/**
 * The filler starts this far ahead of the append position, so its zeroes are not overwritten at
 * once. (Safety does not rest on it: the log writer waits for a zero write it would overlap.)
 */
const aheadBytes = 1024 * 1024;

function alignUp(offsetBytes: number): number {
  return Math.ceil(offsetBytes / logBlockBytes) * logBlockBytes;
}

export class SegmentFiller {
  private readonly segment: OpenSegment;
  /** Where the log writer appends in this segment now, or null before it reaches the segment. */
  private readonly appendOffset: () => number | null;
  private stopped = false;
  private readonly running: Promise<void>;
  private wakeFromPause: (() => void) | null = null;
  /** The range of the zero write in flight, if any. */
  private inFlight: { startBytes: number; endBytes: number; done: Promise<void> } | null = null;

  /** A failed zero write or sync: the log's own I/O on this file may have failed unseen. */
  private readonly onFailure: (error: unknown) => void;

  constructor(segment: OpenSegment, appendOffset: () => number | null, bytesPerSecond: number, onFailure: (error: unknown) => void) {
    this.segment = segment;
    this.appendOffset = appendOffset;
    this.onFailure = onFailure;
    this.running = bytesPerSecond > 0 ? this.fill(bytesPerSecond) : Promise.resolve();
  }

  /** Resolves when no zero write overlaps [startBytes, endBytes): the log may write there. */
  async clear(startBytes: number, endBytes: number): Promise<void> {
    const inFlight = this.inFlight;
    if (inFlight !== null && inFlight.startBytes < endBytes && startBytes < inFlight.endBytes) await inFlight.done;
  }

  /** Stop filling; resolves once no zero write is in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeFromPause?.();
    await this.running;
  }

  private async fill(bytesPerSecond: number): Promise<void> {
    const startedMs = performance.now();
    let filledBytes = 0;
    let nextBytes = segmentHeaderBytes;
    const { handle, sizeBytes } = this.segment;
    try {
      while (!this.stopped) {
        const appendOffsetBytes = this.appendOffset();
        const startBytes = appendOffsetBytes === null ? nextBytes : Math.max(nextBytes, alignUp(appendOffsetBytes + aheadBytes));
        const lengthBytes = Math.min(zeroChunk.length, sizeBytes - startBytes);
        if (lengthBytes < logBlockBytes) break; // the segment is filled (or written) to its end
        const chunk = zeroChunk.subarray(0, lengthBytes - (lengthBytes % logBlockBytes));
        // Durable before the log can reach it, so a zero can never land after log data.
        const done = handle.writeAligned(noPrefix, [chunk], startBytes, logBlockBytes).then(() => handle.datasync());
        this.inFlight = { startBytes, endBytes: startBytes + chunk.length, done: done.catch(() => undefined) };
        await done;
        this.inFlight = null;
        nextBytes = startBytes + chunk.length;
        filledBytes += chunk.length;
        const aheadMs = (filledBytes / bytesPerSecond) * 1000 - (performance.now() - startedMs);
        if (aheadMs > 0 && !this.stopped) await this.pause(aheadMs);
      }
    } catch (error) {
      // A failed sync of this file may have taken the report of a failed log write with it
      // (Linux reports a writeback error once per file): treat it as the log's own failure.
      this.onFailure(error);
    }
    this.inFlight = null;
  }

  private pause(durationMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeFromPause = null;
        resolve();
      }, durationMs);
      timer.unref();
      this.wakeFromPause = () => {
        clearTimeout(timer);
        this.wakeFromPause = null;
        resolve();
      };
    });
  }
}
