// Decoders of structured reply chunk payloads, for clients (proto.md
// "Structured reply types"). The chunk header is self-describing, so the
// ClientParser hands over raw payloads and the caller decodes the types it
// expects. Every size rule the spec states is checked, since the spec lets
// a client hard-disconnect on inconsistent chunks and it must know when.
import { ProtocolLimit } from './constants.js';
import { ProtocolError } from './errors.js';
import { decodeText } from './protocol-string.js';
import { readUint64AsNumber } from './wire-integers.js';

export interface OffsetDataPayload {
  offsetBytes: number;
  /** View of the payload after the offset: no copy. */
  data: Buffer;
}

export interface OffsetHolePayload {
  offsetBytes: number;
  holeLengthBytes: number;
}

export interface BlockStatusExtent {
  lengthBytes: number;
  /** Status flags as defined by the metadata context (StateFlag for base:allocation). */
  flags: number;
}

export interface BlockStatusPayload {
  contextId: number;
  extents: BlockStatusExtent[];
}

export interface ErrorPayload {
  error: number;
  message: string;
}

export interface ErrorOffsetPayload extends ErrorPayload {
  offsetBytes: number;
}

export function decodeOffsetDataPayload(payload: Buffer): OffsetDataPayload | ProtocolError {
  if (payload.length < 9) return badLength(`OFFSET_DATA payload of ${payload.length} bytes is shorter than 9`);
  return { offsetBytes: readUint64AsNumber(payload, 0), data: payload.subarray(8) };
}

export function decodeOffsetHolePayload(payload: Buffer): OffsetHolePayload | ProtocolError {
  if (payload.length !== 12) return badLength(`OFFSET_HOLE payload is ${payload.length} bytes, must be 12`);
  const holeLengthBytes = payload.readUInt32BE(8);
  if (holeLengthBytes === 0) return new ProtocolError('BAD_VALUE', 'OFFSET_HOLE hole size is zero');
  return { offsetBytes: readUint64AsNumber(payload, 0), holeLengthBytes };
}

export function decodeBlockStatusPayload(payload: Buffer): BlockStatusPayload | ProtocolError {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
    return badLength(`BLOCK_STATUS payload of ${payload.length} bytes is not 4 + a positive multiple of 8`);
  }
  const extents: BlockStatusExtent[] = [];
  for (let positionBytes = 4; positionBytes < payload.length; positionBytes += 8) {
    const lengthBytes = payload.readUInt32BE(positionBytes);
    if (lengthBytes === 0) return new ProtocolError('BAD_VALUE', `BLOCK_STATUS extent ${extents.length} has length zero`);
    extents.push({ lengthBytes, flags: payload.readUInt32BE(positionBytes + 4) });
  }
  return { contextId: payload.readUInt32BE(0), extents };
}

/**
 * Decodes the error value and message shared by every error chunk type
 * (ERROR, ERROR_OFFSET, and unknown types with bit 15 set). The message is
 * decoded leniently; a message that does not fit the payload is an error.
 */
export function decodeErrorPayload(payload: Buffer): ErrorPayload | ProtocolError {
  if (payload.length < 6) return badLength(`error chunk payload of ${payload.length} bytes is shorter than 6`);
  const messageLengthBytes = payload.readUInt16BE(4);
  if (messageLengthBytes > payload.length - 6) {
    return new ProtocolError('TRUNCATED', `error message length ${messageLengthBytes} runs past the chunk`);
  }
  if (messageLengthBytes > ProtocolLimit.STRING_MAX_BYTES) {
    return new ProtocolError('STRING_TOO_LONG', `error message of ${messageLengthBytes} bytes exceeds ${ProtocolLimit.STRING_MAX_BYTES}`);
  }
  return { error: payload.readUInt32BE(0), message: decodeText(payload, 6, 6 + messageLengthBytes) };
}

export function decodeErrorOffsetPayload(payload: Buffer): ErrorOffsetPayload | ProtocolError {
  if (payload.length < 14) return badLength(`ERROR_OFFSET payload of ${payload.length} bytes is shorter than 14`);
  const common = decodeErrorPayload(payload);
  if (common instanceof ProtocolError) return common;
  const offsetPositionBytes = 6 + payload.readUInt16BE(4);
  if (payload.length !== offsetPositionBytes + 8) {
    return badLength(`ERROR_OFFSET payload is ${payload.length} bytes, must be ${offsetPositionBytes + 8}`);
  }
  return { ...common, offsetBytes: readUint64AsNumber(payload, offsetPositionBytes) };
}

function badLength(message: string): ProtocolError {
  return new ProtocolError('BAD_LENGTH', message);
}
