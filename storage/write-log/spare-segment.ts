// The next log segment, made ready in the background while the current one fills: created and
// allocated (so a full disk shows up before any write depends on it), then filled with zeroes at
// a bounded rate. fdatasync on blocks that were written before, even with zeroes, does not have
// to record extent changes in the file system journal, which makes every FLUSH cheaper
// (measured here: 9.4k against 7.7k write+fdatasync/s). A spare taken into use before the
// filling ends simply keeps the rest as allocated space.

import { storageErrorFromSystem, type StorageError } from '../errors.js';
import { logBlockBytes, segmentHeaderBytes, type OpenSegment } from './segment.js';

const zeroChunk = Buffer.alloc(4 * 1024 * 1024);
const noPrefix = Buffer.alloc(0);

export class SpareSegment {
  readonly ready: Promise<void>;
  readonly attemptedAtMs = performance.now();
  segment: OpenSegment | null = null;
  error: StorageError | null = null;
  private stopped = false;
  private filling: Promise<void> = Promise.resolve();
  /** Ends the pause between two filling writes early (when the spare is taken over). */
  private wakeFromPause: (() => void) | null = null;

  constructor(create: () => Promise<OpenSegment>, zeroFillBytesPerSecond: number) {
    this.ready = create().then(
      (segment) => {
        this.segment = segment;
        if (zeroFillBytesPerSecond > 0) this.filling = this.fillWithZeroes(segment, zeroFillBytesPerSecond);
      },
      (error: unknown) => {
        this.error = storageErrorFromSystem(error, 'preparing the next write-log segment');
      },
    );
  }

  /** Stop filling; resolves once no filling write is in flight, so the log may be written. */
  async takeOver(): Promise<void> {
    this.stopped = true;
    this.wakeFromPause?.();
    await this.filling;
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

  private async fillWithZeroes(segment: OpenSegment, bytesPerSecond: number): Promise<void> {
    const startedMs = performance.now();
    let filledBytes = 0;
    try {
      for (let offsetBytes = segmentHeaderBytes; offsetBytes < segment.sizeBytes && !this.stopped; offsetBytes += zeroChunk.length) {
        const lengthBytes = Math.min(zeroChunk.length, segment.sizeBytes - offsetBytes);
        await segment.handle.writeAligned(noPrefix, [zeroChunk.subarray(0, lengthBytes - (lengthBytes % logBlockBytes))], offsetBytes, logBlockBytes);
        filledBytes += lengthBytes;
        const aheadMs = (filledBytes / bytesPerSecond) * 1000 - (performance.now() - startedMs);
        if (aheadMs > 0 && !this.stopped) await this.pause(aheadMs);
      }
      if (!this.stopped) await segment.handle.datasync();
    } catch {
      // Filling is an optimisation: a failure leaves allocated space, which works as well.
    }
  }
}
