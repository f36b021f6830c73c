// What a server sends during transmission: simple reply headers and
// structured reply chunks (proto.md "Simple reply message", "Structured
// reply chunk message", "Structured reply types"). This is the hot path, so
// bulk data is never copied here: the READ reply functions return only the
// header, and the caller writes its data buffer right after it.
import { ChunkType, Magic, ProtocolLimit, ReplyFlag, WireSize } from './constants.js';
import { encodeText } from './protocol-string.js';
import { assertCookie, assertUint16, assertUint32, assertUint64, writeUint64FromNumber } from './wire-integers.js';

/** 16 bytes: magic, error, cookie. For a successful READ, the data follows. */
export function serializeSimpleReplyHeader(cookie: bigint, error: number): Buffer {
  assertCookie(cookie);
  assertUint32(error, 'error');
  const header = Buffer.allocUnsafe(WireSize.SIMPLE_REPLY_HEADER);
  header.writeUInt32BE(Magic.SIMPLE_REPLY, 0);
  header.writeUInt32BE(error, 4);
  header.writeBigUInt64BE(cookie, 8);
  return header;
}

/** 20 bytes: magic, flags, type, cookie, payload length; the payload follows. */
export function serializeStructuredChunkHeader(
  cookie: bigint,
  flags: number,
  type: number,
  payloadLengthBytes: number,
): Buffer {
  const chunk = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER);
  writeChunkHeader(chunk, cookie, flags, type, payloadLengthBytes);
  return chunk;
}

/** The NONE chunk; the spec requires DONE on it, so the flag is always set. */
export function serializeNoneChunk(cookie: bigint): Buffer {
  return serializeStructuredChunkHeader(cookie, ReplyFlag.DONE, ChunkType.NONE, 0);
}

/**
 * 28 bytes: chunk header and u64 offset of an OFFSET_DATA chunk. The caller
 * writes `dataLengthBytes` bytes of data right after it.
 */
export function serializeOffsetDataHeader(
  cookie: bigint,
  flags: number,
  offsetBytes: number,
  dataLengthBytes: number,
): Buffer {
  assertUint64(offsetBytes, 'offsetBytes');
  // The chunk length (8 + data) must fit a u32 and data must be non-empty.
  if (!Number.isInteger(dataLengthBytes) || dataLengthBytes < 1 || dataLengthBytes > ProtocolLimit.UINT32_MAX - 8) {
    throw new TypeError(`dataLengthBytes must be in 1..${ProtocolLimit.UINT32_MAX - 8}, got ${dataLengthBytes}`);
  }
  const header = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER + 8);
  writeChunkHeader(header, cookie, flags, ChunkType.OFFSET_DATA, 8 + dataLengthBytes);
  writeUint64FromNumber(header, offsetBytes, 20);
  return header;
}

/** 32 bytes: an OFFSET_HOLE chunk (u64 offset, u32 nonzero hole size). */
export function serializeOffsetHoleChunk(
  cookie: bigint,
  flags: number,
  offsetBytes: number,
  holeLengthBytes: number,
): Buffer {
  assertUint64(offsetBytes, 'offsetBytes');
  assertUint32(holeLengthBytes, 'holeLengthBytes');
  if (holeLengthBytes === 0) throw new TypeError('holeLengthBytes must be nonzero');
  const chunk = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER + 12);
  writeChunkHeader(chunk, cookie, flags, ChunkType.OFFSET_HOLE, 12);
  writeUint64FromNumber(chunk, offsetBytes, 20);
  chunk.writeUInt32BE(holeLengthBytes, 28);
  return chunk;
}

/** A BLOCK_STATUS chunk: u32 context id, then one (u32 length, u32 flags) per extent. */
export function serializeBlockStatusChunk(
  cookie: bigint,
  flags: number,
  contextId: number,
  extents: ReadonlyArray<{ readonly lengthBytes: number; readonly flags: number }>,
): Buffer {
  assertUint32(contextId, 'contextId');
  if (extents.length === 0) throw new TypeError('a BLOCK_STATUS chunk needs at least one extent');
  const payloadLengthBytes = 4 + extents.length * 8;
  const chunk = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER + payloadLengthBytes);
  writeChunkHeader(chunk, cookie, flags, ChunkType.BLOCK_STATUS, payloadLengthBytes);
  chunk.writeUInt32BE(contextId, 20);
  let positionBytes = 24;
  for (const extent of extents) {
    assertUint32(extent.lengthBytes, 'extent lengthBytes');
    if (extent.lengthBytes === 0) throw new TypeError('extent lengthBytes must be nonzero');
    assertUint32(extent.flags, 'extent flags');
    chunk.writeUInt32BE(extent.lengthBytes, positionBytes);
    chunk.writeUInt32BE(extent.flags, positionBytes + 4);
    positionBytes += 8;
  }
  return chunk;
}

/**
 * An ERROR chunk: u32 error, u16 message length, message. The message is
 * cleaned of NULs and cut to 4096 bytes on a character boundary.
 */
export function serializeErrorChunk(cookie: bigint, flags: number, error: number, message = ''): Buffer {
  const text = encodeChunkErrorFields(error, message);
  const chunk = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER + 6 + text.length);
  writeChunkHeader(chunk, cookie, flags, ChunkType.ERROR, 6 + text.length);
  writeErrorFields(chunk, error, text);
  return chunk;
}

/** An ERROR_OFFSET chunk: the ERROR fields followed by the u64 offset of the failure. */
export function serializeErrorOffsetChunk(
  cookie: bigint,
  flags: number,
  error: number,
  offsetBytes: number,
  message = '',
): Buffer {
  assertUint64(offsetBytes, 'offsetBytes');
  const text = encodeChunkErrorFields(error, message);
  const chunk = Buffer.allocUnsafe(WireSize.STRUCTURED_REPLY_HEADER + 14 + text.length);
  writeChunkHeader(chunk, cookie, flags, ChunkType.ERROR_OFFSET, 14 + text.length);
  writeErrorFields(chunk, error, text);
  writeUint64FromNumber(chunk, offsetBytes, 26 + text.length);
  return chunk;
}

function writeChunkHeader(chunk: Buffer, cookie: bigint, flags: number, type: number, payloadLengthBytes: number): void {
  assertCookie(cookie);
  assertUint16(flags, 'flags');
  assertUint16(type, 'type');
  assertUint32(payloadLengthBytes, 'payloadLengthBytes');
  chunk.writeUInt32BE(Magic.STRUCTURED_REPLY, 0);
  chunk.writeUInt16BE(flags, 4);
  chunk.writeUInt16BE(type, 6);
  chunk.writeBigUInt64BE(cookie, 8);
  chunk.writeUInt32BE(payloadLengthBytes, 16);
}

function encodeChunkErrorFields(error: number, message: string): Buffer {
  assertUint32(error, 'error');
  // The spec requires a nonzero error in error chunks.
  if (error === 0) throw new TypeError('an error chunk needs a nonzero error');
  return encodeText(message);
}

function writeErrorFields(chunk: Buffer, error: number, text: Buffer): void {
  chunk.writeUInt32BE(error, 20);
  chunk.writeUInt16BE(text.length, 24);
  text.copy(chunk, 26);
}
