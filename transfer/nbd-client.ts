// A small NBD client over TCP or a unix socket, built on the codec's client side: fixed newstyle
// negotiation with NBD_OPT_GO (optionally structured replies and metadata contexts), then
// pipelined requests answered by promises. Used by our tools (restore targets, load generators)
// and tests. It is not proof of interoperability on its own: tests also use real clients.

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
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  decodeOptionErrorMessage,
  errnoName,
  isErrorChunkType,
  isProtocolError,
  serializeClientFlags,
  serializeGoOption,
  serializeRequestHeader,
  serializeSetMetaContextOption,
  serializeStructuredReplyOption,
  type ServerMessage,
} from 'nbd-protocol-ts';

export type NbdAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface NbdConnectOptions {
  exportName: string;
  structuredReplies?: boolean;
  metaContexts?: string[];
}

/** A request the server answered with an error. */
export class NbdRequestError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.name = 'NbdRequestError';
    this.errno = errno;
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

export class NbdClient {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** Context name to the ID the server gave it. */
  readonly contextIds: ReadonlyMap<string, number>;
  private readonly socket: net.Socket;
  private readonly parser: ClientParser;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedError: Error | null = null;

  private constructor(socket: net.Socket, parser: ClientParser, info: { sizeBytes: number; transmissionFlags: number; structuredReplies: boolean; contextIds: Map<string, number> }) {
    this.socket = socket;
    this.parser = parser;
    this.sizeBytes = info.sizeBytes;
    this.transmissionFlags = info.transmissionFlags;
    this.structuredReplies = info.structuredReplies;
    this.contextIds = info.contextIds;
    socket.on('data', (chunk: Buffer) => {
      parser.push(chunk);
      this.drainReplies();
    });
    socket.on('close', () => this.failAll(new Error('connection closed')));
    socket.on('error', (error) => this.failAll(error));
  }

  static async connect(address: NbdAddress, options: NbdConnectOptions): Promise<NbdClient> {
    const socket = address.kind === 'unix' ? net.createConnection(address.path) : net.createConnection(address.port, address.host);
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const parser = new ClientParser({ maxChunkPayloadBytes: 64 * 1024 * 1024 + 64 });
    const messages = messageReader(socket, parser);
    try {
      const greeting = await messages.next();
      if (greeting.kind !== 'greeting') throw new Error(`expected the greeting, got ${greeting.kind}`);
      if ((greeting.handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE) === 0) throw new Error('server does not speak fixed newstyle');
      const noZeroes = (greeting.handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
      socket.write(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | (noZeroes ? ClientFlag.C_NO_ZEROES : 0)));

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
          if (isProtocolError(context)) throw context;
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
      parser.enterTransmission();
      messages.release();
      return new NbdClient(socket, parser, { sizeBytes, transmissionFlags, structuredReplies, contextIds });
    } catch (error) {
      socket.destroy();
      throw error;
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

  /** NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    if (this.socket.destroyed) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.end(serializeRequestHeader(CommandType.DISC, 0, this.nextCookie++, 0, 0));
    await closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private request(type: number, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null): Promise<PendingResult> {
    if (this.closedError !== null) return Promise.reject(this.closedError);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { resolve, reject, type, offsetBytes, lengthBytes, data: null, extents: new Map(), error: null });
      this.parser.expectReply(cookie, { type, flags, offsetBytes, lengthBytes });
      this.socket.write(serializeRequestHeader(type, flags, cookie, offsetBytes, lengthBytes));
      if (payload !== null) this.socket.write(payload);
    });
  }

  private drainReplies(): void {
    for (let message = this.parser.next(); message !== undefined; message = this.parser.next()) {
      if (message.kind === 'fatal') {
        this.failAll(message.error);
        this.socket.destroy();
        return;
      }
      if (message.kind === 'simpleReply') this.onSimpleReply(message.cookie, message.error, message.data ?? null);
      else if (message.kind === 'structuredChunk') this.onChunk(message.cookie, message.flags, message.type, message.payload);
    }
  }

  private onSimpleReply(cookie: bigint, errno: number, data: Buffer | null): void {
    const pending = this.take(cookie);
    if (pending === undefined) return;
    if (errno !== 0) pending.reject(new NbdRequestError(errno, `server answered ${errnoName(errno)}`));
    else pending.resolve({ data, extents: pending.extents });
  }

  private onChunk(cookie: bigint, flags: number, type: number, payload: Buffer): void {
    const pending = this.pending.get(cookie);
    if (pending === undefined) return;
    if (isErrorChunkType(type)) {
      const decoded = decodeErrorPayload(payload);
      const errno = isProtocolError(decoded) ? 5 : decoded.error;
      const message = isProtocolError(decoded) ? decoded.message : decoded.message;
      pending.error ??= new NbdRequestError(errno, `server answered ${errnoName(errno)}${message ? `: ${message}` : ''}`);
    } else if (type === ChunkType.OFFSET_DATA) {
      const decoded = decodeOffsetDataPayload(payload);
      if (!isProtocolError(decoded)) {
        pending.data ??= Buffer.alloc(pending.lengthBytes);
        decoded.data.copy(pending.data, decoded.offsetBytes - pending.offsetBytes);
      }
    } else if (type === ChunkType.OFFSET_HOLE) {
      const decoded = decodeOffsetHolePayload(payload);
      pending.data ??= Buffer.alloc(pending.lengthBytes);
      if (!isProtocolError(decoded)) pending.data.fill(0, decoded.offsetBytes - pending.offsetBytes, decoded.offsetBytes - pending.offsetBytes + decoded.holeLengthBytes);
    } else if (type === ChunkType.BLOCK_STATUS) {
      const decoded = decodeBlockStatusPayload(payload);
      if (!isProtocolError(decoded)) pending.extents.set(decoded.contextId, decoded.extents);
    }
    if ((flags & ReplyFlag.DONE) === 0) return;
    this.pending.delete(cookie);
    if (pending.error !== null) pending.reject(pending.error);
    else pending.resolve({ data: pending.type === CommandType.READ ? (pending.data ?? Buffer.alloc(0)) : null, extents: pending.extents });
  }

  private take(cookie: bigint): Pending | undefined {
    const pending = this.pending.get(cookie);
    this.pending.delete(cookie);
    return pending;
  }

  private failAll(error: Error): void {
    this.closedError ??= error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}

/** Pull messages during negotiation, one at a time. */
function messageReader(socket: net.Socket, parser: ClientParser) {
  const queued: ServerMessage[] = [];
  let waiter: ((message: ServerMessage) => void) | null = null;
  let failure: Error | null = null;
  let failWaiter: ((error: Error) => void) | null = null;
  const onData = (chunk: Buffer): void => {
    parser.push(chunk);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      if (waiter !== null) {
        const wake = waiter;
        waiter = null;
        failWaiter = null;
        wake(message);
      } else {
        queued.push(message);
      }
      if (message.kind === 'fatal') break;
    }
  };
  const onEnd = (): void => {
    failure = new Error('server closed the connection during negotiation');
    failWaiter?.(failure);
  };
  socket.on('data', onData);
  socket.on('close', onEnd);
  const next = (): Promise<ServerMessage> => {
    const message = queued.shift();
    if (message !== undefined) return Promise.resolve(message);
    if (failure !== null) return Promise.reject(failure);
    return new Promise((resolve, reject) => {
      waiter = resolve;
      failWaiter = reject;
    });
  };
  return {
    next,
    async expectOptionReply(option: number) {
      const message = await next();
      if (message.kind === 'fatal') throw message.error;
      if (message.kind !== 'optionReply' || message.option !== option) throw new Error(`expected a reply to option ${option}, got ${message.kind}`);
      return message;
    },
    release(): void {
      socket.off('data', onData);
      socket.off('close', onEnd);
      if (queued.length > 0) throw new Error('server sent data before transmission started');
    },
  };
}
