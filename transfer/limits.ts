// Every bound of the transfer layer's NBD client in one place, with their relationships asserted
// once, when the client is loaded (assertNbdClientLimits). The other side of an NBD connection
// may be a broken or hostile host (a restore target, a seed source): these bounds are what it
// can cost us, in time and memory, before its job fails.

const MiB = 1024 * 1024;

export const nbdClientLimits = {
  /** Reaching the server and finishing negotiation (TCP connect, greeting, options, GO). */
  connectTimeoutMsDefault: 30_000,
  /**
   * While requests are in flight, the longest wait for the next one to be answered in full; past
   * it the connection fails, with every request on it. A bound on progress, not a deadline per
   * request, so a slow link with many requests queued is not taken for a dead server.
   */
  requestTimeoutMsDefault: 60_000,
  /** What people may set either timeout to (serve --nbd-connect-timeout, --nbd-request-timeout). */
  timeoutMsMin: 1_000,
  timeoutMsMax: 3_600_000,
  /** After NBD_CMD_DISC, how long the server has to close before we cut the connection. */
  disconnectTimeoutMs: 5_000,
  /**
   * Largest structured reply chunk accepted: one READ of the NBD default maximum payload (32 MiB)
   * in one OFFSET_DATA chunk. The codec holds OFFSET_DATA to its READ's length before this.
   */
  chunkPayloadBytesMax: 32 * MiB + 8,
  /** Option replies received and not yet read during negotiation; more than this is a flood. */
  queuedOptionReplyCountMax: 64,
} as const;

/** The timeouts of one connection, as NbdClient.connect takes them. */
export interface NbdTimeouts {
  connectTimeoutMs: number;
  requestTimeoutMs: number;
}

export const defaultNbdTimeouts: NbdTimeouts = {
  connectTimeoutMs: nbdClientLimits.connectTimeoutMsDefault,
  requestTimeoutMs: nbdClientLimits.requestTimeoutMsDefault,
};

/** Why a timeout people gave cannot be used, or null. */
export function nbdTimeoutProblem(timeoutMs: number): string | null {
  if (!Number.isSafeInteger(timeoutMs)) return `${timeoutMs} ms is not a whole number of milliseconds`;
  if (timeoutMs < nbdClientLimits.timeoutMsMin || timeoutMs > nbdClientLimits.timeoutMsMax) {
    return `${timeoutMs / 1000} s is outside ${nbdClientLimits.timeoutMsMin / 1000} s to ${nbdClientLimits.timeoutMsMax / 1000} s`;
  }
  return null;
}

export function assertNbdClientLimits(): void {
  const limits = nbdClientLimits;
  const checks: Array<[boolean, string]> = [
    [nbdTimeoutProblem(limits.connectTimeoutMsDefault) === null, 'the default connect timeout is one people could set'],
    [nbdTimeoutProblem(limits.requestTimeoutMsDefault) === null, 'the default request timeout is one people could set'],
    [limits.disconnectTimeoutMs <= limits.requestTimeoutMsDefault, 'closing takes no longer than a request'],
    [limits.chunkPayloadBytesMax >= 32 * MiB + 8, 'a READ of the default maximum payload fits one chunk'],
  ];
  for (const [holds, what] of checks) if (!holds) throw new Error(`NBD client limits are inconsistent: ${what}`);
}
