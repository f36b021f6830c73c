// A small NBD client over TCP or a unix socket, built on the codec's client side: fixed newstyle
// negotiation with NBD_OPT_GO (optionally TLS first, client-tls.ts; structured replies and
// metadata contexts), then
// pipelined requests answered by promises. Used by restore, verify and seed (transfer/endpoints.ts),
// our tools and tests. It is not proof of interoperability on its own: tests also use real clients.
//
// The server may be broken or hostile (a restore target or a seed source on a compromised host).
// The codec checks every reply against its request (vendor/nbd-protocol-ts, "Reply checks"), and
// whatever the server does (breaks the protocol, closes, stays silent) ends in an
// NbdConnectionError that fails this connection's requests; nothing throws out of a socket
// handler. Connecting has a time limit, and so has the wait for the next reply while requests
// are in flight (transfer/limits.ts).

import net from 'node:net';
import {
  ClientFlag,
  ClientParser,
  CommandFlag,
  CommandType,
  HandshakeFlag,
  InfoType,
  OptionReplyType,
  OptionType,
  ReplyFlag,
  ChunkType,
  commandTypeName,
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOptionErrorMessage,
  errnoName,
  isErrorChunkType,
  isProtocolError,
  serializeClientFlags,
  serializeGoOption,
  serializeRequestHeader,
  serializeSetMetaContextOption,
  serializeStructuredReplyOption,
  type ProtocolError,
  type ServerMessage,
} from 'nbd-protocol-ts';
import { startClientTls, type NbdClientTls } from './client-tls.js';
import { assertNbdClientLimits, nbdClientLimits } from './limits.js';

assertNbdClientLimits();

export type NbdAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface NbdConnectOptions {
  exportName: string;
  structuredReplies?: boolean;
  metaContexts?: string[];
  /** Start TLS before any other option; the server's certificate must be valid for serverName. */
  tls?: NbdClientTls & { serverName: string };
  /** TCP connect and negotiation together; default nbdClientLimits.connectTimeoutMsDefault. */
  connectTimeoutMs?: number;
  /**
   * While requests are in flight, the longest wait for the next one to be answered in full;
   * default nbdClientLimits.requestTimeoutMsDefault.
   */
  requestTimeoutMs?: number;
}

/** A request the server answered with an error: the connection goes on. */
export class NbdRequestError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.name = 'NbdRequestError';
    this.errno = errno;
  }
}

/** Why a connection failed; every request on it fails with the same error. Codes never change meaning. */
export type NbdConnectionErrorCode =
  /** The server broke the protocol; the cause is the codec's ProtocolError, with its code. */
  | 'PROTOCOL_ERROR'
  /** No connection and negotiation within the connect timeout. */
  | 'CONNECT_TIMEOUT'
  /** Requests were in flight and none was answered within the request timeout. */
  | 'REQUEST_TIMEOUT'
  /** The server closed the connection. */
  | 'CLOSED'
  /** The socket failed (reset, refused, unreachable); the cause is the system error. */
  | 'SOCKET_ERROR'
  /** Our own code failed while handling a reply: a bug, kept to this connection. */
  | 'INTERNAL_ERROR';

export class NbdConnectionError extends Error {
  readonly code: NbdConnectionErrorCode;
  constructor(code: NbdConnectionErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NbdConnectionError';
    this.code = code;
  }
}

export interface BlockStatusExtent {
  lengthBytes: number;
  flags: number;
}

interface Pending {
  resolve: (value: PendingResult) => void;
  reject: (error: Error) => void;
  type: number;
  offsetBytes: number;
  lengthBytes: number;
  data: Buffer | null;
  extents: Map<number, BlockStatusExtent[]>;
  error: NbdRequestError | null;
}

type PendingResult = { data: Buffer | null; extents: Map<number, BlockStatusExtent[]> };

interface ClientParts {
  socket: net.Socket;
  parser: ClientParser;
  server: string;
  requestTimeoutMs: number;
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  contextIds: Map<string, number>;
}

export class NbdClient {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** Context name to the ID the server gave it. */
  readonly contextIds: ReadonlyMap<string, number>;
  /** The server, for messages: host:port or unix:PATH, and the export. */
  readonly server: string;
  private readonly socket: net.Socket;
  private readonly parser: ClientParser;
  private readonly requestTimeoutMs: number;
  /** In the order sent: the first is the oldest. */
  private readonly pending = new Map<bigint, Pending>();
  /** Runs while requests are in flight; restarted by every complete reply. */
  private replyTimer: NodeJS.Timeout | null = null;
  private nextCookie = 1n;
  private closedError: Error | null = null;

  private constructor(parts: ClientParts) {
    this.socket = parts.socket;
    this.parser = parts.parser;
    this.server = parts.server;
    this.requestTimeoutMs = parts.requestTimeoutMs;
    this.sizeBytes = parts.sizeBytes;
    this.transmissionFlags = parts.transmissionFlags;
    this.structuredReplies = parts.structuredReplies;
    this.contextIds = parts.contextIds;
    this.socket.on('data', this.onData);
    this.socket.on('close', () => this.fail(new NbdConnectionError('CLOSED', `${this.server} closed the connection`)));
    this.socket.on('error', (error) => this.fail(socketError(this.server, error)));
  }

  static async connect(address: NbdAddress, options: NbdConnectOptions): Promise<NbdClient> {
    const connectTimeoutMs = timeoutOf(options.connectTimeoutMs, nbdClientLimits.connectTimeoutMsDefault, 'connectTimeoutMs');
    const requestTimeoutMs = timeoutOf(options.requestTimeoutMs, nbdClientLimits.requestTimeoutMsDefault, 'requestTimeoutMs');
    const server = `${describeAddress(address)} (export "${options.exportName}")`;
    const socket = address.kind === 'unix' ? net.createConnection(address.path) : net.createConnection(address.port, address.host);
    socket.setNoDelay(true);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, connectTimeoutMs);
    try {
      const negotiated = await negotiate(socket, server, options);
      return new NbdClient({ server, requestTimeoutMs, ...negotiated });
    } catch (error) {
      socket.on('error', () => undefined); // thrown away: a late error is of no interest
      socket.destroy();
      if (timedOut) throw new NbdConnectionError('CONNECT_TIMEOUT', `${server} did not connect and negotiate within ${connectTimeoutMs} ms`, { cause: error });
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const result = await this.request(CommandType.READ, 0, offsetBytes, lengthBytes, null);
    return result.data ?? Buffer.alloc(0);
  }

  async write(offsetBytes: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    await this.request(CommandType.WRITE, options.fua ? CommandFlag.FUA : 0, offsetBytes, data.length, data);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: { fua?: boolean; noHole?: boolean; fastZero?: boolean } = {}): Promise<void> {
    const flags = (options.fua ? CommandFlag.FUA : 0) | (options.noHole ? CommandFlag.NO_HOLE : 0) | (options.fastZero ? CommandFlag.FAST_ZERO : 0);
    await this.request(CommandType.WRITE_ZEROES, flags, offsetBytes, lengthBytes, null);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: { fua?: boolean } = {}): Promise<void> {
    await this.request(CommandType.TRIM, options.fua ? CommandFlag.FUA : 0, offsetBytes, lengthBytes, null);
  }

  async flush(): Promise<void> {
    await this.request(CommandType.FLUSH, 0, 0, 0, null);
  }

  /** Extents per context name. */
  async blockStatus(offsetBytes: number, lengthBytes: number, options: { requestOne?: boolean } = {}): Promise<Map<string, BlockStatusExtent[]>> {
    const result = await this.request(CommandType.BLOCK_STATUS, options.requestOne ? CommandFlag.REQ_ONE : 0, offsetBytes, lengthBytes, null);
    const byName = new Map<string, BlockStatusExtent[]>();
    for (const [name, id] of this.contextIds) byName.set(name, result.extents.get(id) ?? []);
    return byName;
  }

  /** Send any request as is (tests use this for requests the typed methods would not make). */
  raw(type: number, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null = null): Promise<PendingResult> {
    return this.request(type, flags, offsetBytes, lengthBytes, payload);
  }

  /** NBD_CMD_DISC, then wait for the server to close (at most disconnectTimeoutMs, then cut). */
  async disconnect(): Promise<void> {
    if (this.socket.destroyed) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    const timer = setTimeout(() => this.socket.destroy(), nbdClientLimits.disconnectTimeoutMs);
    this.socket.end(serializeRequestHeader(CommandType.DISC, 0, this.nextCookie++, 0, 0));
    await closed;
    clearTimeout(timer);
  }

  destroy(): void {
    this.fail(new NbdConnectionError('CLOSED', `the connection to ${this.server} was closed by us`));
  }

  private request(type: number, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null): Promise<PendingResult> {
    if (this.closedError !== null) return Promise.reject(this.closedError);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      // First, so that arguments that do not fit a request reject here with TypeError.
      this.parser.expectReply(cookie, { type, flags, offsetBytes, lengthBytes });
      this.pending.set(cookie, { resolve, reject, type, offsetBytes, lengthBytes, data: null, extents: new Map(), error: null });
      this.replyTimer ??= setTimeout(() => this.failTimedOut(), this.requestTimeoutMs);
      this.socket.write(serializeRequestHeader(type, flags, cookie, offsetBytes, lengthBytes));
      if (payload !== null) this.socket.write(payload);
    });
  }

  /**
   * Replies, as the codec delivers them: it has checked each against its request, so the copies
   * below stay inside their buffers. Anything thrown here would be a bug of ours; it fails this
   * connection (and its job) with the bug's message rather than the whole process.
   */
  private readonly onData = (chunk: Buffer): void => {
    try {
      this.parser.push(chunk);
      this.drainReplies();
    } catch (error) {
      this.fail(new NbdConnectionError('INTERNAL_ERROR', `handling a reply from ${this.server} failed: ${messageOf(error)}`, { cause: error }));
    }
  };

  private drainReplies(): void {
    for (let message = this.parser.next(); message !== undefined; message = this.parser.next()) {
      switch (message.kind) {
        case 'fatal':
          this.fail(protocolError(this.server, message.error));
          return;
        case 'simpleReply':
          this.onSimpleReply(message.cookie, message.error, message.data ?? null);
          break;
        case 'structuredChunk':
          this.onChunk(message.cookie, message.flags, message.type, message.payload);
          break;
        default:
          this.fail(new NbdConnectionError('PROTOCOL_ERROR', `${this.server} sent a ${message.kind} message during transmission`));
          return;
      }
    }
  }

  private onSimpleReply(cookie: bigint, errno: number, data: Buffer | null): void {
    const pending = this.take(cookie);
    if (errno !== 0) pending.reject(new NbdRequestError(errno, `${this.server} answered ${errnoName(errno)}`));
    else pending.resolve({ data, extents: pending.extents });
  }

  private onChunk(cookie: bigint, flags: number, type: number, payload: Buffer): void {
    const pending = this.pending.get(cookie);
    if (pending === undefined) throw new Error(`the codec passed a chunk for cookie ${cookie}, which is not in flight`);
    if (isErrorChunkType(type)) {
      const decoded = checked(decodeErrorPayload(payload));
      pending.error ??= new NbdRequestError(decoded.error, `${this.server} answered ${errnoName(decoded.error)}${decoded.message ? `: ${decoded.message}` : ''}`);
    } else if (type === ChunkType.OFFSET_DATA) {
      const decoded = checked(decodeOffsetDataPayload(payload));
      pending.data ??= Buffer.alloc(pending.lengthBytes);
      decoded.data.copy(pending.data, decoded.offsetBytes - pending.offsetBytes);
    } else if (type === ChunkType.OFFSET_HOLE) {
      pending.data ??= Buffer.alloc(pending.lengthBytes); // zeroes already
    } else if (type === ChunkType.BLOCK_STATUS) {
      const decoded = checked(decodeBlockStatusPayload(payload));
      pending.extents.set(decoded.contextId, decoded.extents);
    }
    if ((flags & ReplyFlag.DONE) === 0) return;
    this.take(cookie);
    if (pending.error !== null) pending.reject(pending.error);
    else pending.resolve({ data: pending.type === CommandType.READ ? (pending.data ?? Buffer.alloc(0)) : null, extents: pending.extents });
  }

  /** A request answered in full: the server made progress, so the wait for the next reply starts over. */
  private take(cookie: bigint): Pending {
    const pending = this.pending.get(cookie);
    if (pending === undefined) throw new Error(`the codec passed a reply for cookie ${cookie}, which is not in flight`);
    this.pending.delete(cookie);
    if (this.pending.size > 0) this.replyTimer?.refresh();
    else this.stopReplyTimer();
    return pending;
  }

  /**
   * A progress bound, not a deadline per request: with many requests queued on a slow link the
   * last waits for all before it, but a healthy server answers one of them every so often.
   */
  private failTimedOut(): void {
    const oldest = this.pending.values().next().value as Pending | undefined;
    const what = oldest === undefined ? 'a request' : `${commandTypeName(oldest.type)} ${oldest.offsetBytes}+${oldest.lengthBytes}`;
    this.fail(new NbdConnectionError('REQUEST_TIMEOUT', `${this.server} did not answer ${what} (nor any of the ${this.pending.size} requests in flight) within ${this.requestTimeoutMs} ms`));
  }

  private stopReplyTimer(): void {
    if (this.replyTimer !== null) clearTimeout(this.replyTimer);
    this.replyTimer = null;
  }

  /** The connection is over: every request in flight fails with the first reason, the socket goes. */
  private fail(error: Error): void {
    this.closedError ??= error;
    this.stopReplyTimer();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const request of pending) request.reject(this.closedError);
    this.socket.destroy();
  }
}

interface Negotiated {
  /** The socket transmission goes on (a TLS socket over the TCP one after STARTTLS). */
  socket: net.Socket;
  parser: ClientParser;
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  contextIds: Map<string, number>;
}

/** Connect and negotiate up to the ACK to GO; throws (the caller closes the socket). */
async function negotiate(plainSocket: net.Socket, server: string, options: NbdConnectOptions): Promise<Negotiated> {
  await connected(plainSocket, server);
  let socket: net.Socket = plainSocket;
  const parser = new ClientParser({ maxChunkPayloadBytes: nbdClientLimits.chunkPayloadBytesMax });
  let messages = messageReader(socket, parser, server);
  const greeting = await messages.next();
  if (greeting.kind !== 'greeting') throw new Error(`expected the greeting, got ${greeting.kind}`);
  if ((greeting.handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0) throw new Error(`${server} does not speak fixed newstyle`);
  const noZeroes = (greeting.handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
  socket.write(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | (noZeroes ? ClientFlag.C_NO_ZEROES : 0)));
  if (options.tls !== undefined) {
    socket = await startClientTls(socket, parser, messages, options.tls);
    messages = messageReader(socket, parser, server);
  }

  let structuredReplies = false;
  if (options.structuredReplies ?? true) {
    socket.write(serializeStructuredReplyOption());
    const reply = await messages.expectOptionReply(OptionType.STRUCTURED_REPLY);
    structuredReplies = reply.replyType === OptionReplyType.ACK;
  }
  const contextIds = new Map<string, number>();
  if (structuredReplies && (options.metaContexts?.length ?? 0) > 0) {
    socket.write(serializeSetMetaContextOption(options.exportName, options.metaContexts!));
    for (;;) {
      const reply = await messages.expectOptionReply(OptionType.SET_META_CONTEXT);
      if (reply.replyType === OptionReplyType.ACK) break;
      if (reply.replyType !== OptionReplyType.META_CONTEXT) throw new Error(`SET_META_CONTEXT failed: ${decodeOptionErrorMessage(reply.data)}`);
      const context = decodeMetaContextReplyData(reply.data);
      if (isProtocolError(context)) throw protocolError(server, context);
      contextIds.set(context.contextName, context.contextId);
    }
  }
  socket.write(serializeGoOption(options.exportName, [InfoType.BLOCK_SIZE]));
  let sizeBytes = -1;
  let transmissionFlags = 0;
  for (;;) {
    const reply = await messages.expectOptionReply(OptionType.GO);
    if (reply.replyType === OptionReplyType.ACK) break;
    if (reply.replyType !== OptionReplyType.INFO) throw new Error(`GO failed: ${decodeOptionErrorMessage(reply.data) || reply.replyType}`);
    const info = decodeInfoReplyData(reply.data);
    if (!isProtocolError(info) && info.kind === 'export') {
      sizeBytes = info.sizeBytes;
      transmissionFlags = info.transmissionFlags;
    }
  }
  if (sizeBytes < 0) throw new Error('GO succeeded without NBD_INFO_EXPORT');
  if (!Number.isSafeInteger(sizeBytes)) throw new NbdConnectionError('PROTOCOL_ERROR', `${server} gave an export size above 2^53 bytes`);
  messages.release();
  try {
    parser.enterTransmission();
  } catch {
    throw new NbdConnectionError('PROTOCOL_ERROR', `${server} began another option reply after the ACK to GO`);
  }
  return { socket, parser, sizeBytes, transmissionFlags, structuredReplies, contextIds };
}

/** Resolves once the socket is connected; rejects if it fails or closes first. */
function connected(socket: net.Socket, server: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onConnect = (): void => {
      settle();
      resolve();
    };
    const onError = (error: Error): void => {
      settle();
      reject(socketError(server, error));
    };
    const onClose = (): void => {
      settle();
      reject(new NbdConnectionError('CLOSED', `the connection to ${server} closed before it was made`));
    };
    const settle = (): void => {
      socket.off('connect', onConnect);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    socket.on('connect', onConnect);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}

/**
 * Pull messages during negotiation, one at a time. Every way the socket can end (an error, a
 * close, a protocol error, a flood of replies) rejects the next read; nothing throws from the
 * socket's handlers.
 */
function messageReader(socket: net.Socket, parser: ClientParser, server: string) {
  const queued: ServerMessage[] = [];
  let waiter: { resolve: (message: ServerMessage) => void; reject: (error: Error) => void } | null = null;
  let failure: Error | null = null;
  const failWith = (error: Error): void => {
    failure ??= error;
    const waiting = waiter;
    waiter = null;
    waiting?.reject(failure);
    socket.destroy();
  };
  const onData = (chunk: Buffer): void => {
    try {
      parser.push(chunk);
      for (let message = parser.next(); message !== undefined; message = parser.next()) {
        if (message.kind === 'fatal') return failWith(protocolError(server, message.error));
        if (waiter !== null) {
          const waiting = waiter;
          waiter = null;
          waiting.resolve(message);
        } else if (queued.length < nbdClientLimits.queuedOptionReplyCountMax) {
          queued.push(message);
        } else {
          return failWith(new NbdConnectionError('PROTOCOL_ERROR', `${server} sent more than ${nbdClientLimits.queuedOptionReplyCountMax} option replies nobody asked for`));
        }
      }
    } catch (error) {
      failWith(new NbdConnectionError('INTERNAL_ERROR', `handling negotiation with ${server} failed: ${messageOf(error)}`, { cause: error }));
    }
  };
  const onClose = (): void => failWith(new NbdConnectionError('CLOSED', `${server} closed the connection during negotiation`));
  const onError = (error: Error): void => failWith(socketError(server, error));
  socket.on('data', onData);
  socket.on('close', onClose);
  socket.on('error', onError);
  const next = (): Promise<ServerMessage> => {
    const message = queued.shift();
    if (message !== undefined) return Promise.resolve(message);
    if (failure !== null) return Promise.reject(failure);
    return new Promise((resolve, reject) => (waiter = { resolve, reject }));
  };
  return {
    next,
    async expectOptionReply(option: number) {
      const message = await next();
      if (message.kind !== 'optionReply' || message.option !== option) throw new NbdConnectionError('PROTOCOL_ERROR', `${server} sent ${describeMessage(message)} where a reply to option ${option} belongs`);
      return message;
    },
    /** Hand the socket over for transmission: nothing may have arrived after the ACK to GO. */
    release(): void {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      const earlyBytes = parser.bufferedBytes;
      if (queued.length > 0 || earlyBytes > 0) {
        throw new NbdConnectionError('PROTOCOL_ERROR', `${server} sent ${queued.length > 0 ? describeMessage(queued[0]!) : `${earlyBytes} bytes`} after the ACK to GO, before any request`);
      }
    },
  };
}

function describeMessage(message: ServerMessage): string {
  return message.kind === 'optionReply' ? `a reply of type ${message.replyType} to option ${message.option}` : `a ${message.kind} message`;
}

function describeAddress(address: NbdAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}

function protocolError(server: string, error: ProtocolError): NbdConnectionError {
  return new NbdConnectionError('PROTOCOL_ERROR', `${server} broke the NBD protocol (${error.code}): ${error.message}`, { cause: error });
}

function socketError(server: string, error: Error): NbdConnectionError {
  const code = (error as NodeJS.ErrnoException).code;
  // Writing to, or reading from, a connection the server has closed.
  if (code === 'EPIPE' || code === 'ECONNRESET') return new NbdConnectionError('CLOSED', `${server} closed the connection (${code})`, { cause: error });
  return new NbdConnectionError('SOCKET_ERROR', `the connection to ${server} failed: ${code ?? error.message}`, { cause: error });
}

function timeoutOf(given: number | undefined, fallback: number, what: string): number {
  const timeoutMs = given ?? fallback;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw new TypeError(`${what} must be a positive whole number of milliseconds, got ${timeoutMs}`);
  return timeoutMs;
}

/** A payload the codec has already checked: it decodes, or our assumptions are wrong. */
function checked<T>(decoded: T | ProtocolError): T {
  if (isProtocolError(decoded)) throw new Error(`a reply the codec passed does not decode: ${decoded.message}`);
  return decoded;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
