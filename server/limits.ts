// Every bound of the NBD server in one place. Relationships are asserted at start-up.

import { storageLimits, KiB, MiB } from '../storage/index.js';

export const serverLimits = {
  /** Connections served at once; more are refused at accept. */
  connectionCountMax: 512,
  /** Requests of one connection being served at once; reading pauses beyond it. */
  inFlightRequestCountMax: 512,
  /** Bytes of payloads and read results one connection holds at once; reading pauses beyond it. */
  inFlightBytesMax: 64 * MiB,
  /** Reply bytes queued on one socket before we stop reading requests until it drains. */
  queuedReplyBytesMax: 64 * MiB,
  /** Largest READ or WRITE payload (advertised as the maximum block size). */
  payloadBytesMax: storageLimits.writePayloadBytesMax,
  /** Advertised minimum and preferred block sizes. */
  blockSizeMinBytes: 1,
  blockSizePreferredBytes: 4 * KiB,
  /** Largest option data a client may send (export names and queries are small). */
  optionDataBytesMax: 64 * KiB,
  /** Options one connection may send before it must choose an export. */
  optionCountMax: 1024,
  /** Extents in one BLOCK_STATUS reply chunk. */
  blockStatusExtentCountMax: 16 * 1024,
  /** Time a client has to finish negotiation. */
  negotiationTimeoutMs: 30_000,
  /** On shutdown: how long in-flight requests may take before connections are cut. */
  shutdownGraceMs: 10_000,
} as const;

export function assertServerLimits(): void {
  const checks: Array<[boolean, string]> = [
    [serverLimits.payloadBytesMax <= storageLimits.writePayloadBytesMax, 'storage takes the largest payload we accept'],
    [serverLimits.payloadBytesMax <= storageLimits.readLengthBytesMax, 'storage reads the largest length we accept'],
    [serverLimits.inFlightBytesMax >= 2 * serverLimits.payloadBytesMax, 'two maximal requests fit in flight'],
    [serverLimits.queuedReplyBytesMax >= serverLimits.payloadBytesMax, 'a maximal reply fits the queue'],
    [serverLimits.blockSizePreferredBytes >= 512, 'preferred block size is at least 512'],
  ];
  for (const [holds, what] of checks) if (!holds) throw new Error(`server limits are inconsistent: ${what}`);
}
