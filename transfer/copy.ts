// The engine under restore, verify and seed: walk a plan of byte ranges in increasing order,
// read the source, and per piece either write it to the target, compare with the target and
// write only what differs, or only compare. Pieces overlap in flight up to a byte bound; the
// watermark `doneThroughBytes` only moves past a piece once every earlier piece is done, so a
// checkpoint of it is a safe place to resume from.

import { isAllZero } from '../storage/index.js';
import type { Endpoint } from './endpoints.js';
import { BoundedRangeSet, type ByteRange } from './ranges.js';

export type CopyMode =
  /** Write every piece (zero pieces as write-zeroes). */
  | 'write'
  /** Read the target too and write only pieces that differ (seed 002's digest synchronisation). */
  | 'compare'
  /** Read both sides, never write: a consistency check. */
  | 'check';

export interface CopyOptions {
  source: Endpoint;
  target: Endpoint;
  /** Increasing, non-overlapping pieces, each at most requestBytesMax. */
  pieces: Iterable<ByteRange>;
  mode: CopyMode;
  /** Bytes of pieces in flight at once (memory bound: about twice this). */
  inFlightBytesMax?: number;
  /** Throttle, so a restore does not saturate the link or the target. */
  rateBytesPerSecondMax?: number;
  onProgress?: (progress: CopyProgress) => void;
  signal?: AbortSignal;
  /** Where written ranges are recorded (for the final verification); bounded. */
  written?: BoundedRangeSet;
  /** Where differing ranges are recorded (compare and check); bounded. */
  differing?: BoundedRangeSet;
}

export interface CopyProgress {
  /** Every planned byte below this is done. */
  doneThroughBytes: number;
  /** Planned bytes done so far (pieces completed), for rate and ETA. */
  processedBytes: number;
}

export interface CopyCounters {
  processedBytes: number;
  writtenBytes: number;
  zeroedBytes: number;
  /** Bytes found equal on the target (compare, check). */
  equalBytes: number;
  /** Bytes found different (compare, check). */
  differingBytes: number;
  /** Bytes written in compare mode without reading the target first (long runs of differences). */
  blindBytes: number;
}

/** Within a differing piece, blocks of this size are compared and only differing ones written... */
const compareBlockBytes = 4096;
/** ...joined into one write across equal gaps of up to this. */
const joinGapBytes = 16 * 1024;

/** How far ahead the source is told what will be read (a view resolves its extents at once). */
const prefetchWindowBytes = 64 * 1024 * 1024;

export const copyDefaults = {
  inFlightBytesMax: 32 * 1024 * 1024,
  /** After this many mostly differing pieces in a row, compare mode stops reading the target... */
  differingRunForBlind: 16,
  /** ...except one piece in this many, to notice when the sides match again. */
  blindProbeInterval: 16,
};

class Aborted extends Error {
  constructor() {
    super('the transfer was cancelled');
    this.name = 'AbortError';
  }
}

export async function copyRanges(options: CopyOptions): Promise<CopyCounters> {
  const { source, target, mode } = options;
  const inFlightBytesMax = options.inFlightBytesMax ?? copyDefaults.inFlightBytesMax;
  const counters: CopyCounters = { processedBytes: 0, writtenBytes: 0, zeroedBytes: 0, equalBytes: 0, differingBytes: 0, blindBytes: 0 };
  const inFlight: Array<{ piece: ByteRange; done: boolean; promise: Promise<void> }> = [];
  let inFlightBytes = 0;
  let doneThroughBytes = 0;
  let failure: unknown = null;
  let differingRun = 0;
  let piecesSinceProbe = 0;
  const startedMs = performance.now();
  let dispatchedBytes = 0;
  let wake: (() => void) | null = null;

  const processPiece = async (piece: ByteRange, readTarget: boolean): Promise<void> => {
    const lengthBytes = piece.endBytes - piece.startBytes;
    const [data, existing] = await Promise.all([
      source.read(piece.startBytes, lengthBytes),
      readTarget ? target.read(piece.startBytes, lengthBytes) : Promise.resolve(null),
    ]);
    if (existing !== null) {
      if (existing.equals(data)) {
        counters.equalBytes += lengthBytes;
        differingRun = 0;
        return;
      }
      // Scattered small changes leave most of a piece equal: find and send only the blocks that differ.
      const runs = differingRuns(data, existing);
      const runBytes = runs.reduce((total, [from, to]) => total + to - from, 0);
      differingRun = runBytes * 2 > lengthBytes ? differingRun + 1 : 0;
      counters.differingBytes += runBytes;
      counters.equalBytes += lengthBytes - runBytes;
      for (const [from, to] of runs) options.differing?.add(piece.startBytes + from, piece.startBytes + to);
      if (mode === 'check') return;
      await Promise.all(runs.map(([from, to]) => writePiece(piece.startBytes + from, data.subarray(from, to))));
      return;
    }
    if (mode === 'check') return;
    if (mode === 'compare') counters.blindBytes += lengthBytes;
    await writePiece(piece.startBytes, data);
  };

  const writePiece = async (startBytes: number, data: Buffer): Promise<void> => {
    if (isAllZero(data)) {
      await target.writeZeroes(startBytes, data.length);
      counters.zeroedBytes += data.length;
    } else {
      await target.write(startBytes, data);
      counters.writtenBytes += data.length;
    }
    options.written?.add(startBytes, startBytes + data.length);
  };

  const shouldReadTarget = (): boolean => {
    if (mode === 'write') return false;
    if (mode === 'check') return true;
    if (differingRun < copyDefaults.differingRunForBlind) return true;
    piecesSinceProbe++;
    if (piecesSinceProbe < copyDefaults.blindProbeInterval) return false;
    piecesSinceProbe = 0;
    return true;
  };

  const settle = (): void => {
    while (inFlight.length > 0 && inFlight[0]!.done) {
      const finished = inFlight.shift()!;
      doneThroughBytes = finished.piece.endBytes;
    }
    options.onProgress?.({ doneThroughBytes, processedBytes: counters.processedBytes });
  };

  // The source learns a window ahead what will be read; the next window is asked for while
  // this one is being read.
  let prefetchedThroughBytes = 0;
  let prefetching: Promise<void> = Promise.resolve();
  const prefetchFrom = (fromBytes: number): void => {
    if (source.prefetch === undefined || fromBytes >= source.sizeBytes) return;
    prefetchedThroughBytes = Math.min(source.sizeBytes, fromBytes + prefetchWindowBytes);
    prefetching = source.prefetch(fromBytes, prefetchedThroughBytes - fromBytes).catch(() => undefined); // only a hint
  };
  for (const piece of options.pieces) {
    if (options.signal?.aborted === true) failure ??= new Aborted();
    if (source.prefetch !== undefined && piece.endBytes > prefetchedThroughBytes) {
      prefetchFrom(Math.max(piece.startBytes, prefetchedThroughBytes));
      await prefetching;
      prefetchFrom(prefetchedThroughBytes);
    }
    if (failure !== null) break;
    const lengthBytes = piece.endBytes - piece.startBytes;
    while (inFlightBytes > 0 && inFlightBytes + lengthBytes > inFlightBytesMax && failure === null) {
      await new Promise<void>((resolve) => (wake = resolve));
    }
    if (failure !== null) break;
    await throttle(options.rateBytesPerSecondMax, dispatchedBytes, startedMs);
    dispatchedBytes += lengthBytes;
    inFlightBytes += lengthBytes;
    const entry = { piece, done: false, promise: Promise.resolve() };
    entry.promise = processPiece(piece, shouldReadTarget()).then(
      () => {
        entry.done = true;
        inFlightBytes -= lengthBytes;
        counters.processedBytes += lengthBytes;
        settle();
        wake?.();
      },
      (error: unknown) => {
        failure ??= error;
        inFlightBytes -= lengthBytes;
        wake?.();
      },
    );
    inFlight.push(entry);
  }
  await Promise.all(inFlight.map((entry) => entry.promise));
  if (failure !== null) throw failure;
  return counters;
}

/** Runs of `compareBlockBytes` blocks where the buffers differ, joined across gaps of up to `joinGapBytes`. */
export function differingRuns(left: Buffer, right: Buffer): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let at = 0; at < left.length; at += compareBlockBytes) {
    const end = Math.min(left.length, at + compareBlockBytes);
    if (left.subarray(at, end).equals(right.subarray(at, end))) continue;
    const last = runs[runs.length - 1];
    if (last !== undefined && at - last[1] <= joinGapBytes) last[1] = end;
    else runs.push([at, end]);
  }
  return runs;
}

async function throttle(rateBytesPerSecondMax: number | undefined, dispatchedBytes: number, startedMs: number): Promise<void> {
  if (rateBytesPerSecondMax === undefined || rateBytesPerSecondMax <= 0) return;
  const dueMs = startedMs + (dispatchedBytes / rateBytesPerSecondMax) * 1000;
  const waitMs = dueMs - performance.now();
  if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
}
