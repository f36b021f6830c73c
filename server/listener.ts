// The NBD server: listeners on TCP and unix sockets, the set of live connections, and an orderly
// shutdown (stop accepting, let in-flight requests finish, close). At accept, the connection caps
// (connection-caps.ts) decide who may connect and TCP sockets get keepalive (keepalive.ts); every
// connection draws on one memory budget (memory-budget.ts), and a sweep every second recounts it
// and drops stalled clients (docs/limits.md).

import fs from 'node:fs';
import net from 'node:net';
import { normaliseAddress } from './access.js';
import { Connection, type AccessRefusedNotice, type DropReason, type SecurityEvent } from './connection.js';
import { ConnectionCaps, RefusalLog, type RefusalReason } from './connection-caps.js';
import type { ExportEntry, ExportTable } from './exports.js';
import { enableKeepAlive, keepAliveSettingsOf, type KeepAliveSettings } from './keepalive.js';
import { assertServerLimits, connectionLimitsOf, connectionMemoryBoundBytes, serverLimits, type ConnectionLimits } from './limits.js';
import { silentLogger, type Logger } from './logger.js';
import { MemoryBudget } from './memory-budget.js';
import { tlsOff, type ServerTls, type TlsMode } from './tls.js';

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface NbdServerOptions {
  exports: ExportTable;
  log?: Logger;
  /** TLS mode and credentials (tls.ts loadServerTls); off by default. */
  tls?: ServerTls;
  /** Changes to the default connection limits (memory budget, caps, timeouts). */
  limits?: Partial<ConnectionLimits>;
}

/** What the server holds and has turned away, for /metrics. */
export interface ConnectionFigures {
  connectionCount: number;
  negotiatingCount: number;
  /** Connections stopped until the memory budget has room for them. */
  waitingForMemoryCount: number;
  /** Bytes all connections hold, and of those the part beyond their floors that the budget bounds. */
  heldBytes: number;
  sharedBytes: number;
  memoryBudgetBytes: number;
  /** The most connections can hold (limits.ts connectionMemoryBoundBytes). */
  memoryBoundBytes: number;
  refusedCounts: Record<RefusalReason, number>;
  droppedCounts: Record<DropReason, number>;
}

export class NbdServer {
  readonly exports: ExportTable;
  private readonly log: Logger;
  private readonly tls: ServerTls;
  private readonly listeners: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  private nextConnectionId = 1;
  /** Since start: TLS handshakes that succeeded and failed, clients an allowlist refused. */
  readonly securityCounts: Record<SecurityEvent, number> = { tlsStarted: 0, tlsFailed: 0, accessRefused: 0 };
  readonly limits: Readonly<ConnectionLimits>;
  private readonly budget: MemoryBudget;
  private readonly caps: ConnectionCaps<Connection>;
  private readonly refusalLog: RefusalLog;
  private readonly keepAlive: KeepAliveSettings;
  private keepAliveFallbackLogged = false;
  private readonly refusedCounts: Record<RefusalReason, number> = { serverFull: 0, perAddress: 0, negotiating: 0 };
  private readonly droppedCounts: Record<DropReason, number> = { negotiationTimeout: 0, evicted: 0, writeStall: 0, receiveStall: 0, deadPeer: 0 };
  private readonly sweepTimer: NodeJS.Timeout;
  private stopping = false;
  private readonly attachListeners: Array<(entry: ExportEntry, connection: Connection, attached: boolean) => void> = [];
  private readonly refusalListeners: Array<(notice: AccessRefusedNotice) => void> = [];

  constructor(options: NbdServerOptions) {
    assertServerLimits();
    this.limits = connectionLimitsOf(options.limits);
    this.exports = options.exports;
    this.log = options.log ?? silentLogger;
    this.tls = options.tls ?? tlsOff;
    this.budget = new MemoryBudget(this.limits.memoryBudgetBytes, serverLimits.connectionFloorBytes);
    this.caps = new ConnectionCaps(this.limits);
    this.refusalLog = new RefusalLog(this.log, serverLimits.refusalLogIntervalMs);
    this.keepAlive = keepAliveSettingsOf(this.limits.deadPeerTimeoutMs);
    this.sweepTimer = setInterval(() => this.sweep(), serverLimits.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  /** What the server holds and has turned away since start. */
  get figures(): ConnectionFigures {
    return {
      connectionCount: this.connections.size,
      negotiatingCount: this.caps.negotiatingCount,
      waitingForMemoryCount: this.budget.waitingCount,
      heldBytes: this.budget.heldBytes,
      sharedBytes: this.budget.sharedBytes,
      memoryBudgetBytes: this.limits.memoryBudgetBytes,
      memoryBoundBytes: connectionMemoryBoundBytes(this.limits),
      refusedCounts: { ...this.refusedCounts },
      droppedCounts: { ...this.droppedCounts },
    };
  }

  get tlsMode(): TlsMode {
    return this.tls.mode;
  }

  /** Start listening; resolves with the address actually bound (port 0 picks a free port). */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.maxConnections = serverLimits.connectionCountMax;
    // Node closes connections over maxConnections itself; they are counted and logged here.
    server.on('drop', (peer) => this.refuse('serverFull', peer?.remoteAddress === undefined ? 'unix socket' : `${peer.remoteAddress}:${peer.remotePort}`));
    if (address.kind === 'unix') removeStaleSocket(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const onListening = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (address.kind === 'unix') server.listen(address.path, onListening);
      else server.listen(address.port, address.host, onListening);
    });
    server.on('error', (error) => this.log.error({ error: error.message }, 'listener error'));
    this.listeners.push(server);
    const bound = server.address();
    if (address.kind === 'unix' || bound === null || typeof bound === 'string') return address;
    return { kind: 'tcp', host: bound.address, port: bound.port };
  }

  /** Be told when clients attach to or leave an export. */
  onAttachChange(listener: (entry: ExportEntry, connection: Connection, attached: boolean) => void): void {
    this.attachListeners.push(listener);
  }

  /** Be told when an export's allowlist turns a client away. */
  onAccessRefused(listener: (notice: AccessRefusedNotice) => void): void {
    this.refusalListeners.push(listener);
  }

  connectionsOf(exportName: string): Connection[] {
    return [...this.connections].filter((connection) => connection.exportName === exportName);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stop accepting, let in-flight requests finish (within a grace period), close every connection. */
  async close(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.sweepTimer);
    const listenersClosed = this.listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    const connections = [...this.connections];
    const grace = setTimeout(() => {
      for (const connection of connections) connection.destroy();
    }, serverLimits.shutdownGraceMs);
    await Promise.all(connections.map((connection) => connection.shutdown()));
    clearTimeout(grace);
    await Promise.all(listenersClosed);
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const verdict = this.caps.judge(normaliseAddress(socket.remoteAddress));
    if (verdict.kind === 'refuse') {
      socket.destroy();
      this.refuse(verdict.reason, socket.remoteAddress === undefined ? 'unix socket' : `${socket.remoteAddress}:${socket.remotePort}`);
      return;
    }
    if (verdict.kind === 'acceptEvicting') {
      this.caps.evicted(verdict.evicted);
      verdict.evicted.evict();
    }
    if (socket.remoteAddress !== undefined) this.enableKeepAlive(socket);
    const connection = new Connection(this.nextConnectionId++, socket, this.exports, this.log, {
      attached: (entry, attachedConnection) => {
        this.caps.attached(attachedConnection);
        for (const listener of this.attachListeners) listener(entry, attachedConnection, true);
      },
      closed: (closedConnection) => {
        this.caps.closed(closedConnection);
        this.connections.delete(closedConnection);
        const name = closedConnection.exportName;
        const entry = name === null ? undefined : this.exports.lookup(name);
        if (entry !== undefined) for (const listener of this.attachListeners) listener(entry, closedConnection, false);
      },
      security: (event) => {
        this.securityCounts[event]++;
      },
      refused: (notice) => {
        for (const listener of this.refusalListeners) listener(notice);
      },
      dropped: (reason) => {
        this.droppedCounts[reason]++;
      },
    }, { tls: this.tls, budget: this.budget, limits: this.limits });
    this.connections.add(connection);
    this.caps.opened(connection);
    connection.start();
  }

  private refuse(reason: RefusalReason, remote: string): void {
    this.refusedCounts[reason]++;
    this.refusalLog.refused(reason, remote);
  }

  private enableKeepAlive(socket: net.Socket): void {
    if (enableKeepAlive(socket, this.keepAlive) || this.keepAliveFallbackLogged) return;
    this.keepAliveFallbackLogged = true;
    this.log.warn({ ...this.keepAlive }, "TCP keepalive's interval, count and user timeout could not be set: the system's defaults decide when a vanished client is dropped");
  }

  /** Recount memory (replies drain without an event) and drop stalled clients. */
  private sweep(): void {
    const nowMs = Date.now();
    for (const connection of [...this.connections]) connection.sweep(nowMs);
    this.budget.recount();
  }
}

/** A socket file left by a process that is gone would make listen fail with EADDRINUSE. */
function removeStaleSocket(path: string): void {
  try {
    if (fs.statSync(path).isSocket()) fs.rmSync(path);
  } catch {
    // Nothing there.
  }
}

/** Parse "HOST:PORT", "[v6]:PORT", "unix:/path" or "none". */
export function parseListenAddress(text: string): ListenAddress | null {
  if (text === 'none') return null;
  if (text.startsWith('unix:')) return { kind: 'unix', path: text.slice(5) };
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (match === null) throw new Error(`listen address "${text}" is not HOST:PORT, [IPv6]:PORT, unix:PATH or none`);
  const port = Number(match[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range`);
  return { kind: 'tcp', host: match[1] ?? match[2]!, port };
}
