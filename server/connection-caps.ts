// Who may open a connection (docs/limits.md "Connections"): at most so many TCP connections from
// one address, and at most so many still negotiating, so peers that never finish the handshake
// cannot hold every slot. A newcomer over a cap is closed at once. When every negotiating slot is
// taken, a newcomer from an address holding fewer of them than the address holding most takes
// the oldest slot of that address instead: one address flooding the handshake cannot keep
// others out.

import type { Logger } from './logger.js';

export type RefusalReason = 'serverFull' | 'perAddress' | 'negotiating';

/** What the caps need of a connection. */
export interface CappedConnection {
  /** Its peer's IP address; null for a unix-socket client. */
  readonly address: string | null;
}

export type AcceptVerdict<C> = { kind: 'accept' } | { kind: 'acceptEvicting'; evicted: C } | { kind: 'refuse'; reason: RefusalReason };

const unixSocketKey = 'unix socket';

export class ConnectionCaps<C extends CappedConnection> {
  private readonly perAddressMax: number;
  private readonly negotiatingMax: number;
  private readonly connectionsByAddress = new Map<string, number>();
  /** Connections still negotiating, oldest first (a Set keeps insertion order). */
  private readonly negotiatingSet = new Set<C>();

  constructor(limits: { connectionsPerAddressMax: number; negotiatingConnectionCountMax: number }) {
    this.perAddressMax = limits.connectionsPerAddressMax;
    this.negotiatingMax = limits.negotiatingConnectionCountMax;
  }

  get negotiatingCount(): number {
    return this.negotiatingSet.size;
  }

  /** Whether a client from `address` (null: unix socket) may connect now; evicts nothing itself. */
  judge(address: string | null): AcceptVerdict<C> {
    if (address !== null && (this.connectionsByAddress.get(address) ?? 0) >= this.perAddressMax) return { kind: 'refuse', reason: 'perAddress' };
    if (this.negotiatingSet.size < this.negotiatingMax) return { kind: 'accept' };
    const heaviest = this.heaviestNegotiatingAddress();
    const own = this.negotiatingCountOf(keyOf(address));
    if (heaviest === null || own + 1 >= heaviest.count) return { kind: 'refuse', reason: 'negotiating' };
    const evicted = [...this.negotiatingSet].find((connection) => keyOf(connection.address) === heaviest.key)!;
    return { kind: 'acceptEvicting', evicted };
  }

  /** A connection was accepted: it negotiates until attached() or closed(). */
  opened(connection: C): void {
    if (connection.address !== null) this.connectionsByAddress.set(connection.address, (this.connectionsByAddress.get(connection.address) ?? 0) + 1);
    this.negotiatingSet.add(connection);
  }

  attached(connection: C): void {
    this.negotiatingSet.delete(connection);
  }

  /** The connection gave its negotiating slot to a newcomer: the slot is free now, not when it closes. */
  evicted(connection: C): void {
    this.negotiatingSet.delete(connection);
  }

  closed(connection: C): void {
    this.negotiatingSet.delete(connection);
    const address = connection.address;
    if (address === null) return;
    const count = (this.connectionsByAddress.get(address) ?? 0) - 1;
    if (count > 0) this.connectionsByAddress.set(address, count);
    else this.connectionsByAddress.delete(address);
  }

  private negotiatingCountOf(key: string): number {
    let count = 0;
    for (const connection of this.negotiatingSet) if (keyOf(connection.address) === key) count++;
    return count;
  }

  private heaviestNegotiatingAddress(): { key: string; count: number } | null {
    const counts = new Map<string, number>();
    for (const connection of this.negotiatingSet) {
      const key = keyOf(connection.address);
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    let heaviest: { key: string; count: number } | null = null;
    for (const [key, count] of counts) if (heaviest === null || count > heaviest.count) heaviest = { key, count };
    return heaviest;
  }
}

function keyOf(address: string | null): string {
  return address ?? unixSocketKey;
}

/**
 * Refusals at accept come in floods, so each reason is logged at most once per interval, with how
 * many were refused since its last line (the metrics count every one).
 */
export class RefusalLog {
  private readonly log: Logger;
  private readonly intervalMs: number;
  private readonly lastLineMs = new Map<RefusalReason, number>();
  private readonly unloggedCounts = new Map<RefusalReason, number>();

  constructor(log: Logger, intervalMs: number) {
    this.log = log;
    this.intervalMs = intervalMs;
  }

  refused(reason: RefusalReason, remote: string, nowMs = Date.now()): void {
    const unlogged = (this.unloggedCounts.get(reason) ?? 0) + 1;
    const last = this.lastLineMs.get(reason);
    if (last !== undefined && nowMs - last < this.intervalMs) {
      this.unloggedCounts.set(reason, unlogged);
      return;
    }
    this.lastLineMs.set(reason, nowMs);
    this.unloggedCounts.set(reason, 0);
    this.log.info({ reason, remote, refusedSinceLastLine: unlogged }, refusalMessages[reason]);
  }
}

const refusalMessages: Record<RefusalReason, string> = {
  serverFull: 'refused a connection: the server has as many as it serves',
  perAddress: 'refused a connection: its address has as many as it may',
  negotiating: 'refused a connection: as many are negotiating as may',
};
