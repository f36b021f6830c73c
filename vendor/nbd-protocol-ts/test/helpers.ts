// Shared test helpers: feeding byte streams to the parsers in pieces,
// collecting their messages, and turning messages into plain values that
// compare by content (Buffers as hex, bigints as strings, errors by code).
import {
  ClientParser,
  type ClientMessage,
  type ExpectedRequest,
  OptionReplyType,
  OptionType,
  ProtocolError,
  ServerParser,
  type ServerMessage,
  type ServerParserOptions,
} from '../src/index.js';

export type Plain = null | boolean | number | string | Plain[] | { [key: string]: Plain };

/** Converts a message into a value tap can compare structurally. */
export function plain(value: unknown): Plain {
  if (value === undefined || value === null) return null;
  if (Buffer.isBuffer(value)) return 'hex:' + value.toString('hex');
  if (typeof value === 'bigint') return 'bigint:' + value.toString();
  if (value instanceof ProtocolError) return { code: value.code };
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'object') {
    const result: { [key: string]: Plain } = {};
    for (const [key, field] of Object.entries(value)) if (field !== undefined) result[key] = plain(field);
    return result;
  }
  return value as Plain;
}

/** Splits `stream` into pieces at the given positions. */
export function splitAt(stream: Buffer, positions: number[]): Buffer[] {
  const pieces: Buffer[] = [];
  let start = 0;
  for (const position of positions) {
    pieces.push(stream.subarray(start, position));
    start = position;
  }
  pieces.push(stream.subarray(start));
  return pieces;
}

export function oneByteAtATime(stream: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  for (let index = 0; index < stream.length; index++) pieces.push(stream.subarray(index, index + 1));
  return pieces;
}

/**
 * Feeds pieces to a fresh ServerParser, calling enterTransmission() after an
 * EXPORT_NAME or GO option as a server would, and returns every message
 * (a fatal message once).
 */
export function parseAsServer(pieces: Buffer[], options: ServerParserOptions = {}): ClientMessage[] {
  const parser = new ServerParser(options);
  const messages: ClientMessage[] = [];
  for (const piece of pieces) {
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      messages.push(message);
      if (message.kind === 'fatal') return messages;
      if (message.kind === 'option' && (message.option === OptionType.EXPORT_NAME || message.option === OptionType.GO)) {
        parser.enterTransmission();
      }
    }
  }
  return messages;
}

export interface ClientScript {
  /** Expect an EXPORT_NAME reply right after the greeting. */
  exportNameReplyAfterGreeting?: { noZeroes: boolean };
  /** Requests registered with expectReply() before any input, as a client sends them. */
  requests?: Array<[bigint, ExpectedRequest]>;
}

/**
 * Feeds pieces to a fresh ClientParser, entering transmission after an ACK
 * to GO as a client would, and returns every message (a fatal one once).
 */
export function parseAsClient(pieces: Buffer[], script: ClientScript = {}): ServerMessage[] {
  const parser = new ClientParser();
  for (const [cookie, request] of script.requests ?? []) parser.expectReply(cookie, request);
  const messages: ServerMessage[] = [];
  for (const piece of pieces) {
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      messages.push(message);
      if (message.kind === 'fatal') return messages;
      if (message.kind === 'greeting' && script.exportNameReplyAfterGreeting !== undefined) {
        parser.expectExportNameReply(script.exportNameReplyAfterGreeting.noZeroes);
      }
      if (message.kind === 'optionReply' && message.option === OptionType.GO && message.replyType === OptionReplyType.ACK) {
        parser.enterTransmission();
      }
    }
  }
  return messages;
}

/** A small deterministic PRNG (mulberry32) so fuzz failures reproduce. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = state;
    mixed = Math.imul(mixed ^ (mixed >>> 15), mixed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}
