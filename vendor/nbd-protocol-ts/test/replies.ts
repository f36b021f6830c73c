// Raw builders of what a server sends in transmission, for the tests of the client's reply
// checks. Unlike the package's serializers they accept any value (offsets past 2^53, lengths
// that disagree with the payload, unknown types), since a hostile server does.
import {
  ClientParser,
  Magic,
  OptionType,
  serializeAckReply,
  serializeGreeting,
  serializeMetaContextReply,
  type ServerMessage,
} from '../src/index.js';

/** A structured reply chunk with any header fields. */
export function rawChunk(cookie: bigint, flags: number, type: number, payload: Buffer, declaredLengthBytes = payload.length): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(Magic.STRUCTURED_REPLY, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeUInt32BE(declaredLengthBytes, 16);
  return Buffer.concat([header, payload]);
}

export function offsetDataPayload(offsetBytes: bigint | number, data: Buffer): Buffer {
  const payload = Buffer.alloc(8 + data.length);
  payload.writeBigUInt64BE(BigInt(offsetBytes), 0);
  data.copy(payload, 8);
  return payload;
}

export function offsetHolePayload(offsetBytes: bigint | number, holeLengthBytes: number): Buffer {
  const payload = Buffer.alloc(12);
  payload.writeBigUInt64BE(BigInt(offsetBytes), 0);
  payload.writeUInt32BE(holeLengthBytes, 8);
  return payload;
}

export function blockStatusPayload(contextId: number, extents: Array<[number, number]>): Buffer {
  const payload = Buffer.alloc(4 + 8 * extents.length);
  payload.writeUInt32BE(contextId, 0);
  extents.forEach(([lengthBytes, flags], index) => {
    payload.writeUInt32BE(lengthBytes, 4 + 8 * index);
    payload.writeUInt32BE(flags, 8 + 8 * index);
  });
  return payload;
}

/** An error chunk payload; the message length field may lie (declaredMessageBytes). */
export function errorPayload(error: number, message: string, options: { offsetBytes?: bigint | number; declaredMessageBytes?: number; trailingBytes?: number } = {}): Buffer {
  const text = Buffer.from(message);
  const offset = options.offsetBytes === undefined ? Buffer.alloc(0) : Buffer.alloc(8);
  if (options.offsetBytes !== undefined) offset.writeBigUInt64BE(BigInt(options.offsetBytes), 0);
  const fields = Buffer.alloc(6);
  fields.writeUInt32BE(error, 0);
  fields.writeUInt16BE(options.declaredMessageBytes ?? text.length, 4);
  return Buffer.concat([fields, text, offset, Buffer.alloc(options.trailingBytes ?? 0)]);
}

export function rawSimpleReply(cookie: bigint, error: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(Magic.SIMPLE_REPLY, 0);
  header.writeUInt32BE(error, 4);
  header.writeBigUInt64BE(cookie, 8);
  return Buffer.concat([header, data]);
}

/** What the server said while negotiating: structured replies, and which context IDs were selected. */
export interface Negotiated {
  structuredReplies: boolean;
  contextIds: number[];
}

/** The server's side of a negotiation that ends with GO: greeting, options agreed, ACK to GO. */
export function negotiationStream(negotiated: Negotiated): Buffer {
  const parts = [serializeGreeting()];
  if (negotiated.structuredReplies) parts.push(serializeAckReply(OptionType.STRUCTURED_REPLY));
  if (negotiated.contextIds.length > 0) {
    for (const id of negotiated.contextIds) parts.push(serializeMetaContextReply(OptionType.SET_META_CONTEXT, id, `x-test:${id}`));
    parts.push(serializeAckReply(OptionType.SET_META_CONTEXT));
  }
  parts.push(serializeAckReply(OptionType.GO));
  return Buffer.concat(parts);
}

/** A ClientParser in transmission after negotiationStream(negotiated). */
export function transmissionClient(negotiated: Negotiated, options: ConstructorParameters<typeof ClientParser>[0] = {}): ClientParser {
  const parser = new ClientParser(options);
  parser.push(negotiationStream(negotiated));
  for (let message = parser.next(); message !== undefined; message = parser.next()) {
    if (message.kind === 'fatal') throw new Error(`negotiation failed: ${message.error.message}`);
    if (message.kind === 'optionReply' && message.option === OptionType.GO) parser.enterTransmission();
  }
  return parser;
}

/** Pushes bytes and collects messages up to and including a fatal one. */
export function feed(parser: ClientParser, ...pieces: Buffer[]): ServerMessage[] {
  const messages: ServerMessage[] = [];
  for (const piece of pieces) {
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      messages.push(message);
      if (message.kind === 'fatal') return messages;
    }
  }
  return messages;
}
