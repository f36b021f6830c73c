// The NBD server: listeners on TCP and unix sockets, the set of live connections, and an orderly
// shutdown (stop accepting, let in-flight requests finish, close).

import fs from 'node:fs';
import net from 'node:net';
import { Connection, type AccessRefusedNotice, type SecurityEvent } from './connection.js';
import type { ExportEntry, ExportTable } from './exports.js';
import { assertServerLimits, serverLimits } from './limits.js';
import { silentLogger, type Logger } from './logger.js';
import { tlsOff, type ServerTls, type TlsMode } from './tls.js';

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface NbdServerOptions {
  exports: ExportTable;
  log?: Logger;
  /** TLS mode and credentials (tls.ts loadServerTls); off by default. */
  tls?: ServerTls;
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
  private stopping = false;
  private readonly attachListeners: Array<(entry: ExportEntry, connection: Connection, attached: boolean) => void> = [];
  private readonly refusalListeners: Array<(notice: AccessRefusedNotice) => void> = [];

  constructor(options: NbdServerOptions) {
    assertServerLimits();
    this.exports = options.exports;
    this.log = options.log ?? silentLogger;
    this.tls = options.tls ?? tlsOff;
  }

  get tlsMode(): TlsMode {
    return this.tls.mode;
  }

  /** Start listening; resolves with the address actually bound (port 0 picks a free port). */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.maxConnections = serverLimits.connectionCountMax;
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
    const connection = new Connection(this.nextConnectionId++, socket, this.exports, this.log, {
      attached: (entry, attachedConnection) => {
        for (const listener of this.attachListeners) listener(entry, attachedConnection, true);
      },
      closed: (closedConnection) => {
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
    }, this.tls);
    this.connections.add(connection);
    connection.start();
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
