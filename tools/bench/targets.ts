// cdp-nbd's performance targets, in one place: each test's headline figure relative to the best
// file-backed peer measured in the same run, and a memory ceiling.

import type { TestId } from './options.js';

/** cdp-nbd's median must be at least this multiple of the best peer's median. */
export const ratioTargets: Record<TestId, number> = {
  'randwrite-4k': 1.2,
  'randread-4k': 1.0,
  'seqwrite-1m': 0.8,
  'seqread-1m': 1.0,
  'write-flush-qd1': 1.0,
};

/** cdp-nbd's peak resident set (VmHWM of the node process) must stay below this. */
export const peakRssBytesTarget = 300 * 1024 * 1024;
