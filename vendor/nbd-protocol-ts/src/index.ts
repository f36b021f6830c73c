// The public entry of nbd-protocol-ts: the NBD fixed-newstyle codec with no
// I/O. Everything a caller may use is re-exported here and listed in
// README.md; other modules are internal.
export * from './constants.js';
export * from './names.js';
export { ProtocolError, isProtocolError, type FatalMessage, type ProtocolErrorCode } from './errors.js';
export { ByteQueue } from './byte-queue.js';
export { readUint64AsNumber } from './wire-integers.js';
export {
  ServerParser,
  unknownClientFlags,
  type ClientFlagsMessage,
  type ClientMessage,
  type OptionMessage,
  type OptionTooBigMessage,
  type RequestMessage,
  type ServerParserOptions,
  type WriteTooBigMessage,
} from './server-parser.js';
export {
  ClientParser,
  type ClientParserOptions,
  type ExportNameReplyMessage,
  type GreetingMessage,
  type OptionReplyMessage,
  type ServerMessage,
  type SimpleReplyMessage,
  type StructuredChunkMessage,
} from './client-parser.js';
export { READ_REPLY_PIECE_COUNT_MAX, type ExpectedRequest } from './reply-checker.js';
export * from './option-data.js';
export * from './option-reply-data.js';
export * from './chunk-payloads.js';
export * from './server-handshake-serializers.js';
export * from './server-reply-serializers.js';
export * from './client-serializers.js';
