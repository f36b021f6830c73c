// One client connection: bytes in through the parser, options to negotiation.ts, requests to
// transmission.ts, replies out in batches (one writev per event-loop turn). Reading pauses
// while too much is in flight or queued for the client, so memory per connection is bounded.

import type { Socket } from 'node:net';
import { CommandType, ServerParser, serializeGreeting, type ClientMessage, type RequestMessage } from 'nbd-protocol-ts';
import type { ExportEntry, ExportTable } from './exports.js';
import { serverLimits } from './limits.js';
import type { Logger } from './logger.js';
import { Negotiation, offeredHandshakeFlags, type OptionOutcome } from './negotiation.js';
import { Transmission, type ReplySink } from './transmission.js';

export interface ConnectionHooks {
  /** A client entered transmission with an export. */
  attached(entry: ExportEntry, connection: Connection): void;
  /** The connection is gone. */
  closed(connection: Connection): void;
}

export class Connection implements ReplySink {
  readonly id: number;
  readonly remote: string;
  private readonly socket: Socket;
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

  constructor(id: number, socket: Socket, exports: ExportTable, log: Logger, hooks: ConnectionHooks) {
    this.id = id;
    this.socket = socket;
    this.log = log;
    this.hooks = hooks;
    this.remote = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    this.negotiation = new Negotiation(exports);
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    this.negotiationTimer = setTimeout(() => this.drop('negotiation took too long'), serverLimits.negotiationTimeoutMs);
    this.negotiationTimer.unref();
  }

  get exportName(): string | null {
    return this.entry?.name ?? null;
  }

  start(): void {
    const socket = this.socket;
    if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.parser.push(chunk);
      this.processMessages();
    });
    socket.on('drain', () => this.resumeIfRoom());
    socket.on('error', (error) => this.log.debug({ connection: this.id, error: error.message }, 'connection error'));
    socket.on('close', () => this.onClose());
    socket.on('end', () => {
      // The client half-closed: nothing more will arrive; finish what is in flight, then close.
      void this.whenIdle().then(() => socket.end());
    });
    this.log.info({ connection: this.id, remote: this.remote }, 'client connected');
    this.send([serializeGreeting(offeredHandshakeFlags)]);
  }

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
      this.socket.destroy();
    } else {
      this.transmission.shuttingDown = true;
      await this.whenIdle();
      this.socket.end();
    }
    await this.closedPromise;
  }

  /** Cut the connection now (shutdown grace expired, or the export is being removed). */
  destroy(): void {
    this.socket.destroy();
  }

  private processMessages(): void {
    while (!this.paused && !this.disconnecting) {
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
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.negotiationTimer !== null) clearTimeout(this.negotiationTimer);
    if (this.entry !== null) this.entry.connectionCount--;
    this.log.info({ connection: this.id, export: this.entry?.name, requests: this.requestCount }, 'client disconnected');
    this.hooks.closed(this);
  }
}
