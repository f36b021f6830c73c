// The client's parser of everything a server sends: the greeting, option
// replies, the EXPORT_NAME reply, simple replies and structured reply chunks
// (proto.md "Newstyle negotiation", "Fixed newstyle negotiation", "Simple
// reply message", "Structured reply chunk message"). A simple reply does
// not say whether data follows, so the client registers every request it
// sends with expectReply(); every reply is then checked against its request
// (reply-checker.ts) and a reply that breaks the spec's rules is fatal.
// Used by our tools and tests; the server never needs it.
import { ByteQueue } from './byte-queue.js';
import { Magic, WireSize } from './constants.js';
import { type FatalMessage, ProtocolError, type ProtocolErrorCode } from './errors.js';
import { ReplyChecker, type ExpectedRequest } from './reply-checker.js';
import { readUint64AsNumber } from './wire-integers.js';

export interface GreetingMessage {
  kind: 'greeting';
  handshakeFlags: number;
}

export interface OptionReplyMessage {
  kind: 'optionReply';
  option: number;
  replyType: number;
  data: Buffer;
}

export interface ExportNameReplyMessage {
  kind: 'exportNameReply';
  /** Infinity when the u64 size exceeds Number.MAX_SAFE_INTEGER. */
  sizeBytes: number;
  transmissionFlags: number;
}

export interface SimpleReplyMessage {
  kind: 'simpleReply';
  cookie: bigint;
  error: number;
  /** Present exactly for a successful reply to a READ: the request's length in bytes. */
  data?: Buffer;
}

export interface StructuredChunkMessage {
  kind: 'structuredChunk';
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export type ServerMessage =
  | GreetingMessage
  | OptionReplyMessage
  | ExportNameReplyMessage
  | SimpleReplyMessage
  | StructuredChunkMessage
  | FatalMessage;

export interface ClientParserOptions {
  /** Largest option reply data accepted; more is fatal (default 65536). */
  maxOptionReplyDataBytes?: number;
  /**
   * Largest structured chunk payload accepted; more is fatal (default 2^26). Chunks whose size
   * their request bounds (OFFSET_DATA: the READ's length + 8) are held to that first.
   */
  maxChunkPayloadBytes?: number;
}

type ClientParserState =
  | 'greeting'
  | 'optionReplyHeader'
  | 'optionReplyData'
  | 'exportNameReply'
  | 'replyHeader'
  | 'simpleReplyData'
  | 'chunkPayload'
  | 'fatal';

const INIT_PASSWD_HIGH_WORD = Number(Magic.INIT_PASSWD >> 32n);
const INIT_PASSWD_LOW_WORD = Number(Magic.INIT_PASSWD & 0xffffffffn);

export class ClientParser {
  private readonly queue = new ByteQueue();
  private readonly maxOptionReplyDataBytes: number;
  private readonly maxChunkPayloadBytes: number;
  private readonly replies = new ReplyChecker();
  private state: ClientParserState = 'greeting';
  private exportNameReplyLengthBytes = 0;
  // Header fields of the message whose data is still arriving.
  private pendingOption = 0;
  private pendingReplyType = 0;
  private pendingFlags = 0;
  private pendingCookie = 0n;
  private pendingLengthBytes = 0;
  private fatalMessage: FatalMessage | undefined;

  constructor(options: ClientParserOptions = {}) {
    this.maxOptionReplyDataBytes = limit(options.maxOptionReplyDataBytes ?? 65536, 'maxOptionReplyDataBytes');
    this.maxChunkPayloadBytes = limit(options.maxChunkPayloadBytes ?? 2 ** 26, 'maxChunkPayloadBytes');
  }

  get bufferedBytes(): number {
    return this.queue.lengthBytes;
  }

  /** Whether the server acknowledged NBD_OPT_STRUCTURED_REPLY (since the last STARTTLS). */
  get structuredRepliesNegotiated(): boolean {
    return this.replies.structuredRepliesNegotiated;
  }

  /** Requests registered with expectReply() and not yet answered. */
  get requestsInFlight(): number {
    return this.replies.requestCount;
  }

  push(chunk: Buffer): void {
    if (this.state === 'fatal') return;
    this.queue.push(chunk);
  }

  /** Call after sending EXPORT_NAME: the next server bytes are its reply, not option replies. */
  expectExportNameReply(noZeroes: boolean): void {
    this.requireOptionPhase('expectExportNameReply');
    this.exportNameReplyLengthBytes = WireSize.EXPORT_NAME_REPLY + (noZeroes ? 0 : WireSize.EXPORT_NAME_REPLY_ZEROES);
    this.state = 'exportNameReply';
  }

  /** Call after the final ACK to GO: the next server bytes are transmission replies. */
  enterTransmission(): void {
    if (this.state === 'replyHeader' || this.state === 'fatal') return;
    this.requireOptionPhase('enterTransmission');
    this.state = 'replyHeader';
  }

  /**
   * Call after the ACK to STARTTLS, before pushing bytes from the TLS stream:
   * discards (and counts) plaintext that followed the ACK, which a client
   * must not believe. Option replies go on over TLS.
   */
  startTls(): number {
    this.requireOptionPhase('startTls');
    const discardedBytes = this.queue.lengthBytes;
    this.queue.clear();
    this.replies.resetNegotiation();
    return discardedBytes;
  }

  /**
   * Call for every request sent (all but NBD_CMD_DISC), before its reply can arrive: a reply
   * is accepted only for a request in flight, and only in a form that request can have.
   * TypeError for a cookie already in flight or fields that do not fit a compact request.
   */
  expectReply(cookie: bigint, request: ExpectedRequest): void {
    this.replies.expect(cookie, request);
  }

  next(): ServerMessage | undefined {
    switch (this.state) {
      case 'greeting':
        return this.parseGreeting();
      case 'optionReplyHeader':
        return this.parseOptionReplyHeader();
      case 'optionReplyData':
        return this.completeOptionReply();
      case 'exportNameReply':
        return this.parseExportNameReply();
      case 'replyHeader':
        return this.parseReplyHeader();
      case 'simpleReplyData':
        return this.completeSimpleReply();
      case 'chunkPayload':
        return this.completeChunk();
      case 'fatal':
        return this.fatalMessage;
    }
  }

  private parseGreeting(): ServerMessage | undefined {
    if (this.queue.lengthBytes < WireSize.GREETING) return undefined;
    const greeting = this.queue.consume(WireSize.GREETING);
    if (greeting.readUInt32BE(0) !== INIT_PASSWD_HIGH_WORD || greeting.readUInt32BE(4) !== INIT_PASSWD_LOW_WORD) {
      return this.fail('BAD_GREETING_MAGIC', `greeting starts with 0x${greeting.toString('hex', 0, 8)}, not NBDMAGIC`);
    }
    const secondMagic = greeting.readBigUInt64BE(8);
    if (secondMagic === Magic.CLISERV) {
      return this.fail('OLDSTYLE_NEGOTIATION', 'server uses oldstyle negotiation');
    }
    if (secondMagic !== Magic.IHAVEOPT) {
      return this.fail('BAD_GREETING_MAGIC', `greeting magic 0x${secondMagic.toString(16)} is not IHAVEOPT`);
    }
    this.state = 'optionReplyHeader';
    return { kind: 'greeting', handshakeFlags: greeting.readUInt16BE(16) };
  }

  private parseOptionReplyHeader(): ServerMessage | undefined {
    if (this.queue.lengthBytes < WireSize.OPTION_REPLY_HEADER) return undefined;
    const header = this.queue.consume(WireSize.OPTION_REPLY_HEADER);
    const magic = header.readBigUInt64BE(0);
    if (magic !== Magic.OPTION_REPLY) {
      return this.fail('BAD_OPTION_REPLY_MAGIC', `option reply magic 0x${magic.toString(16)} is wrong`);
    }
    const lengthBytes = header.readUInt32BE(16);
    if (lengthBytes > this.maxOptionReplyDataBytes) {
      return this.fail('OPTION_REPLY_TOO_BIG', `option reply of ${lengthBytes} bytes exceeds ${this.maxOptionReplyDataBytes}`);
    }
    this.pendingOption = header.readUInt32BE(8);
    this.pendingReplyType = header.readUInt32BE(12);
    this.pendingLengthBytes = lengthBytes;
    this.state = 'optionReplyData';
    return this.completeOptionReply();
  }

  private completeOptionReply(): ServerMessage | undefined {
    if (this.queue.lengthBytes < this.pendingLengthBytes) return undefined;
    this.state = 'optionReplyHeader';
    const data = this.queue.consume(this.pendingLengthBytes);
    this.replies.noteOptionReply(this.pendingOption, this.pendingReplyType, data);
    return { kind: 'optionReply', option: this.pendingOption, replyType: this.pendingReplyType, data };
  }

  // The 124 reserved bytes are not checked: they carry nothing, and a
  // server that fills them with garbage is still framed correctly.
  private parseExportNameReply(): ServerMessage | undefined {
    if (this.queue.lengthBytes < this.exportNameReplyLengthBytes) return undefined;
    const reply = this.queue.consume(this.exportNameReplyLengthBytes);
    this.state = 'replyHeader';
    return { kind: 'exportNameReply', sizeBytes: readUint64AsNumber(reply, 0), transmissionFlags: reply.readUInt16BE(8) };
  }

  private parseReplyHeader(): ServerMessage | undefined {
    if (this.queue.lengthBytes < 4) return undefined;
    const magic = this.queue.peekUint32();
    if (magic === Magic.SIMPLE_REPLY) return this.parseSimpleReplyHeader();
    if (magic === Magic.STRUCTURED_REPLY) return this.parseChunkHeader();
    if (magic === Magic.EXTENDED_REPLY) {
      return this.fail('EXTENDED_HEADERS_UNSUPPORTED', 'extended reply header received; extended headers were not negotiated');
    }
    return this.fail('BAD_REPLY_MAGIC', `reply magic 0x${magic.toString(16)} is neither simple nor structured`);
  }

  private parseSimpleReplyHeader(): ServerMessage | undefined {
    if (this.queue.lengthBytes < WireSize.SIMPLE_REPLY_HEADER) return undefined;
    const header = this.queue.consume(WireSize.SIMPLE_REPLY_HEADER);
    const error = header.readUInt32BE(4);
    const cookie = header.readBigUInt64BE(8);
    const framing = this.replies.simpleReply(cookie, error);
    if (framing instanceof ProtocolError) return this.failWith(framing);
    // The spec sends no data after a failed READ's simple reply, nor after other commands'.
    if (!framing.dataFollows) return { kind: 'simpleReply', cookie, error };
    this.pendingCookie = cookie;
    this.pendingLengthBytes = framing.dataBytes;
    this.state = 'simpleReplyData';
    return this.completeSimpleReply();
  }

  private completeSimpleReply(): ServerMessage | undefined {
    if (this.queue.lengthBytes < this.pendingLengthBytes) return undefined;
    this.state = 'replyHeader';
    return { kind: 'simpleReply', cookie: this.pendingCookie, error: 0, data: this.queue.consume(this.pendingLengthBytes) };
  }

  private parseChunkHeader(): ServerMessage | undefined {
    if (this.queue.lengthBytes < WireSize.STRUCTURED_REPLY_HEADER) return undefined;
    const header = this.queue.consume(WireSize.STRUCTURED_REPLY_HEADER);
    const lengthBytes = header.readUInt32BE(16);
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const problem = this.replies.chunkHeader(cookie, flags, type, lengthBytes);
    if (problem !== null) return this.failWith(problem);
    if (lengthBytes > this.maxChunkPayloadBytes) {
      return this.fail('CHUNK_TOO_BIG', `chunk payload of ${lengthBytes} bytes exceeds ${this.maxChunkPayloadBytes}`);
    }
    this.pendingFlags = flags;
    this.pendingReplyType = type;
    this.pendingCookie = cookie;
    this.pendingLengthBytes = lengthBytes;
    this.state = 'chunkPayload';
    return this.completeChunk();
  }

  private completeChunk(): ServerMessage | undefined {
    if (this.queue.lengthBytes < this.pendingLengthBytes) return undefined;
    this.state = 'replyHeader';
    const payload = this.queue.consume(this.pendingLengthBytes);
    const problem = this.replies.chunk(this.pendingCookie, this.pendingFlags, this.pendingReplyType, payload);
    if (problem !== null) return this.failWith(problem);
    return { kind: 'structuredChunk', flags: this.pendingFlags, type: this.pendingReplyType, cookie: this.pendingCookie, payload };
  }

  private requireOptionPhase(method: string): void {
    if (this.state !== 'optionReplyHeader') {
      throw new TypeError(`${method}() called in parser state '${this.state}'`);
    }
  }

  private fail(code: ProtocolErrorCode, message: string): FatalMessage {
    return this.failWith(new ProtocolError(code, message));
  }

  private failWith(error: ProtocolError): FatalMessage {
    this.fatalMessage = { kind: 'fatal', error };
    this.state = 'fatal';
    this.queue.clear();
    this.replies.clear();
    return this.fatalMessage;
  }
}

function limit(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`${what} must be a non-negative safe integer`);
  return value;
}
