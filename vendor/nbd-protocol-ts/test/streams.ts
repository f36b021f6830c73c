// Sample conversations built with this package's serializers, each with the
// messages the opposite parser must produce. Round-trip, fragmentation and
// fuzz tests all start from these, so every message type is covered by all.
import {
  ChunkType,
  ClientFlag,
  CommandFlag,
  CommandType,
  Errno,
  HandshakeFlag,
  InfoType,
  OptionReplyType,
  OptionType,
  ReplyFlag,
  StateFlag,
  TransmissionFlag,
  serializeAbortOption,
  serializeAckReply,
  serializeBlockStatusChunk,
  serializeClientFlags,
  serializeErrorChunk,
  serializeErrorOffsetChunk,
  serializeExportNameOption,
  serializeExportNameReply,
  serializeGoOption,
  serializeGreeting,
  serializeInfoBlockSizeReply,
  serializeInfoDescriptionReply,
  serializeInfoExportReply,
  serializeInfoNameReply,
  serializeInfoOption,
  serializeListMetaContextOption,
  serializeListOption,
  serializeMetaContextReply,
  serializeNoneChunk,
  serializeOffsetDataHeader,
  serializeOffsetHoleChunk,
  serializeOption,
  serializeOptionErrorReply,
  serializeRequestHeader,
  serializeServerReply,
  serializeSetMetaContextOption,
  serializeSimpleReplyHeader,
  serializeStartTlsOption,
  serializeStructuredReplyOption,
  type ExpectedRequest,
  type ServerParserOptions,
  buildInfoOrGoData,
  buildMetaContextData,
  buildInfoExportData,
  buildInfoNameData,
  buildInfoDescriptionData,
  buildInfoBlockSizeData,
  buildServerReplyData,
  buildMetaContextReplyData,
} from '../src/index.js';
import { type ClientScript, type Plain, plain } from './helpers.js';

export interface Conversation {
  name: string;
  stream: Buffer;
  expected: Plain[];
}

export interface ClientConversation extends Conversation {
  script: ClientScript;
}

/** Limits small enough that the oversized cases stay small. */
export const SMALL_LIMITS: ServerParserOptions = { maxOptionDataBytes: 64, maxWritePayloadBytes: 64 };

const EXPORT_SIZE_BYTES = 2 ** 40 + 4096;
const TRANSMISSION_FLAGS =
  TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_DF;
const BLOCK_SIZES = { minimumBytes: 512, preferredBytes: 4096, maximumBytes: 2 ** 25 };

function patterned(lengthBytes: number, seed: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) bytes[index] = (index * 31 + seed) & 0xff;
  return bytes;
}

/** Everything a client sends over a whole GO session, for the ServerParser. */
export function clientSession(): Conversation {
  const writeData = patterned(48, 7);
  const oversizedOptionData = patterned(100, 3);
  const oversizedWriteData = patterned(100, 5);
  const parts: Buffer[] = [];
  const expected: unknown[] = [];
  const add = (bytes: Buffer, ...messages: unknown[]): void => {
    parts.push(bytes);
    expected.push(...messages);
  };
  const flags = ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES;
  add(serializeClientFlags(flags), { kind: 'clientFlags', flags });
  add(serializeListOption(), { kind: 'option', option: OptionType.LIST, data: Buffer.alloc(0) });
  add(serializeStartTlsOption(), { kind: 'option', option: OptionType.STARTTLS, data: Buffer.alloc(0) });
  add(serializeStructuredReplyOption(), { kind: 'option', option: OptionType.STRUCTURED_REPLY, data: Buffer.alloc(0) });
  const infoTypes = [InfoType.NAME, InfoType.DESCRIPTION, InfoType.BLOCK_SIZE];
  add(serializeInfoOption('disk', infoTypes), { kind: 'option', option: OptionType.INFO, data: buildInfoOrGoData('disk', infoTypes) });
  add(serializeListMetaContextOption('disk', ['base:', 'qemu:']), {
    kind: 'option',
    option: OptionType.LIST_META_CONTEXT,
    data: buildMetaContextData('disk', ['base:', 'qemu:']),
  });
  add(serializeSetMetaContextOption('disk', ['base:allocation']), {
    kind: 'option',
    option: OptionType.SET_META_CONTEXT,
    data: buildMetaContextData('disk', ['base:allocation']),
  });
  add(serializeOption(999, Buffer.from('xyz')), { kind: 'option', option: 999, data: Buffer.from('xyz') });
  add(serializeOption(OptionType.INFO, oversizedOptionData), { kind: 'optionTooBig', option: OptionType.INFO, lengthBytes: 100 });
  add(serializeGoOption('disk', [InfoType.BLOCK_SIZE]), {
    kind: 'option',
    option: OptionType.GO,
    data: buildInfoOrGoData('disk', [InfoType.BLOCK_SIZE]),
  });
  const request = (type: number, requestFlags: number, cookie: bigint, offsetBytes: number, lengthBytes: number): unknown => ({
    kind: 'request',
    type,
    flags: requestFlags,
    cookie,
    offsetBytes,
    lengthBytes,
  });
  add(serializeRequestHeader(CommandType.READ, 0, 1n, 0, 4096), request(CommandType.READ, 0, 1n, 0, 4096));
  add(serializeRequestHeader(CommandType.READ, CommandFlag.DF, 2n, EXPORT_SIZE_BYTES - 512, 512), request(CommandType.READ, CommandFlag.DF, 2n, EXPORT_SIZE_BYTES - 512, 512));
  add(Buffer.concat([serializeRequestHeader(CommandType.WRITE, CommandFlag.FUA, 3n, 8192, writeData.length), writeData]), {
    ...(request(CommandType.WRITE, CommandFlag.FUA, 3n, 8192, writeData.length) as object),
    payload: writeData,
  });
  add(serializeRequestHeader(CommandType.WRITE, 0, 4n, 0, 0), { ...(request(CommandType.WRITE, 0, 4n, 0, 0) as object), payload: Buffer.alloc(0) });
  add(Buffer.concat([serializeRequestHeader(CommandType.WRITE, 0, 5n, 0, oversizedWriteData.length), oversizedWriteData]), {
    kind: 'writeTooBig',
    cookie: 5n,
    flags: 0,
    offsetBytes: 0,
    lengthBytes: 100,
  });
  add(serializeRequestHeader(CommandType.FLUSH, 0, 6n, 0, 0), request(CommandType.FLUSH, 0, 6n, 0, 0));
  add(serializeRequestHeader(CommandType.TRIM, 0, 7n, 1024, 2048), request(CommandType.TRIM, 0, 7n, 1024, 2048));
  add(serializeRequestHeader(CommandType.CACHE, 0, 8n, 0, 65536), request(CommandType.CACHE, 0, 8n, 0, 65536));
  const zeroFlags = CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO;
  add(serializeRequestHeader(CommandType.WRITE_ZEROES, zeroFlags, 9n, 4096, 1 << 20), request(CommandType.WRITE_ZEROES, zeroFlags, 9n, 4096, 1 << 20));
  add(serializeRequestHeader(CommandType.BLOCK_STATUS, CommandFlag.REQ_ONE, 10n, 0, 0xffffffff), request(CommandType.BLOCK_STATUS, CommandFlag.REQ_ONE, 10n, 0, 0xffffffff));
  add(serializeRequestHeader(42, 0x8000, 0xffffffffffffffffn, 0, 1), request(42, 0x8000, 0xffffffffffffffffn, 0, 1));
  add(serializeRequestHeader(CommandType.DISC, 0, 11n, 0, 0), request(CommandType.DISC, 0, 11n, 0, 0));
  return { name: 'client GO session', stream: Buffer.concat(parts), expected: expected.map(plain) };
}

/** A client that ends negotiation with EXPORT_NAME, then sends one WRITE. */
export function clientExportNameSession(): Conversation {
  const data = patterned(20, 1);
  const stream = Buffer.concat([
    serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE),
    serializeAbortOption(),
    serializeExportNameOption('vm-disk-ß'),
    serializeRequestHeader(CommandType.WRITE, 0, 77n, 512, data.length),
    data,
  ]);
  const expected = [
    { kind: 'clientFlags', flags: ClientFlag.C_FIXED_NEWSTYLE },
    { kind: 'option', option: OptionType.ABORT, data: Buffer.alloc(0) },
    { kind: 'option', option: OptionType.EXPORT_NAME, data: Buffer.from('vm-disk-ß') },
    { kind: 'request', type: CommandType.WRITE, flags: 0, cookie: 77n, offsetBytes: 512, lengthBytes: 20, payload: data },
  ];
  return { name: 'client EXPORT_NAME session', stream, expected: expected.map(plain) };
}

/** Collects a server's stream and the messages the ClientParser must make of it. */
function serverStream() {
  const parts: Buffer[] = [];
  const expected: unknown[] = [];
  return {
    add(bytes: Buffer, ...messages: unknown[]): void {
      parts.push(bytes);
      expected.push(...messages);
    },
    done(name: string, script: ClientScript): ClientConversation {
      return { name, stream: Buffer.concat(parts), expected: expected.map(plain), script };
    },
  };
}

const optionReply = (option: number, replyType: number, data: Buffer = Buffer.alloc(0)): unknown => ({ kind: 'optionReply', option, replyType, data });
const structuredChunk = (flags: number, type: number, cookie: bigint, payload: Buffer): unknown => ({ kind: 'structuredChunk', flags, type, cookie, payload });

/**
 * Everything a server sends over a whole GO session without structured replies, for the
 * ClientParser: every option reply type, then simple replies (READ data, a failed READ, a WRITE).
 */
export function serverSession(): ClientConversation {
  const readData = patterned(64, 9);
  const { add, done } = serverStream();
  const handshakeFlags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;
  add(serializeGreeting(), { kind: 'greeting', handshakeFlags });
  add(serializeServerReply('disk', 'the main disk'), optionReply(OptionType.LIST, OptionReplyType.SERVER, buildServerReplyData('disk', 'the main disk')));
  add(serializeServerReply('spare'), optionReply(OptionType.LIST, OptionReplyType.SERVER, buildServerReplyData('spare')));
  add(serializeAckReply(OptionType.LIST), optionReply(OptionType.LIST, OptionReplyType.ACK));
  add(serializeOptionErrorReply(OptionType.STARTTLS, OptionReplyType.ERR_POLICY, 'no TLS here'), optionReply(OptionType.STARTTLS, OptionReplyType.ERR_POLICY, Buffer.from('no TLS here')));
  add(serializeInfoExportReply(OptionType.INFO, EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS), optionReply(OptionType.INFO, OptionReplyType.INFO, buildInfoExportData(EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS)));
  add(serializeInfoNameReply(OptionType.INFO, 'disk'), optionReply(OptionType.INFO, OptionReplyType.INFO, buildInfoNameData('disk')));
  add(serializeInfoDescriptionReply(OptionType.INFO, 'über disk'), optionReply(OptionType.INFO, OptionReplyType.INFO, buildInfoDescriptionData('über disk')));
  add(serializeInfoBlockSizeReply(OptionType.INFO, BLOCK_SIZES), optionReply(OptionType.INFO, OptionReplyType.INFO, buildInfoBlockSizeData(BLOCK_SIZES)));
  add(serializeAckReply(OptionType.INFO), optionReply(OptionType.INFO, OptionReplyType.ACK));
  add(serializeMetaContextReply(OptionType.LIST_META_CONTEXT, 0, 'base:allocation'), optionReply(OptionType.LIST_META_CONTEXT, OptionReplyType.META_CONTEXT, buildMetaContextReplyData(0, 'base:allocation')));
  add(serializeAckReply(OptionType.LIST_META_CONTEXT), optionReply(OptionType.LIST_META_CONTEXT, OptionReplyType.ACK));
  add(serializeMetaContextReply(OptionType.SET_META_CONTEXT, 1, 'base:allocation'), optionReply(OptionType.SET_META_CONTEXT, OptionReplyType.META_CONTEXT, buildMetaContextReplyData(1, 'base:allocation')));
  add(serializeAckReply(OptionType.SET_META_CONTEXT), optionReply(OptionType.SET_META_CONTEXT, OptionReplyType.ACK));
  add(serializeOptionErrorReply(999, OptionReplyType.ERR_UNSUP), optionReply(999, OptionReplyType.ERR_UNSUP));
  add(serializeInfoExportReply(OptionType.GO, EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS), optionReply(OptionType.GO, OptionReplyType.INFO, buildInfoExportData(EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS)));
  add(serializeAckReply(OptionType.GO), optionReply(OptionType.GO, OptionReplyType.ACK));
  add(Buffer.concat([serializeSimpleReplyHeader(1n, 0), readData]), { kind: 'simpleReply', cookie: 1n, error: 0, data: readData });
  add(serializeSimpleReplyHeader(2n, Errno.EIO), { kind: 'simpleReply', cookie: 2n, error: Errno.EIO });
  add(serializeSimpleReplyHeader(3n, 0), { kind: 'simpleReply', cookie: 3n, error: 0 });
  return done('server GO session', {
    requests: [
      [1n, { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: readData.length }],
      [2n, { type: CommandType.READ, flags: 0, offsetBytes: 4096, lengthBytes: 4096 }],
      [3n, { type: CommandType.WRITE, flags: 0, offsetBytes: 0, lengthBytes: 512 }],
    ],
  });
}

/** Requests of serverStructuredSession(), as the client registered them. */
export const STRUCTURED_SESSION_REQUESTS: Array<[bigint, ExpectedRequest]> = [
  [4n, { type: CommandType.READ, flags: 0, offsetBytes: 1024, lengthBytes: 33 + 512 }],
  [5n, { type: CommandType.BLOCK_STATUS, flags: 0, offsetBytes: 0, lengthBytes: 8192 }],
  [6n, { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: 4096 }],
  [7n, { type: CommandType.WRITE, flags: 0, offsetBytes: 8192, lengthBytes: 512 }],
  [8n, { type: CommandType.FLUSH, flags: 0, offsetBytes: 0, lengthBytes: 0 }],
];

/**
 * A GO session with structured replies and base:allocation selected: a READ answered in a data
 * chunk, a hole and NONE; BLOCK_STATUS whose last descriptor reaches past the request (allowed);
 * a failed READ; an ERROR_OFFSET inside a WRITE; a simple reply to a FLUSH (allowed).
 */
export function serverStructuredSession(): ClientConversation {
  const chunkData = patterned(33, 2);
  const { add, done } = serverStream();
  const handshakeFlags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;
  add(serializeGreeting(), { kind: 'greeting', handshakeFlags });
  add(serializeAckReply(OptionType.STRUCTURED_REPLY), optionReply(OptionType.STRUCTURED_REPLY, OptionReplyType.ACK));
  add(serializeMetaContextReply(OptionType.SET_META_CONTEXT, 1, 'base:allocation'), optionReply(OptionType.SET_META_CONTEXT, OptionReplyType.META_CONTEXT, buildMetaContextReplyData(1, 'base:allocation')));
  add(serializeAckReply(OptionType.SET_META_CONTEXT), optionReply(OptionType.SET_META_CONTEXT, OptionReplyType.ACK));
  add(serializeInfoExportReply(OptionType.GO, EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS), optionReply(OptionType.GO, OptionReplyType.INFO, buildInfoExportData(EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS)));
  add(serializeAckReply(OptionType.GO), optionReply(OptionType.GO, OptionReplyType.ACK));
  const offsetDataHeader = serializeOffsetDataHeader(4n, 0, 1024, chunkData.length);
  add(Buffer.concat([offsetDataHeader, chunkData]), structuredChunk(0, ChunkType.OFFSET_DATA, 4n, Buffer.concat([offsetDataHeader.subarray(20), chunkData])));
  const hole = serializeOffsetHoleChunk(4n, 0, 1024 + chunkData.length, 512);
  add(hole, structuredChunk(0, ChunkType.OFFSET_HOLE, 4n, hole.subarray(20)));
  add(serializeNoneChunk(4n), structuredChunk(ReplyFlag.DONE, ChunkType.NONE, 4n, Buffer.alloc(0)));
  const extents = [
    { lengthBytes: 4096, flags: 0 },
    { lengthBytes: 65536, flags: StateFlag.HOLE | StateFlag.ZERO },
  ];
  const status = serializeBlockStatusChunk(5n, ReplyFlag.DONE, 1, extents);
  add(status, structuredChunk(ReplyFlag.DONE, ChunkType.BLOCK_STATUS, 5n, status.subarray(20)));
  const error = serializeErrorChunk(6n, ReplyFlag.DONE, Errno.EINVAL, 'bad offset');
  add(error, structuredChunk(ReplyFlag.DONE, ChunkType.ERROR, 6n, error.subarray(20)));
  const errorOffset = serializeErrorOffsetChunk(7n, 0, Errno.EIO, 8192, 'disk error');
  add(errorOffset, structuredChunk(0, ChunkType.ERROR_OFFSET, 7n, errorOffset.subarray(20)));
  add(serializeSimpleReplyHeader(8n, 0), { kind: 'simpleReply', cookie: 8n, error: 0 });
  return done('server GO session with structured replies', { requests: STRUCTURED_SESSION_REQUESTS });
}

/** A server answering EXPORT_NAME, with or without the 124 zero bytes. */
export function serverExportNameSession(noZeroes: boolean): ClientConversation {
  const handshakeFlags = noZeroes ? HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES : HandshakeFlag.FIXED_NEWSTYLE;
  const stream = Buffer.concat([
    serializeGreeting(handshakeFlags),
    serializeExportNameReply(EXPORT_SIZE_BYTES, TRANSMISSION_FLAGS, noZeroes),
    serializeSimpleReplyHeader(9n, 0),
  ]);
  const expected = [
    { kind: 'greeting', handshakeFlags },
    { kind: 'exportNameReply', sizeBytes: EXPORT_SIZE_BYTES, transmissionFlags: TRANSMISSION_FLAGS },
    { kind: 'simpleReply', cookie: 9n, error: 0 },
  ];
  return {
    name: `server EXPORT_NAME session (noZeroes ${noZeroes})`,
    stream,
    expected: expected.map(plain),
    script: { exportNameReplyAfterGreeting: { noZeroes }, requests: [[9n, { type: CommandType.WRITE, flags: 0, offsetBytes: 0, lengthBytes: 512 }]] },
  };
}
