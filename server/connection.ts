// One client connection: bytes in through the parser, options to negotiation.ts, requests to
// transmission.ts, replies out in batches (one writev per event-loop turn). Reading pauses
// while too much is in flight or queued for the client, and while the memory budget shared by
// all connections (memory-budget.ts) cannot give what the next request needs: a request is
// admitted before it is served, a WRITE's payload before it is read. A client that stops reading
// its replies, or stops in the middle of a request, is dropped after the stall timeout
// (docs/limits.md). After the ACK to STARTTLS the same connection continues on a TLS socket over
// the same TCP stream (tls.ts); the parser is re-attached to it with no plaintext left over.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { CommandType, ServerParser, serializeGreeting, type ClientMessage, type RequestMessage } from 'nbd-protocol-ts';
import { normaliseAddress } from './access.js';
import type { ExportEntry, ExportTable } from './exports.js';
import { serverLimits, type ConnectionLimits } from './limits.js';
import type { Logger } from './logger.js';
import type { BudgetHolder, MemoryBudget } from './memory-budget.js';
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
  /** For the counters: the connection is being dropped for this reason (already logged). */
  dropped(reason: DropReason): void;
}

export type SecurityEvent = 'tlsStarted' | 'tlsFailed' | 'accessRefused';

/**
 * Why the server ended a connection it had accepted: the handshake took too long, a newcomer
 * took its negotiating slot, replies waited unread or a request stayed half sent for the stall
 * timeout, or the kernel found the peer gone (keepalive, or replies unacknowledged).
 */
export type DropReason = 'negotiationTimeout' | 'evicted' | 'writeStall' | 'receiveStall' | 'deadPeer';

/** What every connection shares: TLS, the memory budget, the limits in force. */
export interface ConnectionContext {
  tls: ServerTls;
  budget: MemoryBudget;
  limits: ConnectionLimits;
}

/**
 * Bytes of the writes handed to libuv that the kernel has not taken yet. Unlike writableLength,
 * it goes down as the kernel takes them, not only when a whole write (up to a batch of replies)
 * is done, so a slow reader is seen to make progress. Null when the handle does not say.
 */
function kernelQueueBytesOf(socket: Socket): number | null {
  const size = (socket as unknown as { _handle?: { writeQueueSize?: unknown } | null })._handle?.writeQueueSize;
  return typeof size === 'number' ? size : null;
}

/** Socket errors that mean the peer stopped answering: keepalive or TCP_USER_TIMEOUT gave up on it. */
const deadPeerErrorCodes = new Set(['ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export interface AccessRefusedNotice {
  export: string;
  connection: number;
  remote: string;
  certificate: string | null;
  reason: string;
}

export class Connection implements ReplySink, BudgetHolder {
  readonly id: number;
  readonly remote: string;
  /** The peer's IP address (IPv4-mapped IPv6 as IPv4); null for a unix-socket client. */
  readonly address: string | null;
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
  private readonly budget: MemoryBudget;
  private readonly limits: ConnectionLimits;
  private readonly parser = new ServerParser({
    maxOptionDataBytes: serverLimits.optionDataBytesMax,
    maxWritePayloadBytes: serverLimits.payloadBytesMax,
  });
  private readonly negotiation: Negotiation;
  private transmission: Transmission | null = null;
  private entry: ExportEntry | null = null;
  private inFlightCount = 0;
  /** Payloads and reply bounds of the requests in flight. */
  private inFlightBytes = 0;
  /** Room reserved for the WRITE whose payload is arriving (payload and reply), 0 when none. */
  private reservedBytes = 0;
  /** A request parsed but waiting for memory; nothing more is read until it is served. */
  private heldRequest: RequestMessage | null = null;
  /** For the stall checks: bytes received, and when they or the replies last moved. */
  private receivedBytes = 0;
  private receivedBytesSeen = 0;
  private receiveProgressMs = Date.now();
  private finishedReplyBytesSeen = 0;
  private kernelQueueBytesSeen = Number.POSITIVE_INFINITY;
  private writeProgressMs = Date.now();
  private paused = false;
  private disconnecting = false;
  /** Set once the server decided to end the connection (drop): later reasons are not counted again. */
  private dropped = false;
  private corked = false;
  private negotiationTimer: NodeJS.Timeout | null;
  private idleWaiters: Array<() => void> = [];
  private requestCount = 0;
  readonly closedPromise: Promise<void>;
  private resolveClosed: () => void = () => undefined;

  constructor(id: number, socket: Socket, exports: ExportTable, log: Logger, hooks: ConnectionHooks, context: ConnectionContext) {
    this.id = id;
    this.rawSocket = socket;
    this.socket = socket;
    this.tls = context.tls;
    this.budget = context.budget;
    this.limits = context.limits;
    this.log = log;
    this.hooks = hooks;
    this.remote = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    this.address = normaliseAddress(socket.remoteAddress);
    this.negotiation = new Negotiation(exports, this.tls.mode, { address: this.address, certificateName: null });
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.negotiationTimer = setTimeout(
      () => this.drop(`negotiation took longer than ${this.limits.negotiationTimeoutMs / 1000} s`, 'negotiationTimeout'),
      this.limits.negotiationTimeoutMs,
    );
    this.negotiationTimer.unref();
  }

  get exportName(): string | null {
    return this.entry?.name ?? null;
  }

  /** True until the client chooses an export (or the connection closes). */
  get negotiating(): boolean {
    return this.transmission === null && !this.closed;
  }

  /**
   * Bytes this connection holds: received and not yet served, held, in flight, replies queued.
   * Over TLS, replies are queued twice: as written, and encrypted on the socket beneath.
   */
  heldBytes(): number {
    const received = Math.max(this.parser.bufferedBytes, this.reservedBytes);
    const held = this.heldRequest?.payload?.length ?? 0;
    const encrypted = this.socket === this.rawSocket ? 0 : (kernelQueueBytesOf(this.rawSocket) ?? 0);
    return received + held + this.inFlightBytes + this.socket.writableLength + encrypted;
  }

  /** The memory budget has room for what this connection waits for. */
  budgetFreed(): void {
    this.resumeIfRoom();
  }

  /**
   * Called every sweep interval: count the memory again (replies drain without an event), and
   * drop an attached client whose replies have not moved, or whose half-sent request has not
   * grown, for the stall timeout. A client with nothing pending is left alone however quiet.
   */
  sweep(nowMs: number): void {
    if (this.closed) return;
    this.budget.count(this);
    if (this.transmission === null || this.disconnecting) return;
    const writeStalled = this.writeStalledMs(nowMs) >= this.limits.stallTimeoutMs;
    const receiveStalled = this.receiveStalledMs(nowMs) >= this.limits.stallTimeoutMs;
    const seconds = this.limits.stallTimeoutMs / 1000;
    if (writeStalled) this.drop(`the client read none of ${this.socket.writableLength} bytes of replies for ${seconds} s`, 'writeStall');
    else if (receiveStalled) this.drop(`the client sent part of a request and nothing more for ${seconds} s`, 'receiveStall');
  }

  /** A newcomer from a lighter address takes this connection's negotiating slot. */
  evict(): void {
    this.drop('its negotiating slot went to a client from an address with fewer', 'evicted');
  }

  /**
   * How long replies have waited without any byte of them leaving (0 when none wait or they move):
   * a write finished, or the kernel took part of one (the raw socket's queue went down; over TLS
   * it holds the encrypted replies).
   */
  private writeStalledMs(nowMs: number): number {
    const queuedBytes = this.socket.writableLength;
    const finishedBytes = (this.socket.bytesWritten ?? 0) - queuedBytes;
    const kernelQueueBytes = kernelQueueBytesOf(this.rawSocket) ?? 0;
    const moved = finishedBytes !== this.finishedReplyBytesSeen || kernelQueueBytes < this.kernelQueueBytesSeen;
    this.finishedReplyBytesSeen = finishedBytes;
    this.kernelQueueBytesSeen = kernelQueueBytes;
    if (queuedBytes === 0 || moved) this.writeProgressMs = nowMs;
    return nowMs - this.writeProgressMs;
  }

  /** How long a half-received request has not grown while we were reading (0 otherwise). */
  private receiveStalledMs(nowMs: number): number {
    const midRequest = this.parser.bufferedBytes > 0 || this.parser.pendingWritePayloadBytes > 0;
    if (this.paused || !midRequest || this.receivedBytes !== this.receivedBytesSeen) {
      this.receivedBytesSeen = this.receivedBytes;
      this.receiveProgressMs = nowMs;
    }
    return nowMs - this.receiveProgressMs;
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
    this.log.debug({ connection: this.id, remote: this.remote }, 'client connected');
    this.send([serializeGreeting(offeredHandshakeFlags)]);
    this.budget.count(this);
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
    this.receivedBytes += chunk.length;
    this.parser.push(chunk);
    this.processMessages();
  };

  private readonly onDrain = (): void => {
    this.resumeIfRoom();
    this.budget.count(this);
  };

  private readonly onError = (error: NodeJS.ErrnoException): void => {
    if (error.code !== undefined && deadPeerErrorCodes.has(error.code) && !this.dropped) {
      this.dropped = this.disconnecting = true;
      this.log.warn({ connection: this.id, remote: this.remote, export: this.entry?.name, error: error.message }, 'client stopped answering (keepalive or unacknowledged replies): dropped');
      this.hooks.dropped('deadPeer');
      return;
    }
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
      this.resumeIfRoom(); // a request waiting for memory is answered now
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
    this.readMessages();
    this.budget.count(this);
  }

  private readMessages(): void {
    while (!this.paused && !this.disconnecting && !this.upgrading) {
      if (this.heldRequest !== null) {
        if (!this.startRequest(this.heldRequest)) return;
        continue;
      }
      if (this.mustPause() || !this.reservePayload()) return this.pauseReading();
      const message = this.parser.next();
      if (message === undefined) {
        // The header of a WRITE may just have been read: room for its payload before reading it.
        if (!this.reservePayload()) this.pauseReading();
        return;
      }
      this.handleMessage(message);
    }
  }

  /** Per-connection bounds: requests and bytes in flight, replies queued. */
  private mustPause(): boolean {
    if (this.transmission === null) return this.socket.writableLength >= serverLimits.negotiationQueuedReplyBytesMax;
    return (
      this.inFlightCount >= serverLimits.inFlightRequestCountMax ||
      this.inFlightBytes >= serverLimits.inFlightBytesMax ||
      this.socket.writableLength >= serverLimits.queuedReplyBytesMax
    );
  }

  /**
   * Room for the payload of a WRITE whose header was read (and for its reply), asked of the
   * budget before the payload is read: false when the connection must wait for it.
   */
  private reservePayload(): boolean {
    const payloadBytes = this.parser.pendingWritePayloadBytes;
    if (this.transmission === null || payloadBytes === 0 || this.reservedBytes > 0) return true;
    const reservedBytes = payloadBytes + serverLimits.smallReplyBytesMax;
    // What arrived of the payload is counted already (the parser's buffered bytes).
    if (!this.budget.admit(this, Math.max(0, reservedBytes - this.parser.bufferedBytes))) return false;
    this.reservedBytes = reservedBytes;
    this.budget.count(this);
    return true;
  }

  private pauseReading(): void {
    this.paused = true;
    this.socket.pause();
  }

  private resumeIfRoom(): void {
    if (!this.paused || this.mustPause() || this.closed) return;
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
    this.receiveProgressMs = this.writeProgressMs = Date.now();
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
    if (request.type === CommandType.DISC) {
      // Finish everything in flight, then close; nothing after DISC is read (proto.md NBD_CMD_DISC).
      this.disconnecting = true;
      void this.whenIdle().then(() => this.socket.end());
      return;
    }
    this.startRequest(request);
  }

  /**
   * Serve the request once the memory it needs (its payload and its reply's bound) is admitted;
   * otherwise hold it and stop reading until the budget has room. A WRITE whose payload had room
   * reserved before it was read needs nothing more.
   */
  private startRequest(request: RequestMessage): boolean {
    const transmission = this.transmission!;
    const payloadBytes = request.payload?.length ?? 0;
    // Over TLS a reply is held twice for a while: as written, and encrypted beneath (heldBytes).
    const replyCopies = this.socket === this.rawSocket ? 1 : 2;
    const neededBytes = payloadBytes + replyCopies * transmission.replyBytesMax(request);
    // A reserved WRITE needs nothing more: its reservation becomes in-flight bytes. While shutting
    // down, every request is answered at once with ESHUTDOWN, a small reply that waits for nothing.
    if (this.reservedBytes > 0) {
      this.reservedBytes = 0;
    } else if (!transmission.shuttingDown) {
      const countedBytes = request === this.heldRequest ? payloadBytes : 0;
      if (!this.budget.admit(this, neededBytes - countedBytes)) {
        this.heldRequest = request;
        this.pauseReading();
        return false;
      }
    }
    this.heldRequest = null;
    this.inFlightCount++;
    this.inFlightBytes += neededBytes;
    this.requestCount++;
    this.budget.count(this);
    void transmission.serve(request).then(() => {
      this.inFlightCount--;
      this.inFlightBytes -= neededBytes;
      if (this.inFlightCount === 0 && this.heldRequest === null) this.wakeIdleWaiters();
      this.resumeIfRoom();
      this.budget.count(this);
    });
    return true;
  }

  private whenIdle(): Promise<void> {
    if (this.inFlightCount === 0 && this.heldRequest === null) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdleWaiters(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Close at once, saying why; a reason the counters know is counted (and logged less loudly when floods make it common). */
  private drop(reason: string, counted?: DropReason): void {
    if (this.dropped) return;
    this.dropped = true;
    const fields = { connection: this.id, remote: this.remote, export: this.entry?.name, reason };
    if (counted === 'evicted') this.log.debug(fields, 'dropping connection');
    else if (counted === 'negotiationTimeout') this.log.info(fields, 'dropping connection');
    else this.log.warn(fields, 'dropping connection');
    if (counted !== undefined) this.hooks.dropped(counted);
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
    this.heldRequest = null;
    this.budget.remove(this);
    const fields = { connection: this.id, export: this.entry?.name, requests: this.requestCount };
    if (this.entry !== null) this.log.info(fields, 'client disconnected');
    else this.log.debug(fields, 'client disconnected');
    this.hooks.closed(this);
    this.resolveClosed();
  };
}
