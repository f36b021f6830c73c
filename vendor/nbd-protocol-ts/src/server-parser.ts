// The server's parser of everything a client sends: client flags, options
// (fixed newstyle haggling) and compact 28-byte requests with WRITE payloads
// (proto.md "Newstyle negotiation", "Fixed newstyle negotiation", "Request
// message"). It is a pull parser: push() stores chunks, next() returns one
// complete message or undefined. Oversized options and WRITEs are reported
// and then streamed past, so one bad request costs an error reply, not the
// connection. Only lost framing (a bad magic) is fatal.
import { ByteQueue } from './byte-queue.js';
import { ClientFlag, CommandType, HandshakeFlag, Magic, ProtocolLimit, WireSize } from './constants.js';
import { type FatalMessage, ProtocolError, type ProtocolErrorCode } from './errors.js';
import { readUint64AsNumber } from './wire-integers.js';

export interface ClientFlagsMessage {
  kind: 'clientFlags';
  flags: number;
}

export interface OptionMessage {
  kind: 'option';
  option: number;
  data: Buffer;
}

export interface OptionTooBigMessage {
  kind: 'optionTooBig';
  option: number;
  lengthBytes: number;
}

export interface RequestMessage {
  kind: 'request';
  type: number;
  flags: number;
  cookie: bigint;
  /** Infinity when the u64 offset exceeds Number.MAX_SAFE_INTEGER. */
  offsetBytes: number;
  lengthBytes: number;
  /** Present exactly when type is WRITE; lengthBytes long. */
  payload?: Buffer;
}

export interface WriteTooBigMessage {
  kind: 'writeTooBig';
  cookie: bigint;
  flags: number;
  offsetBytes: number;
  lengthBytes: number;
}

export type ClientMessage =
  | ClientFlagsMessage
  | OptionMessage
  | OptionTooBigMessage
  | RequestMessage
  | WriteTooBigMessage
  | FatalMessage;

export interface ServerParserOptions {
  /** Largest option data accepted; larger options are skipped (default 65536). */
  maxOptionDataBytes?: number;
  /** Largest WRITE payload accepted; larger ones are skipped (default 2^25). */
  maxWritePayloadBytes?: number;
}

/**
 * The client flags a server must refuse (by dropping the connection): bits
 * the spec does not define, and C_NO_ZEROES when NO_ZEROES was not offered.
 * Returns 0 when the flags are acceptable.
 */
export function unknownClientFlags(flags: number, offeredHandshakeFlags: number): number {
  let allowedFlags: number = ClientFlag.C_FIXED_NEWSTYLE;
  if ((offeredHandshakeFlags & HandshakeFlag.NO_ZEROES) !== 0) allowedFlags |= ClientFlag.C_NO_ZEROES;
  return (flags & ~allowedFlags) >>> 0;
}

type ServerParserState =
  | 'clientFlags'
  | 'optionHeader'
  | 'optionData'
  | 'skipOptionData'
  | 'requestHeader'
  | 'writePayload'
  | 'skipWritePayload'
  | 'fatal';

const IHAVEOPT_HIGH_WORD = Number(Magic.IHAVEOPT >> 32n);
const IHAVEOPT_LOW_WORD = Number(Magic.IHAVEOPT & 0xffffffffn);

export class ServerParser {
  private readonly queue = new ByteQueue();
  private readonly maxOptionDataBytes: number;
  private readonly maxWritePayloadBytes: number;
  private state: ServerParserState = 'clientFlags';
  // The message whose header has been read while its data is still arriving.
  private pendingOption = 0;
  private pendingLengthBytes = 0;
  private pendingFlags = 0;
  private pendingCookie = 0n;
  private pendingOffsetBytes = 0;
  // Bytes still to skip of an oversized option or WRITE payload.
  private skipRemainingBytes = 0;
  private fatalMessage: FatalMessage | undefined;

  constructor(options: ServerParserOptions = {}) {
    this.maxOptionDataBytes = nonNegativeLimit(options.maxOptionDataBytes ?? 65536, 'maxOptionDataBytes');
    this.maxWritePayloadBytes = nonNegativeLimit(
      options.maxWritePayloadBytes ?? ProtocolLimit.PAYLOAD_SAFE_BYTES,
      'maxWritePayloadBytes',
    );
  }

  /** Bytes received and not yet parsed, e.g. to refuse data pipelined before STARTTLS. */
  get bufferedBytes(): number {
    return this.queue.lengthBytes;
  }

  /**
   * The payload length of a WRITE whose header has been read while its
   * payload is still arriving, else 0: a server can reserve room for the
   * payload before reading it.
   */
  get pendingWritePayloadBytes(): number {
    return this.state === 'writePayload' ? this.pendingLengthBytes : 0;
  }

  push(chunk: Buffer): void {
    if (this.state === 'fatal') return;
    this.queue.push(chunk);
  }

  /**
   * Switches from options to requests; call it after answering EXPORT_NAME
   * or acknowledging GO, before calling next() again.
   */
  enterTransmission(): void {
    if (this.state === 'requestHeader' || this.state === 'fatal') return;
    if (this.state !== 'optionHeader') {
      throw new TypeError(`enterTransmission() called in parser state '${this.state}'`);
    }
    this.state = 'requestHeader';
  }

  /**
   * Call after acknowledging STARTTLS, before pushing bytes from the TLS
   * stream. Everything after the ACK must travel over TLS (proto.md "TLS
   * support"), so plaintext the client pipelined after STARTTLS is discarded
   * here; the count is returned so the server can drop such a client.
   * Option haggling goes on with the next option header.
   */
  startTls(): number {
    if (this.state !== 'optionHeader') throw new TypeError(`startTls() called in parser state '${this.state}'`);
    const discardedBytes = this.queue.lengthBytes;
    this.queue.clear();
    return discardedBytes;
  }

  next(): ClientMessage | undefined {
    for (;;) {
      switch (this.state) {
        case 'clientFlags':
          if (this.queue.lengthBytes < WireSize.CLIENT_FLAGS) return undefined;
          this.state = 'optionHeader';
          return { kind: 'clientFlags', flags: this.queue.consume(WireSize.CLIENT_FLAGS).readUInt32BE(0) };
        case 'optionHeader': {
          if (this.queue.lengthBytes < WireSize.OPTION_HEADER) return undefined;
          const message = this.parseOptionHeader();
          if (message !== undefined) return message;
          continue;
        }
        case 'optionData':
          if (this.queue.lengthBytes < this.pendingLengthBytes) return undefined;
          this.state = 'optionHeader';
          return { kind: 'option', option: this.pendingOption, data: this.queue.consume(this.pendingLengthBytes) };
        case 'skipOptionData':
          if (!this.skip()) return undefined;
          this.state = 'optionHeader';
          continue;
        case 'requestHeader':
          if (this.queue.lengthBytes < WireSize.REQUEST_HEADER) return undefined;
          return this.parseRequestHeader();
        case 'writePayload':
          return this.completeWrite();
        case 'skipWritePayload':
          if (!this.skip()) return undefined;
          this.state = 'requestHeader';
          continue;
        case 'fatal':
          return this.fatalMessage;
      }
    }
  }

  // Returns the message to deliver now, or undefined when the option's data
  // must be read first (state switched to 'optionData').
  private parseOptionHeader(): ClientMessage | undefined {
    const header = this.queue.consume(WireSize.OPTION_HEADER);
    if (header.readUInt32BE(0) !== IHAVEOPT_HIGH_WORD || header.readUInt32BE(4) !== IHAVEOPT_LOW_WORD) {
      return this.fail('BAD_OPTION_MAGIC', `option magic 0x${header.toString('hex', 0, 8)} is not IHAVEOPT`);
    }
    const option = header.readUInt32BE(8);
    const lengthBytes = header.readUInt32BE(12);
    if (lengthBytes > this.maxOptionDataBytes) {
      this.skipRemainingBytes = lengthBytes;
      this.state = 'skipOptionData';
      return { kind: 'optionTooBig', option, lengthBytes };
    }
    this.pendingOption = option;
    this.pendingLengthBytes = lengthBytes;
    this.state = 'optionData';
    return undefined;
  }

  private parseRequestHeader(): ClientMessage | undefined {
    const magic = this.queue.peekUint32();
    if (magic !== Magic.REQUEST) {
      if (magic === Magic.EXTENDED_REQUEST) {
        return this.fail('EXTENDED_HEADERS_UNSUPPORTED', 'extended request header received; extended headers were not negotiated');
      }
      return this.fail('BAD_REQUEST_MAGIC', `request magic 0x${magic.toString(16)} is not 0x25609513`);
    }
    const header = this.queue.consume(WireSize.REQUEST_HEADER);
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = header.readBigUInt64BE(8);
    const offsetBytes = readUint64AsNumber(header, 16);
    const lengthBytes = header.readUInt32BE(24);
    if (type !== CommandType.WRITE) {
      return { kind: 'request', type, flags, cookie, offsetBytes, lengthBytes };
    }
    if (lengthBytes > this.maxWritePayloadBytes) {
      this.skipRemainingBytes = lengthBytes;
      this.state = 'skipWritePayload';
      return { kind: 'writeTooBig', cookie, flags, offsetBytes, lengthBytes };
    }
    this.pendingFlags = flags;
    this.pendingCookie = cookie;
    this.pendingOffsetBytes = offsetBytes;
    this.pendingLengthBytes = lengthBytes;
    this.state = 'writePayload';
    return this.completeWrite();
  }

  // The WRITE is delivered only once its whole payload is queued, so the
  // payload is one contiguous Buffer (a view when it arrived in one chunk).
  private completeWrite(): RequestMessage | undefined {
    const lengthBytes = this.pendingLengthBytes;
    if (this.queue.lengthBytes < lengthBytes) return undefined;
    this.state = 'requestHeader';
    return {
      kind: 'request',
      type: CommandType.WRITE,
      flags: this.pendingFlags,
      cookie: this.pendingCookie,
      offsetBytes: this.pendingOffsetBytes,
      lengthBytes,
      payload: this.queue.consume(lengthBytes),
    };
  }

  // Discards what has arrived of the bytes being skipped; true when done.
  private skip(): boolean {
    this.skipRemainingBytes -= this.queue.discard(this.skipRemainingBytes);
    return this.skipRemainingBytes === 0;
  }

  private fail(code: ProtocolErrorCode, message: string): FatalMessage {
    this.fatalMessage = { kind: 'fatal', error: new ProtocolError(code, message) };
    this.state = 'fatal';
    this.queue.clear();
    return this.fatalMessage;
  }
}

function nonNegativeLimit(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`${what} must be a non-negative safe integer`);
  return value;
}
