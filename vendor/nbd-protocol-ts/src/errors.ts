// The typed error every parser and decoder of this package reports.
// Parsers never throw on input; they return a ProtocolError as a value (in a
// 'fatal' message, or as the result of a payload decoder) so callers handle
// bad peers with ordinary control flow. Codes are stable and documented in
// README.md; a code never changes meaning. Programmer mistakes (bad
// arguments to serializers, calling methods in the wrong phase) throw
// TypeError instead.

export type ProtocolErrorCode =
  /** The greeting did not start with NBDMAGIC + IHAVEOPT. */
  | 'BAD_GREETING_MAGIC'
  /** The server offered oldstyle negotiation, which this codec does not speak. */
  | 'OLDSTYLE_NEGOTIATION'
  /** An option did not start with IHAVEOPT. */
  | 'BAD_OPTION_MAGIC'
  /** An option reply did not start with the option reply magic. */
  | 'BAD_OPTION_REPLY_MAGIC'
  /** A request did not start with the request magic. */
  | 'BAD_REQUEST_MAGIC'
  /** A reply did not start with the simple or structured reply magic. */
  | 'BAD_REPLY_MAGIC'
  /** A 32-byte extended header arrived; that mode is not implemented. */
  | 'EXTENDED_HEADERS_UNSUPPORTED'
  /** An option reply declared more data than the client parser accepts. */
  | 'OPTION_REPLY_TOO_BIG'
  /** A structured chunk declared a payload larger than the client parser accepts. */
  | 'CHUNK_TOO_BIG'
  /** A structured chunk arrived, but structured replies were not negotiated. */
  | 'STRUCTURED_REPLY_NOT_NEGOTIATED'
  /** A reply names a cookie no request in flight has (never sent, or already answered). */
  | 'UNKNOWN_COOKIE'
  /** A reply of a form its request cannot have (a chunk type, a simple reply, a flag). */
  | 'UNEXPECTED_REPLY'
  /** A chunk describes bytes outside its request, or bytes an earlier chunk described. */
  | 'OUT_OF_RANGE'
  /** A reply claimed success without describing everything its request asked for. */
  | 'INCOMPLETE_REPLY'
  /** A READ's chunks left more separate pieces than the client parser tracks. */
  | 'REPLY_TOO_FRAGMENTED'
  /** A declared length runs past the end of the data. */
  | 'TRUNCATED'
  /** Bytes remain after the last field the layout declares. */
  | 'TRAILING_BYTES'
  /** A fixed-size payload has the wrong size for its type. */
  | 'BAD_LENGTH'
  /** A field holds a value the spec forbids (e.g. a zero-length extent). */
  | 'BAD_VALUE'
  /** A string is longer than 4096 bytes. */
  | 'STRING_TOO_LONG'
  /** A string is not valid UTF-8. */
  | 'STRING_NOT_UTF8'
  /** A string contains a NUL byte. */
  | 'STRING_HAS_NUL';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code: ProtocolErrorCode;

  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Narrowing helper for the `T | ProtocolError` results of decoders. */
export function isProtocolError(value: unknown): value is ProtocolError {
  return value instanceof ProtocolError;
}

/** The message both parsers return, forever, once framing is lost. */
export interface FatalMessage {
  kind: 'fatal';
  error: ProtocolError;
}
