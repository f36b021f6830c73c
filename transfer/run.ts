// One resumable transfer: a plan copied (or compared) from a source to a target, with periodic
// checkpoints and a final verification of what was written.
//
// Checkpoints are taken every `checkpointIntervalMs` (10 s): the watermark at that moment, then a FLUSH
// of the target, then the caller saves both (the job journal). A resumed run starts at the saved
// watermark, so nothing before it is sent again and nothing after it is skipped. The final
// verification reads back every range written (in this run and in the runs before it, as the
// journal recorded them) from both sides and compares them.

import { copyRanges, type CopyCounters, type CopyMode } from './copy.js';
import { requestBytesMax, type Endpoint } from './endpoints.js';
import { BoundedRangeSet, split, type ByteRange } from './ranges.js';

export interface TransferCheckpoint {
  doneThroughBytes: number;
  /** Ranges written so far (bounded; a superset once widened). */
  written: ByteRange[];
}

export interface TransferProgress {
  phase: 'transfer' | 'verification';
  doneBytes: number;
  totalBytes: number;
  doneThroughBytes: number;
}

export interface TransferOptions {
  source: Endpoint;
  target: Endpoint;
  /** Increasing, non-overlapping pieces of at most requestBytesMax. */
  plan: readonly ByteRange[];
  mode: CopyMode;
  resumeFrom?: TransferCheckpoint;
  verify: boolean;
  rateBytesPerSecondMax?: number;
  signal?: AbortSignal;
  onProgress?: (progress: TransferProgress) => void;
  onCheckpoint?: (checkpoint: TransferCheckpoint) => Promise<void>;
  checkpointIntervalMs?: number;
}

export interface TransferResult {
  counters: CopyCounters;
  plannedBytes: number;
  /** Planned bytes before the resume point (done by earlier runs). */
  resumedBytes: number;
  writtenRanges: number;
  differing: ByteRange[];
  /** null when not asked for; otherwise the bytes compared and the ranges still different. */
  verification: { checkedBytes: number; mismatches: ByteRange[] } | null;
}

const writtenRangesMax = 4096;
/**
 * A checkpoint FLUSHes the target, which writes its dirty pages out while the transfer goes on:
 * every 2 s, a digest restore writing scattered 4 KiB blocks ran 6-11 s where it runs 4.3 s
 * without; every 10 s an interrupted restore repeats at most 10 s of work.
 */
const checkpointIntervalMsDefault = 10_000;
const differingRangesMax = 1000;

export async function runTransfer(options: TransferOptions): Promise<TransferResult> {
  const resumeFromBytes = options.resumeFrom?.doneThroughBytes ?? 0;
  const written = BoundedRangeSet.from(options.resumeFrom?.written ?? [], writtenRangesMax);
  const differing = new BoundedRangeSet(differingRangesMax);
  const plannedBytes = sumBytes(options.plan);
  const remaining = remainingPieces(options.plan, resumeFromBytes);
  const resumedBytes = plannedBytes - sumBytes(remaining);

  let doneThroughBytes = resumeFromBytes;
  let processedBytes = 0;
  const checkpoint = async (): Promise<void> => {
    const taken: TransferCheckpoint = { doneThroughBytes, written: written.list().map((range) => ({ ...range })) };
    await options.target.flush();
    await options.onCheckpoint?.(taken);
  };
  // A periodic checkpoint runs beside the copy. If it fails (the target's FLUSH fails, or a silent
  // target times out), the copy stops and the transfer fails with that error; the promise never
  // rejects unobserved, which would end the process.
  let checkpointing: Promise<void> | null = null;
  let checkpointFailure: unknown = null;
  const checkpointFailed = new AbortController();
  const timer = setInterval(() => {
    if (checkpointing !== null) return;
    checkpointing = checkpoint()
      .catch((error: unknown) => {
        checkpointFailure ??= error;
        checkpointFailed.abort(error);
      })
      .finally(() => (checkpointing = null));
  }, options.checkpointIntervalMs ?? checkpointIntervalMsDefault);
  const copySignal = options.signal === undefined ? checkpointFailed.signal : AbortSignal.any([options.signal, checkpointFailed.signal]);

  let counters: CopyCounters;
  try {
    counters = await copyRanges({
      source: options.source,
      target: options.target,
      pieces: remaining,
      mode: options.mode,
      written,
      differing,
      ...(options.rateBytesPerSecondMax === undefined ? {} : { rateBytesPerSecondMax: options.rateBytesPerSecondMax }),
      signal: copySignal,
      onProgress: (progress) => {
        doneThroughBytes = Math.max(doneThroughBytes, progress.doneThroughBytes);
        processedBytes = progress.processedBytes;
        options.onProgress?.({ phase: 'transfer', doneBytes: resumedBytes + processedBytes, totalBytes: plannedBytes, doneThroughBytes });
      },
    });
  } catch (error) {
    throw checkpointFailure ?? error;
  } finally {
    clearInterval(timer);
    await (checkpointing as Promise<void> | null);
  }
  if (checkpointFailure !== null) throw checkpointFailure;
  doneThroughBytes = options.plan.length === 0 ? 0 : options.plan[options.plan.length - 1]!.endBytes;
  await checkpoint();

  let verification: TransferResult['verification'] = null;
  if (options.verify && options.mode !== 'check') {
    const pieces = written.list().flatMap((range) => split(range, requestBytesMax));
    const checkedBytes = sumBytes(pieces);
    const mismatches = new BoundedRangeSet(differingRangesMax);
    await copyRanges({
      source: options.source,
      target: options.target,
      pieces,
      mode: 'check',
      differing: mismatches,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      onProgress: (progress) => options.onProgress?.({ phase: 'verification', doneBytes: progress.processedBytes, totalBytes: checkedBytes, doneThroughBytes: progress.doneThroughBytes }),
    });
    verification = { checkedBytes, mismatches: [...mismatches.list()] };
  }
  return { counters, plannedBytes, resumedBytes, writtenRanges: written.list().length, differing: [...differing.list()], verification };
}

/** The plan's pieces at or after `fromBytes` (a piece straddling it is cut). */
function remainingPieces(plan: readonly ByteRange[], fromBytes: number): ByteRange[] {
  const pieces: ByteRange[] = [];
  for (const piece of plan) {
    if (piece.endBytes <= fromBytes) continue;
    pieces.push({ startBytes: Math.max(piece.startBytes, fromBytes), endBytes: piece.endBytes });
  }
  return pieces;
}

function sumBytes(ranges: readonly ByteRange[]): number {
  let total = 0;
  for (const range of ranges) total += range.endBytes - range.startBytes;
  return total;
}
