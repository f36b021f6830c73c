// Every bound of the NBD server in one place (docs/limits.md explains them). Relationships are
// asserted at start-up. `serverLimits` are fixed; `ConnectionLimits` are the few an operator may
// change (serve --memory-budget, --max-connections-per-address, ...), checked by
// assertConnectionLimits.

import { storageLimits, KiB, MiB } from '../storage/index.js';

export const serverLimits = {
  /** Connections served at once; more are refused at accept. */
  connectionCountMax: 512,
  /** Requests of one connection being served at once; reading pauses beyond it. */
  inFlightRequestCountMax: 512,
  /** Bytes of payloads and replies one connection holds in flight at once; reading pauses beyond it. */
  inFlightBytesMax: 64 * MiB,
  /** Reply bytes queued on one socket before we stop reading requests until it drains. */
  queuedReplyBytesMax: 64 * MiB,
  /** Option replies queued on a socket still negotiating before we stop reading its options. */
  negotiationQueuedReplyBytesMax: 64 * KiB,
  /** What one read from a socket brings at most (libuv reads 64 KiB at a time). */
  socketReadBytesMax: 64 * KiB,
  /**
   * Bytes every connection may hold whatever the shared budget says, so a client with small
   * requests (one 1 MiB request at a time) is never stopped by others' use.
   */
  connectionFloorBytes: 2 * MiB,
  /** Largest READ or WRITE payload (advertised as the maximum block size). */
  payloadBytesMax: storageLimits.writePayloadBytesMax,
  /** Reply header of a READ: a simple reply (16 B) or an OFFSET_DATA chunk header (20 + 8 B). */
  readReplyHeaderBytesMax: 32,
  /** Any other reply that is not BLOCK_STATUS: an ERROR chunk with the longest message (4096 B). */
  smallReplyBytesMax: 4 * KiB + 32,
  /** Advertised minimum and preferred block sizes. */
  blockSizeMinBytes: 1,
  blockSizePreferredBytes: 4 * KiB,
  /** Largest option data a client may send (export names and queries are small). */
  optionDataBytesMax: 64 * KiB,
  /** Options one connection may send before it must choose an export. */
  optionCountMax: 1024,
  /** Extents in one BLOCK_STATUS reply chunk. */
  blockStatusExtentCountMax: 16 * 1024,
  /** Extents of all selected contexts in one BLOCK_STATUS reply, in bytes (fewer extents each when many are selected). */
  blockStatusReplyBytesMax: 1 * MiB,
  /** Keepalive probes the kernel sends before it gives a silent peer up (TCP_KEEPCNT). */
  keepAliveProbeCount: 4,
  /** How often connections are checked for stalls and their memory recounted. */
  sweepIntervalMs: 1000,
  /** At most one log line per this long for each reason a connection is refused at accept. */
  refusalLogIntervalMs: 10_000,
  /** On shutdown: how long in-flight requests may take before connections are cut. */
  shutdownGraceMs: 10_000,
} as const;

/** The limits an operator may change; defaults in defaultConnectionLimits. */
export interface ConnectionLimits {
  /**
   * Bytes all connections may hold together beyond their floor (connectionFloorBytes each):
   * requests being received, requests in flight, replies queued. When it is used up, reading
   * stops on the connections that need more, and they go on, smallest first, as memory frees.
   */
  memoryBudgetBytes: number;
  /** TCP connections from one IP address at once (unix-socket clients are not counted per address). */
  connectionsPerAddressMax: number;
  /** Connections still negotiating at once, from all addresses. */
  negotiatingConnectionCountMax: number;
  /** Time a client has to finish negotiation (TLS handshake included). */
  negotiationTimeoutMs: number;
  /**
   * An attached client is dropped when replies wait for it and none of them has left for this
   * long, or when it sent part of a request and nothing more for this long. An idle client with
   * nothing pending is never dropped for being idle.
   */
  stallTimeoutMs: number;
  /**
   * A TCP peer that answers nothing (keepalive probes, or replies sent to it) for this long is
   * dropped by the kernel (TCP_USER_TIMEOUT, with keepalive probes from half of it).
   */
  deadPeerTimeoutMs: number;
}

export const defaultConnectionLimits: Readonly<ConnectionLimits> = {
  memoryBudgetBytes: 512 * MiB,
  connectionsPerAddressMax: 32,
  negotiatingConnectionCountMax: 64,
  negotiationTimeoutMs: 10_000,
  stallTimeoutMs: 60_000,
  deadPeerTimeoutMs: 120_000,
};

/** The settings given, the defaults for the rest; throws Error naming what is inconsistent. */
export function connectionLimitsOf(changes: Partial<ConnectionLimits> = {}): ConnectionLimits {
  const limits: ConnectionLimits = { ...defaultConnectionLimits };
  for (const [key, value] of Object.entries(changes) as Array<[keyof ConnectionLimits, number | undefined]>) {
    if (value !== undefined) limits[key] = value;
  }
  assertConnectionLimits(limits);
  return limits;
}

/**
 * The most memory NBD connections hold together: the shared budget, each connection's floor, and
 * what arrives from a socket before reading stops (two reads: one being parsed, one in the
 * socket's buffer). Every other byte is admitted against the floor or the budget before it is
 * taken. A negotiating connection holds less than its floor (asserted below), plus one answer to
 * its last option.
 */
export function connectionMemoryBoundBytes(limits: ConnectionLimits): number {
  return limits.memoryBudgetBytes + serverLimits.connectionCountMax * (serverLimits.connectionFloorBytes + 2 * serverLimits.socketReadBytesMax);
}

export function assertServerLimits(): void {
  const checks: Array<[boolean, string]> = [
    [serverLimits.payloadBytesMax <= storageLimits.writePayloadBytesMax, 'storage takes the largest payload we accept'],
    [serverLimits.payloadBytesMax <= storageLimits.readLengthBytesMax, 'storage reads the largest length we accept'],
    [serverLimits.inFlightBytesMax >= 2 * serverLimits.payloadBytesMax, 'two maximal requests fit in flight'],
    [serverLimits.queuedReplyBytesMax >= serverLimits.payloadBytesMax, 'a maximal reply fits the queue'],
    [serverLimits.blockSizePreferredBytes >= 512, 'preferred block size is at least 512'],
    [
      serverLimits.connectionFloorBytes >= MiB + serverLimits.readReplyHeaderBytesMax + 2 * serverLimits.socketReadBytesMax,
      'the floor holds a 1 MiB request with what was read around it',
    ],
    [serverLimits.connectionFloorBytes < serverLimits.inFlightBytesMax, 'the floor is below what a connection may hold'],
    [serverLimits.smallReplyBytesMax >= 4096 + 26, 'an error chunk with the longest message fits a small reply'],
    [serverLimits.blockStatusReplyBytesMax >= 8 * serverLimits.blockStatusExtentCountMax, 'one context gets its full extent count'],
    [serverLimits.negotiationQueuedReplyBytesMax >= serverLimits.smallReplyBytesMax, 'an option answer fits the negotiation queue'],
    [
      serverLimits.connectionFloorBytes >= serverLimits.optionDataBytesMax + 2 * serverLimits.socketReadBytesMax + serverLimits.negotiationQueuedReplyBytesMax,
      'a negotiating connection stays within its floor',
    ],
  ];
  for (const [holds, what] of checks) if (!holds) throw new Error(`server limits are inconsistent: ${what}`);
}

/** Throws Error naming the setting that is out of range or inconsistent with the fixed limits. */
export function assertConnectionLimits(limits: ConnectionLimits): void {
  const checks: Array<[boolean, string]> = [
    [limits.memoryBudgetBytes >= serverLimits.payloadBytesMax + serverLimits.smallReplyBytesMax, `the memory budget holds a maximal request (at least ${serverLimits.payloadBytesMax / MiB} MiB and a little)`],
    [Number.isSafeInteger(limits.memoryBudgetBytes), 'the memory budget is a whole number of bytes'],
    [isCount(limits.connectionsPerAddressMax, serverLimits.connectionCountMax), `connections per address are 1 to ${serverLimits.connectionCountMax}`],
    [isCount(limits.negotiatingConnectionCountMax, serverLimits.connectionCountMax), `connections negotiating are 1 to ${serverLimits.connectionCountMax}`],
    [limits.negotiationTimeoutMs >= 1000, 'the negotiation timeout is at least 1 s'],
    [limits.stallTimeoutMs >= 2 * serverLimits.sweepIntervalMs, `the stall timeout is at least ${(2 * serverLimits.sweepIntervalMs) / 1000} s (connections are checked every ${serverLimits.sweepIntervalMs / 1000} s)`],
    [limits.deadPeerTimeoutMs >= 2000, 'the dead-peer timeout is at least 2 s (keepalive counts whole seconds)'],
  ];
  for (const [holds, what] of checks) if (!holds) throw new Error(`connection limits: ${what}`);
}

function isCount(value: number, maximum: number): boolean {
  return Number.isSafeInteger(value) && value >= 1 && value <= maximum;
}
