// One client connection: bytes in through the parser, options to negotiation.ts, requests to
// transmission.ts, replies out in batches (one writev per event-loop turn). Reading pauses
// while too much is in flight or queued for the client, so memory per connection is bounded.
// After the ACK to STARTTLS the same connection continues on a TLS socket over the same TCP
// stream (tls.ts); the parser is re-attached to it with no plaintext left over.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { CommandType, ServerParser, serializeGreeting, type ClientMessage, type RequestMessage } from 'nbd-protocol-ts';
import { normaliseAddress } from './access.js';
import type { ExportEntry, ExportTable } from './exports.js';
import { serverLimits } from './limits.js';
import type { Logger } from './logger.js';
import { Negotiation, offeredHandshakeFlags, type OptionOutcome, type Refusal } from './negotiation.js';
import { startTlsSession, type ServerTls, type TlsPeer } from './tls.js';
import { Transmission, type ReplySink } from './transmission.js';

export interface ConnectionHooks {
  /** A client entered transmission with an export. */
  attached(entry: ExportEntry, connection: Connection): void;
  /** The connection is gone. */
  closed(connection: Connection): void;
  /** For the security counters: a TLS handshake ended, or an allowlist turned the client away. */
  security(event: SecurityEvent): void;
  /** An allowlist turned this client away from an export (already logged). */
  refused(notice: AccessRefusedNotice): void;
}

export type SecurityEvent = 'tlsStarted' | 'tlsFailed' | 'accessRefused';

export interface AccessRefusedNotice {
  export: string;
  connection: number;
  remote: string;
  certificate: string | null;
  reason: string;
}

export class Connection implements ReplySink {
  readonly id: number;
  readonly remote: string;
  /** The TCP or unix socket accepted; after STARTTLS, `socket` is the TLS socket over it. */
  private readonly rawSocket: Socket;
  private socket: Socket;
  private readonly tls: ServerTls;
  /** True from the ACK to STARTTLS until the handshake is done: nothing is read meanwhile. */
  private upgrading = false;
  /** CN of the verified client certificate, once TLS runs. */
  private certificateName: string | null = null;
  private closed = false;
  private readonly log: Logger;
  private readonly hooks: ConnectionHooks;
  private readonly parser = new ServerParser({
    maxOptionDataBytes: serverLimits.optionDataBytesMax,
    maxWritePayloadBytes: serverLimits.payloadBytesMax,
  });
  private readonly negotiation: Negotiation;
  private transmission: Transmission | null = null;
  private entry: ExportEntry | null = null;
  private inFlightCount = 0;
  private inFlightBytes = 0;
  private paused = false;
  private disconnecting = false;
  private corked = false;
  private negotiationTimer: NodeJS.Timeout | null;
  private idleWaiters: Array<() => void> = [];
  private requestCount = 0;
  readonly closedPromise: Promise<void>;
  private resolveClosed: () => void = () => undefined;

  constructor(id: number, socket: Socket, exports: ExportTable, log: Logger, hooks: ConnectionHooks, tls: ServerTls) {
    this.id = id;
    this.rawSocket = socket;
    this.socket = socket;
    this.tls = tls;
    this.log = log;
    this.hooks = hooks;
    this.remote = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    this.negotiation = new Negotiation(exports, tls.mode, { address: normaliseAddress(socket.remoteAddress), certificateName: null });
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.negotiationTimer = setTimeout(() => this.drop('negotiation took too long'), serverLimits.negotiationTimeoutMs);
    this.negotiationTimer.unref();
  }

  get exportName(): string | null {
    return this.entry?.name ?? null;
  }

  /** Whether the client runs TLS, and the name of its verified certificate. */
  get security(): { tls: boolean; certificate: string | null } {
    return { tls: this.socket !== this.rawSocket, certificate: this.certificateName };
  }

  start(): void {
    const socket = this.socket;
    if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    this.attach(socket);
    this.log.info({ connection: this.id, remote: this.remote }, 'client connected');
    this.send([serializeGreeting(offeredHandshakeFlags)]);
  }

  /** Read requests from this socket (the accepted one, or the TLS socket after STARTTLS). */
  private attach(socket: Socket): void {
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('end', this.onEnd);
  }

  private detach(socket: Socket): void {
    socket.off('data', this.onData);
    socket.off('drain', this.onDrain);
    socket.off('end', this.onEnd);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.parser.push(chunk);
    this.processMessages();
  };

  private readonly onDrain = (): void => this.resumeIfRoom();

  private readonly onError = (error: Error): void => {
    this.log.debug({ connection: this.id, error: error.message }, 'connection error');
  };

  private readonly onEnd = (): void => {
    // The client half-closed: nothing more will arrive; finish what is in flight, then close.
    void this.whenIdle().then(() => this.socket.end());
  };

  /** Queue reply bytes; they leave in one writev at the end of this turn of the event loop. */
  send(buffers: readonly Buffer[]): void {
    if (this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    for (const buffer of buffers) this.socket.write(buffer);
  }

  /** Stop taking requests, finish those in flight, then close. */
  async shutdown(): Promise<void> {
    this.negotiation.shuttingDown = true;
    if (this.transmission === null) {
      this.hangUp();
    } else {
      this.transmission.shuttingDown = true;
      await this.whenIdle();
      this.socket.end();
    }
    await this.closedPromise;
  }

  /** Cut the connection now (shutdown grace expired, or the export is being removed). */
  destroy(): void {
    this.hangUp();
  }

  /** Close at once; mid-handshake the TLS engine owns the stream, so do not wait for its close. */
  private hangUp(): void {
    this.socket.destroy();
    if (this.socket !== this.rawSocket) this.rawSocket.destroy();
    if (this.upgrading) this.onClose();
  }

  private processMessages(): void {
    while (!this.paused && !this.disconnecting && !this.upgrading) {
      if (this.mustPause()) {
        this.paused = true;
        this.socket.pause();
        return;
      }
      const message = this.parser.next();
      if (message === undefined) return;
      this.handleMessage(message);
    }
  }

  private mustPause(): boolean {
    return (
      this.inFlightCount >= serverLimits.inFlightRequestCountMax ||
      this.inFlightBytes >= serverLimits.inFlightBytesMax ||
      this.socket.writableLength >= serverLimits.queuedReplyBytesMax
    );
  }

  private resumeIfRoom(): void {
    if (!this.paused || this.mustPause()) return;
    this.paused = false;
    this.socket.resume();
    this.processMessages();
  }

  private handleMessage(message: ClientMessage): void {
    switch (message.kind) {
      case 'clientFlags': {
        const problem = this.negotiation.acceptClientFlags(message.flags);
        if (problem !== null) this.drop(problem);
        return;
      }
      case 'option':
        return this.afterOption(this.negotiation.handleOption(message.option, message.data));
      case 'optionTooBig':
        return this.afterOption(this.negotiation.tooBig(message.option, message.lengthBytes));
      case 'request':
        return this.handleRequest(message);
      case 'writeTooBig':
        this.transmission?.refuseOversizedWrite(message.cookie, message.lengthBytes);
        return;
      case 'fatal':
        return this.drop(`protocol error: ${message.error.message}`);
    }
  }

  private afterOption(outcome: OptionOutcome): void {
    if (outcome.kind === 'startTls') return this.startTls(outcome.replies);
    if ((outcome.kind === 'reply' || outcome.kind === 'close') && outcome.refusal !== undefined) this.logRefusal(outcome.refusal);
    this.send(outcome.replies);
    if (outcome.kind === 'close') {
      this.log.info({ connection: this.id, reason: outcome.reason }, 'closing during negotiation');
      this.disconnecting = true;
      this.socket.end();
      return;
    }
    if (outcome.kind !== 'transmission') return;
    const { negotiated } = outcome;
    this.parser.enterTransmission();
    this.transmission = new Transmission(negotiated, this);
    this.entry = negotiated.entry;
    if (this.negotiationTimer !== null) clearTimeout(this.negotiationTimer);
    this.negotiationTimer = null;
    negotiated.entry.connectionCount++;
    this.hooks.attached(negotiated.entry, this);
    this.log.info(
      { connection: this.id, export: negotiated.entry.name, structuredReplies: negotiated.structuredReplies, contexts: negotiated.contexts.map((context) => context.name) },
      'client attached',
    );
  }

  private logRefusal(refusal: Refusal): void {
    const fields = { connection: this.id, remote: this.remote, export: refusal.export, certificate: this.certificateName, reason: refusal.reason };
    if (refusal.kind === 'access') {
      this.log.warn(fields, 'access refused');
      this.hooks.security('accessRefused');
      this.hooks.refused({ export: refusal.export, connection: this.id, remote: this.remote, certificate: this.certificateName, reason: refusal.reason });
    } else {
      this.log.info(fields, 'export needs TLS');
    }
  }

  /**
   * The ACK to STARTTLS goes out in plaintext; once it is flushed, the TLS handshake runs on the
   * same stream and the parser reads from the TLS socket. Plaintext the client pipelined after
   * STARTTLS would be read as if it came over TLS, so such a client is dropped.
   */
  private startTls(replies: Buffer[]): void {
    const pipelinedBytes = this.parser.startTls();
    if (pipelinedBytes > 0) return this.drop(`${pipelinedBytes} bytes of plaintext after STARTTLS`);
    this.upgrading = true;
    const raw = this.rawSocket;
    this.detach(raw);
    raw.pause();
    for (const reply of replies.slice(0, -1)) raw.write(reply);
    raw.write(replies[replies.length - 1]!, (error) => {
      if (error !== undefined && error !== null) return this.drop(`writing the STARTTLS reply failed: ${error.message}`);
      if (raw.destroyed) return;
      startTlsSession(raw, this.tls, {
        secure: (secureSocket, peer) => this.tlsStarted(secureSocket, peer),
        failed: (reason) => {
          this.log.warn({ connection: this.id, remote: this.remote, reason }, 'TLS handshake failed');
          this.hooks.security('tlsFailed');
          this.disconnecting = true;
          this.hangUp();
        },
      });
    });
  }

  private tlsStarted(secureSocket: TLSSocket, peer: TlsPeer): void {
    if (this.closed) {
      secureSocket.destroy();
      return;
    }
    this.socket = secureSocket;
    secureSocket.on('error', this.onError);
    secureSocket.on('close', this.onClose);
    this.attach(secureSocket);
    this.certificateName = peer.certificateName;
    this.negotiation.tlsStarted(peer.certificateName);
    this.hooks.security('tlsStarted');
    this.log.info({ connection: this.id, remote: this.remote, protocol: peer.protocol, cipher: peer.cipher, certificate: peer.certificateName, certificateProblem: peer.certificateProblem ?? undefined }, 'TLS started');
    this.upgrading = false;
    this.processMessages();
  }

  private handleRequest(request: RequestMessage): void {
    const transmission = this.transmission!;
    if (request.type === CommandType.DISC) {
      // Finish everything in flight, then close; nothing after DISC is read (proto.md NBD_CMD_DISC).
      this.disconnecting = true;
      void this.whenIdle().then(() => this.socket.end());
      return;
    }
    const bytes = request.type === CommandType.READ || request.type === CommandType.WRITE ? request.lengthBytes : 0;
    this.inFlightCount++;
    this.inFlightBytes += bytes;
    this.requestCount++;
    void transmission.serve(request).then(() => {
      this.inFlightCount--;
      this.inFlightBytes -= bytes;
      if (this.inFlightCount === 0) this.wakeIdleWaiters();
      this.resumeIfRoom();
    });
  }

  private whenIdle(): Promise<void> {
    if (this.inFlightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdleWaiters(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  private drop(reason: string): void {
    this.log.warn({ connection: this.id, remote: this.remote, reason }, 'dropping connection');
    this.disconnecting = true;
    this.hangUp();
  }

  /** Called for the accepted socket and, after STARTTLS, for the TLS socket: runs once. */
  private readonly onClose = (): void => {
    if (this.closed) return;
    this.closed = true;
    if (this.socket !== this.rawSocket) this.rawSocket.destroy();
    if (this.negotiationTimer !== null) clearTimeout(this.negotiationTimer);
    if (this.entry !== null) this.entry.connectionCount--;
    this.log.info({ connection: this.id, export: this.entry?.name, requests: this.requestCount }, 'client disconnected');
    this.hooks.closed(this);
    this.resolveClosed();
  };
}
