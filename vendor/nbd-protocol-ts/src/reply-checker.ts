// The client's check of every transmission reply against the request it answers (proto.md
// "Simple reply message", "Structured reply chunk message", "Structured reply types" and
// "Request types"). The client registers each request it sends; the ClientParser asks here at
// each reply header and at each complete chunk whether the server kept the spec's rules. A
// breach is fatal: the spec lets a client hard-disconnect on a reply with unexpected type or
// inconsistent contents, and a server that breaks these rules (buggy or hostile) must not make
// the client write outside a READ's buffer, wait for data it cannot frame, or take part of a
// READ for all of it. Internal to the package: ClientParser is its only user.
import { ChunkType, CommandFlag, CommandType, OptionReplyType, OptionType, ProtocolLimit, ReplyFlag, isErrorChunkType, isOptionReplyError } from './constants.js';
import {
  decodeBlockStatusPayload,
  decodeErrorOffsetPayload,
  decodeErrorPayload,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  type BlockStatusPayload,
} from './chunk-payloads.js';
import { ProtocolError, type ProtocolErrorCode } from './errors.js';
import { chunkTypeName, commandTypeName } from './names.js';
import { assertCookie, assertUint16, assertUint32, assertUint64 } from './wire-integers.js';

/** A request as sent, which its reply must match. */
export interface ExpectedRequest {
  /** CommandType. */
  type: number;
  /** Command flags as sent: DF and REQ_ONE change what the reply may hold. */
  flags: number;
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * The most separate pieces a READ's content chunks may leave before they join up. Servers send
 * chunks in order (one piece); a few out of order are fine; thousands of scattered one-byte
 * chunks only cost the client time.
 */
export const READ_REPLY_PIECE_COUNT_MAX = 4096;

/** Fields of an error chunk before its message: error u32, message length u16. */
const ERROR_FIELDS_BYTES = 6;
/** ERROR_OFFSET adds an offset u64 after the message. */
const ERROR_OFFSET_FIELDS_BYTES = 14;
/** OFFSET_DATA: offset u64, then at least one byte of data. */
const OFFSET_DATA_OFFSET_BYTES = 8;
/** OFFSET_HOLE: offset u64, hole size u32. */
const OFFSET_HOLE_PAYLOAD_BYTES = 12;
/** BLOCK_STATUS: context ID u32, then descriptors of length u32 and flags u32. */
const BLOCK_STATUS_CONTEXT_BYTES = 4;
const BLOCK_STATUS_DESCRIPTOR_BYTES = 8;

/** Commands whose ERROR_OFFSET must point inside the request (the rest have no range). */
const rangeCommands: ReadonlySet<number> = new Set([
  CommandType.READ,
  CommandType.WRITE,
  CommandType.TRIM,
  CommandType.CACHE,
  CommandType.WRITE_ZEROES,
  CommandType.BLOCK_STATUS,
]);

/** One byte range [startBytes, endBytes) relative to the request's offset. */
interface Piece {
  startBytes: number;
  endBytes: number;
}

/** A request in flight and what its reply has said so far. */
interface ReplyState {
  readonly request: ExpectedRequest;
  chunkCount: number;
  /** An error chunk arrived: the reply fails, so it need not cover the request. */
  errored: boolean;
  /** READ: the bytes content chunks described, disjoint, sorted, joined where they touch. */
  readonly pieces: Piece[];
  coveredBytes: number;
  contentChunkCount: number;
  /** BLOCK_STATUS: the contexts answered. */
  readonly contextIds: Set<number>;
}

/** How a simple reply is framed: whether READ data follows, and how much. */
export interface SimpleReplyFraming {
  dataFollows: boolean;
  dataBytes: number;
}

export class ReplyChecker {
  private readonly inFlight = new Map<bigint, ReplyState>();
  private structuredReplies = false;
  /** Context IDs of the last SET_META_CONTEXT the server acknowledged. */
  private selectedContextIds = new Set<number>();
  /** Context IDs offered by REP_META_CONTEXT replies to the SET_META_CONTEXT under way. */
  private offeredContextIds = new Set<number>();

  get structuredRepliesNegotiated(): boolean {
    return this.structuredReplies;
  }

  get requestCount(): number {
    return this.inFlight.size;
  }

  expect(cookie: bigint, request: ExpectedRequest): void {
    assertCookie(cookie);
    assertUint16(request.type, 'request type');
    assertUint16(request.flags, 'request flags');
    assertUint64(request.offsetBytes, 'request offsetBytes');
    assertUint32(request.lengthBytes, 'request lengthBytes');
    if (request.type === CommandType.DISC) throw new TypeError('NBD_CMD_DISC has no reply to expect');
    if (this.inFlight.has(cookie)) throw new TypeError(`cookie ${cookie} already has a request in flight`);
    const { type, flags, offsetBytes, lengthBytes } = request;
    this.inFlight.set(cookie, {
      request: { type, flags, offsetBytes, lengthBytes },
      chunkCount: 0,
      errored: false,
      pieces: [],
      coveredBytes: 0,
      contentChunkCount: 0,
      contextIds: new Set(),
    });
  }

  /** Learns from option replies what the server agreed to: structured replies, metadata contexts. */
  noteOptionReply(option: number, replyType: number, data: Buffer): void {
    if (option === OptionType.STRUCTURED_REPLY && replyType === OptionReplyType.ACK) this.structuredReplies = true;
    if (option !== OptionType.SET_META_CONTEXT) return;
    if (replyType === OptionReplyType.META_CONTEXT && data.length >= 4) {
      this.offeredContextIds.add(data.readUInt32BE(0));
    } else if (replyType === OptionReplyType.ACK) {
      this.selectedContextIds = this.offeredContextIds;
      this.offeredContextIds = new Set();
    } else if (isOptionReplyError(replyType)) {
      this.selectedContextIds = new Set();
      this.offeredContextIds = new Set();
    }
  }

  /** STARTTLS resets everything negotiated before it (proto.md "NBD_OPT_STARTTLS"). */
  resetNegotiation(): void {
    this.structuredReplies = false;
    this.selectedContextIds = new Set();
    this.offeredContextIds = new Set();
  }

  clear(): void {
    this.inFlight.clear();
  }

  /** A simple reply header: it ends its request; a successful READ's data follows it. */
  simpleReply(cookie: bigint, error: number): SimpleReplyFraming | ProtocolError {
    const state = this.inFlight.get(cookie);
    if (state === undefined) return unknownCookie('simple reply', cookie);
    const { request } = state;
    const what = describeRequest(cookie, request);
    if (state.chunkCount > 0) return breach('UNEXPECTED_REPLY', `simple reply to ${what}, whose structured reply had begun`);
    if (this.structuredReplies && request.type === CommandType.READ) {
      return breach('UNEXPECTED_REPLY', `simple reply to ${what}, but structured replies were negotiated`);
    }
    if (request.type === CommandType.BLOCK_STATUS && error === 0) {
      return breach('UNEXPECTED_REPLY', `successful simple reply to ${what}, which carries no status`);
    }
    this.inFlight.delete(cookie);
    const dataFollows = request.type === CommandType.READ && error === 0;
    return { dataFollows, dataBytes: dataFollows ? request.lengthBytes : 0 };
  }

  /** A chunk header, checked before its payload is buffered. */
  chunkHeader(cookie: bigint, flags: number, type: number, lengthBytes: number): ProtocolError | null {
    if (!this.structuredReplies) {
      return breach('STRUCTURED_REPLY_NOT_NEGOTIATED', `${chunkTypeName(type)} chunk for cookie ${cookie}, but structured replies were not negotiated`);
    }
    const state = this.inFlight.get(cookie);
    if (state === undefined) return unknownCookie(`${chunkTypeName(type)} chunk`, cookie);
    const what = `${chunkTypeName(type)} chunk of ${lengthBytes} bytes for ${describeRequest(cookie, state.request)}`;
    if (isErrorChunkType(type)) return checkErrorChunkLength(type, lengthBytes, what);
    switch (type) {
      case ChunkType.NONE:
        if (lengthBytes !== 0) return breach('BAD_LENGTH', `${what}: must be empty`);
        if ((flags & ReplyFlag.DONE) === 0) return breach('UNEXPECTED_REPLY', `${what}: NONE must carry DONE`);
        return null;
      case ChunkType.OFFSET_DATA:
        if (state.request.type !== CommandType.READ) return notValidFor(what);
        if (lengthBytes <= OFFSET_DATA_OFFSET_BYTES) return breach('BAD_LENGTH', `${what}: must be at least ${OFFSET_DATA_OFFSET_BYTES + 1}`);
        if (lengthBytes - OFFSET_DATA_OFFSET_BYTES > state.request.lengthBytes) return breach('OUT_OF_RANGE', `${what}: more data than the READ asked for`);
        return null;
      case ChunkType.OFFSET_HOLE:
        if (state.request.type !== CommandType.READ) return notValidFor(what);
        if (lengthBytes !== OFFSET_HOLE_PAYLOAD_BYTES) return breach('BAD_LENGTH', `${what}: must be ${OFFSET_HOLE_PAYLOAD_BYTES}`);
        return null;
      case ChunkType.BLOCK_STATUS: {
        if (state.request.type !== CommandType.BLOCK_STATUS) return notValidFor(what);
        const descriptorBytes = lengthBytes - BLOCK_STATUS_CONTEXT_BYTES;
        if (descriptorBytes < BLOCK_STATUS_DESCRIPTOR_BYTES || descriptorBytes % BLOCK_STATUS_DESCRIPTOR_BYTES !== 0) {
          return breach('BAD_LENGTH', `${what}: must be 4 + a positive multiple of 8`);
        }
        return null;
      }
      default:
        return notValidFor(what);
    }
  }

  /** A complete chunk: its contents must fit its request; DONE ends the request. */
  chunk(cookie: bigint, flags: number, type: number, payload: Buffer): ProtocolError | null {
    const state = this.inFlight.get(cookie);
    if (state === undefined) throw new TypeError(`chunk for cookie ${cookie} whose header was not checked`);
    state.chunkCount++;
    const what = `${chunkTypeName(type)} chunk for ${describeRequest(cookie, state.request)}`;
    const problem = isErrorChunkType(type) ? this.errorChunk(state, type, payload, what) : this.contentChunk(state, type, payload, what);
    if (problem !== null) return problem;
    if ((flags & ReplyFlag.DONE) === 0) return null;
    this.inFlight.delete(cookie);
    return state.errored ? null : this.checkComplete(state, what);
  }

  private errorChunk(state: ReplyState, type: number, payload: Buffer, what: string): ProtocolError | null {
    const decoded = decodeErrorPayload(payload);
    if (decoded instanceof ProtocolError) return breach(decoded.code, `${what}: ${decoded.message}`);
    if (decoded.error === 0) return breach('BAD_VALUE', `${what}: error value zero`);
    const messageEndBytes = ERROR_FIELDS_BYTES + payload.readUInt16BE(4);
    if (type === ChunkType.ERROR && payload.length !== messageEndBytes) {
      return breach('TRAILING_BYTES', `${what}: ${payload.length} bytes, but its message ends at ${messageEndBytes}`);
    }
    if (type === ChunkType.ERROR_OFFSET) {
      const withOffset = decodeErrorOffsetPayload(payload);
      if (withOffset instanceof ProtocolError) return breach(withOffset.code, `${what}: ${withOffset.message}`);
      const { offsetBytes, lengthBytes } = state.request;
      const inside = withOffset.offsetBytes >= offsetBytes && withOffset.offsetBytes < offsetBytes + lengthBytes;
      if (rangeCommands.has(state.request.type) && !inside) {
        return breach('OUT_OF_RANGE', `${what}: error offset ${withOffset.offsetBytes} lies outside the request`);
      }
    }
    // An error type this codec does not know, or one its request cannot have, still fails the
    // request: the spec asks the client to take the reply as errored and go on.
    state.errored = true;
    return null;
  }

  private contentChunk(state: ReplyState, type: number, payload: Buffer, what: string): ProtocolError | null {
    switch (type) {
      case ChunkType.NONE:
        return null;
      case ChunkType.OFFSET_DATA: {
        const decoded = decodeOffsetDataPayload(payload);
        if (decoded instanceof ProtocolError) return breach(decoded.code, `${what}: ${decoded.message}`);
        return this.readContent(state, decoded.offsetBytes, decoded.data.length, what);
      }
      case ChunkType.OFFSET_HOLE: {
        const decoded = decodeOffsetHolePayload(payload);
        if (decoded instanceof ProtocolError) return breach(decoded.code, `${what}: ${decoded.message}`);
        return this.readContent(state, decoded.offsetBytes, decoded.holeLengthBytes, what);
      }
      case ChunkType.BLOCK_STATUS: {
        const decoded = decodeBlockStatusPayload(payload);
        if (decoded instanceof ProtocolError) return breach(decoded.code, `${what}: ${decoded.message}`);
        return this.blockStatus(state, decoded, what);
      }
      default:
        throw new TypeError(`${what}: type passed the header check but has no content rule`);
    }
  }

  /** Content chunks lie inside the READ, overlap nothing before, and at most one with DF. */
  private readContent(state: ReplyState, chunkOffsetBytes: number, chunkLengthBytes: number, what: string): ProtocolError | null {
    const { offsetBytes, lengthBytes, flags } = state.request;
    const range = `${chunkOffsetBytes}+${chunkLengthBytes}`;
    if (!(chunkOffsetBytes >= offsetBytes && chunkOffsetBytes + chunkLengthBytes <= offsetBytes + lengthBytes)) {
      return breach('OUT_OF_RANGE', `${what}: bytes ${range} lie outside the request`);
    }
    state.contentChunkCount++;
    if ((flags & CommandFlag.DF) !== 0 && state.contentChunkCount > 1) return breach('UNEXPECTED_REPLY', `${what}: a second content chunk, but DF was set`);
    const added = addPiece(state.pieces, chunkOffsetBytes - offsetBytes, chunkOffsetBytes - offsetBytes + chunkLengthBytes);
    if (added === 'overlap') return breach('OUT_OF_RANGE', `${what}: bytes ${range} overlap an earlier chunk`);
    if (added === 'too-many') return breach('REPLY_TOO_FRAGMENTED', `${what}: more than ${READ_REPLY_PIECE_COUNT_MAX} separate pieces`);
    state.coveredBytes += chunkLengthBytes;
    return null;
  }

  /**
   * One chunk per selected context; descriptors start at the request's offset, and only the last
   * may reach past its end (with REQ_ONE: exactly one, inside the request).
   */
  private blockStatus(state: ReplyState, payload: BlockStatusPayload, what: string): ProtocolError | null {
    const { contextId, extents } = payload;
    if (!this.selectedContextIds.has(contextId)) return breach('UNEXPECTED_REPLY', `${what}: context ${contextId} was not selected`);
    if (state.contextIds.has(contextId)) return breach('UNEXPECTED_REPLY', `${what}: context ${contextId} answered twice`);
    state.contextIds.add(contextId);
    const { lengthBytes, flags } = state.request;
    if ((flags & CommandFlag.REQ_ONE) !== 0) {
      if (extents.length !== 1) return breach('UNEXPECTED_REPLY', `${what}: ${extents.length} descriptors, but REQ_ONE was set`);
      if (extents[0]!.lengthBytes > lengthBytes) return breach('OUT_OF_RANGE', `${what}: the descriptor reaches past the request`);
      return null;
    }
    let beforeLastBytes = 0;
    for (let index = 0; index < extents.length - 1; index++) beforeLastBytes += extents[index]!.lengthBytes;
    if (extents.length > 1 && beforeLastBytes >= lengthBytes) return breach('OUT_OF_RANGE', `${what}: descriptors continue past the end of the request`);
    return null;
  }

  /** A reply that ends without an error chunk must have answered all of its request. */
  private checkComplete(state: ReplyState, what: string): ProtocolError | null {
    const { request } = state;
    if (request.type === CommandType.READ && state.coveredBytes !== request.lengthBytes) {
      return breach('INCOMPLETE_REPLY', `${what}: done, but chunks described ${state.coveredBytes} of ${request.lengthBytes} bytes`);
    }
    if (request.type === CommandType.BLOCK_STATUS && (state.contextIds.size === 0 || state.contextIds.size !== this.selectedContextIds.size)) {
      return breach('INCOMPLETE_REPLY', `${what}: done, but ${state.contextIds.size} of ${this.selectedContextIds.size} contexts answered`);
    }
    return null;
  }
}

/**
 * Adds [startBytes, endBytes) to sorted, disjoint pieces, joining neighbours it touches. Binary
 * search keeps in-order and out-of-order replies cheap; the count bound keeps hostile ones cheap.
 */
function addPiece(pieces: Piece[], startBytes: number, endBytes: number): 'added' | 'overlap' | 'too-many' {
  // The first piece that ends after the new one starts.
  let low = 0;
  let high = pieces.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (pieces[middle]!.endBytes <= startBytes) low = middle + 1;
    else high = middle;
  }
  const next = pieces[low];
  if (next !== undefined && next.startBytes < endBytes) return 'overlap';
  const previous = pieces[low - 1];
  const joinsPrevious = previous !== undefined && previous.endBytes === startBytes;
  const joinsNext = next !== undefined && next.startBytes === endBytes;
  if (joinsPrevious && joinsNext) {
    previous.endBytes = next.endBytes;
    pieces.splice(low, 1);
  } else if (joinsPrevious) {
    previous.endBytes = endBytes;
  } else if (joinsNext) {
    next.startBytes = startBytes;
  } else {
    if (pieces.length >= READ_REPLY_PIECE_COUNT_MAX) return 'too-many';
    pieces.splice(low, 0, { startBytes, endBytes });
  }
  return 'added';
}

/** Lengths every error chunk of this type must respect, before its payload arrives. */
function checkErrorChunkLength(type: number, lengthBytes: number, what: string): ProtocolError | null {
  const fieldsBytes = type === ChunkType.ERROR_OFFSET ? ERROR_OFFSET_FIELDS_BYTES : ERROR_FIELDS_BYTES;
  if (lengthBytes < fieldsBytes) return breach('BAD_LENGTH', `${what}: shorter than its ${fieldsBytes} bytes of fields`);
  const knownType = type === ChunkType.ERROR || type === ChunkType.ERROR_OFFSET;
  if (knownType && lengthBytes > fieldsBytes + ProtocolLimit.STRING_MAX_BYTES) {
    return breach('CHUNK_TOO_BIG', `${what}: longer than its fields and a ${ProtocolLimit.STRING_MAX_BYTES}-byte message`);
  }
  return null;
}

function describeRequest(cookie: bigint, request: ExpectedRequest): string {
  return `${commandTypeName(request.type)} ${request.offsetBytes}+${request.lengthBytes} (cookie ${cookie})`;
}

function unknownCookie(what: string, cookie: bigint): ProtocolError {
  return breach('UNKNOWN_COOKIE', `${what} for cookie ${cookie}, which no request in flight has`);
}

function notValidFor(what: string): ProtocolError {
  return breach('UNEXPECTED_REPLY', `${what}: not a chunk type this request can have`);
}

function breach(code: ProtocolErrorCode, message: string): ProtocolError {
  return new ProtocolError(code, message);
}
