// What a transfer covers. A fast restore covers only the ranges written between the instant and
// now (from the delta maps), joined across small gaps into large sequential pieces; every other
// transfer covers the whole volume in equal pieces.

import type { VolumeHistory } from '../storage/index.js';
import { coalesce, split, type ByteRange } from './ranges.js';
import { requestBytesMax } from './endpoints.js';

/** Pieces of digest comparison: small enough that one differing byte re-sends little. */
export const comparePieceBytes = 1024 * 1024;
/** Gaps up to this are sent along with the changes around them (one write instead of two). */
export const coalesceGapBytesMax = 16 * 1024;
/** The changed ranges are gathered this much of the volume at a time (bounds the index query). */
const changedSliceBytes = 1024 ** 3;

/**
 * The ranges of [startBytes, endBytes) (default: the whole volume) written in (fromSequence,
 * toSequence], coalesced into pieces of at most 4 MiB.
 */
export async function changedPlan(
  history: VolumeHistory,
  fromSequence: number,
  toSequence: number,
  sizeBytes: number,
  within: { startBytes: number; endBytes: number } = { startBytes: 0, endBytes: sizeBytes },
): Promise<ByteRange[]> {
  const plan: ByteRange[] = [];
  const endBytes = Math.min(sizeBytes, within.endBytes);
  for (let sliceStart = within.startBytes; sliceStart < endBytes; sliceStart += changedSliceBytes) {
    const sliceEnd = Math.min(endBytes, sliceStart + changedSliceBytes);
    const changed = await history.changedBetween(fromSequence, toSequence, sliceStart, sliceEnd);
    const ranges = changed.map(([startBytes, endBytes]) => ({ startBytes, endBytes }));
    plan.push(...coalesce(ranges, coalesceGapBytesMax, requestBytesMax));
  }
  return plan;
}

/** The whole of [0, sizeBytes) in pieces of `pieceBytes`. */
export function wholePlan(sizeBytes: number, pieceBytes: number): ByteRange[] {
  return split({ startBytes: 0, endBytes: sizeBytes }, pieceBytes);
}
