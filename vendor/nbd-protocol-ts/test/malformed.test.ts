// Malformed input: every case yields a typed value (a message or a
// ProtocolError), never an exception, and the cases the spec lets a server
// survive (oversized option or WRITE, unknown command, out-of-range offset)
// leave the connection parseable for the next message.
import t from 'tap';
import {
  ChunkType,
  ClientFlag,
  ClientParser,
  CommandType,
  Magic,
  OptionType,
  ProtocolError,
  ServerParser,
  parseInfoOrGoData,
  parseMetaContextData,
  parseExportNameData,
  serializeAckReply,
  serializeClientFlags,
  serializeGreeting,
  serializeOption,
  serializeRequestHeader,
  serializeStructuredChunkHeader,
  decodeBlockStatusPayload,
  decodeErrorOffsetPayload,
  decodeErrorPayload,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  decodeServerReplyData,
} from '../src/index.js';
import { parseAsServer, plain } from './helpers.js';

function transmissionParser(options = {}): ServerParser {
  const parser = new ServerParser(options);
  parser.push(Buffer.concat([serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE), serializeOption(OptionType.GO, Buffer.alloc(6))]));
  parser.next();
  parser.next();
  parser.enterTransmission();
  return parser;
}

function codeOf(value: unknown): string | undefined {
  return value instanceof ProtocolError ? value.code : undefined;
}

t.test('bad request magic is fatal, sticky, and ignores further input', async (t) => {
  const parser = transmissionParser();
  const header = serializeRequestHeader(CommandType.READ, 0, 1n, 0, 512);
  header.writeUInt32BE(0x12560953, 0);
  parser.push(header);
  const fatal = parser.next();
  t.equal(fatal?.kind, 'fatal');
  t.equal(fatal?.kind === 'fatal' ? fatal.error.code : undefined, 'BAD_REQUEST_MAGIC');
  parser.push(serializeRequestHeader(CommandType.READ, 0, 2n, 0, 512));
  t.equal(parser.next(), fatal, 'the same fatal message again');
  t.equal(parser.bufferedBytes, 0, 'input after fatal is dropped');
});

t.test('extended request header is reported as unsupported', async (t) => {
  const parser = transmissionParser();
  const header = Buffer.alloc(32);
  header.writeUInt32BE(Magic.EXTENDED_REQUEST, 0);
  parser.push(header);
  const message = parser.next();
  t.equal(message?.kind === 'fatal' ? message.error.code : undefined, 'EXTENDED_HEADERS_UNSUPPORTED');
});

t.test('bad option magic is fatal', async (t) => {
  const option = serializeOption(OptionType.LIST);
  option.write('IHAVEOPX', 0, 'latin1');
  const messages = parseAsServer([serializeClientFlags(1), option, serializeOption(OptionType.LIST)]);
  t.same(messages.map(plain), [{ kind: 'clientFlags', flags: 1 }, { kind: 'fatal', error: { code: 'BAD_OPTION_MAGIC' } }]);
});

t.test('unknown command and unknown flags come through as a request', async (t) => {
  const parser = transmissionParser();
  parser.push(serializeRequestHeader(200, 0xffff, 3n, 0, 4096));
  parser.push(serializeRequestHeader(CommandType.FLUSH, 0, 4n, 0, 0));
  t.same(plain(parser.next()), plain({ kind: 'request', type: 200, flags: 0xffff, cookie: 3n, offsetBytes: 0, lengthBytes: 4096 }));
  t.same(plain(parser.next()), plain({ kind: 'request', type: CommandType.FLUSH, flags: 0, cookie: 4n, offsetBytes: 0, lengthBytes: 0 }));
});

t.test('WRITE over the limit is reported, skipped as it streams in, and the next request parses', async (t) => {
  const parser = transmissionParser({ maxWritePayloadBytes: 1024 });
  parser.push(serializeRequestHeader(CommandType.WRITE, 1, 5n, 4096, 1_000_000));
  t.same(plain(parser.next()), plain({ kind: 'writeTooBig', cookie: 5n, flags: 1, offsetBytes: 4096, lengthBytes: 1_000_000 }));
  // The payload arrives in pieces; the parser must not hold on to it.
  for (let sentBytes = 0; sentBytes < 1_000_000; sentBytes += 100_000) {
    parser.push(Buffer.alloc(100_000, 0xee));
    t.equal(parser.next(), undefined);
    t.equal(parser.bufferedBytes, 0, 'discarded, not buffered');
  }
  parser.push(serializeRequestHeader(CommandType.READ, 0, 6n, 0, 512));
  t.same(plain(parser.next()), plain({ kind: 'request', type: CommandType.READ, flags: 0, cookie: 6n, offsetBytes: 0, lengthBytes: 512 }));
});

t.test('option over the limit is reported, skipped as it streams in, and the next option parses', async (t) => {
  const parser = new ServerParser({ maxOptionDataBytes: 16 });
  parser.push(serializeClientFlags(1));
  t.equal(parser.next()?.kind, 'clientFlags');
  const oversized = serializeOption(OptionType.INFO, Buffer.alloc(5000, 1));
  parser.push(oversized.subarray(0, 100));
  t.same(parser.next(), { kind: 'optionTooBig', option: OptionType.INFO, lengthBytes: 5000 });
  t.equal(parser.next(), undefined);
  t.equal(parser.bufferedBytes, 0, 'what arrived of the option is discarded, not buffered');
  parser.push(oversized.subarray(100));
  t.equal(parser.next(), undefined);
  parser.push(serializeOption(OptionType.LIST));
  t.same(plain(parser.next()), plain({ kind: 'option', option: OptionType.LIST, data: Buffer.alloc(0) }));
});

t.test('u64 offset above 2^53 is reported as Infinity, and parsing continues', async (t) => {
  const parser = transmissionParser();
  const header = serializeRequestHeader(CommandType.WRITE, 0, 7n, 0, 4);
  header.writeBigUInt64BE(2n ** 53n, 16);
  parser.push(Buffer.concat([header, Buffer.from('abcd'), serializeRequestHeader(CommandType.READ, 0, 8n, 2 ** 53 - 1, 1)]));
  const write = parser.next();
  t.equal(write?.kind === 'request' ? write.offsetBytes : undefined, Infinity);
  t.equal(write?.kind === 'request' ? write.payload?.toString() : undefined, 'abcd');
  const read = parser.next();
  t.equal(read?.kind === 'request' ? read.offsetBytes : undefined, 2 ** 53 - 1, 'largest safe offset is exact');
});

t.test('enterTransmission in the middle of an option is a TypeError', async (t) => {
  const parser = new ServerParser();
  t.throws(() => parser.enterTransmission(), TypeError, 'before client flags');
  parser.push(Buffer.concat([serializeClientFlags(1), serializeOption(OptionType.GO, Buffer.alloc(6)).subarray(0, 18)]));
  parser.next();
  t.equal(parser.next(), undefined);
  t.throws(() => parser.enterTransmission(), TypeError, 'while option data is arriving');
});

t.test('INFO/GO data with inconsistent lengths', async (t) => {
  const build = (nameLengthBytes: number, name: Buffer, count: number, list: number[]): Buffer => {
    const data = Buffer.alloc(4 + name.length + 2 + list.length * 2);
    data.writeUInt32BE(nameLengthBytes, 0);
    name.copy(data, 4);
    data.writeUInt16BE(count, 4 + name.length);
    list.forEach((infoType, index) => data.writeUInt16BE(infoType, 6 + name.length + index * 2));
    return data;
  };
  t.equal(codeOf(parseInfoOrGoData(Buffer.alloc(5))), 'TRUNCATED', 'shorter than the fixed fields');
  t.equal(codeOf(parseInfoOrGoData(build(10, Buffer.from('disk'), 0, []))), 'TRUNCATED', 'name length past the end');
  t.equal(codeOf(parseInfoOrGoData(build(4, Buffer.from('disk'), 3, [1, 2]))), 'TRUNCATED', 'count larger than the list');
  t.equal(codeOf(parseInfoOrGoData(build(4, Buffer.from('disk'), 1, [1, 2]))), 'TRAILING_BYTES', 'count smaller than the list');
  t.equal(codeOf(parseInfoOrGoData(build(4, Buffer.from([0x64, 0xff, 0x73, 0x6b]), 0, []))), 'STRING_NOT_UTF8');
  t.equal(codeOf(parseInfoOrGoData(build(4, Buffer.from([0x64, 0x00, 0x73, 0x6b]), 0, []))), 'STRING_HAS_NUL');
  t.equal(codeOf(parseInfoOrGoData(build(4097, Buffer.alloc(4097, 0x61), 0, []))), 'STRING_TOO_LONG');
  t.same(parseInfoOrGoData(build(0, Buffer.alloc(0), 0, [])), { exportName: '', infoTypes: [] }, 'default export, no requests');
});

t.test('meta context data with inconsistent lengths', async (t) => {
  const header = (name: string, count: number): Buffer => {
    const data = Buffer.alloc(8 + name.length);
    data.writeUInt32BE(name.length, 0);
    data.write(name, 4);
    data.writeUInt32BE(count, 4 + name.length);
    return data;
  };
  const query = (text: string, declaredLengthBytes = text.length): Buffer => {
    const data = Buffer.alloc(4 + text.length);
    data.writeUInt32BE(declaredLengthBytes, 0);
    data.write(text, 4);
    return data;
  };
  t.equal(codeOf(parseMetaContextData(Buffer.alloc(7))), 'TRUNCATED');
  t.equal(codeOf(parseMetaContextData(header('d', 2))), 'TRUNCATED', 'missing queries');
  t.equal(codeOf(parseMetaContextData(Buffer.concat([header('d', 1), query('base:', 9)]))), 'TRUNCATED', 'query length past the end');
  t.equal(codeOf(parseMetaContextData(Buffer.concat([header('d', 0xffffffff), query('base:')]))), 'TRUNCATED', 'huge count');
  t.equal(codeOf(parseMetaContextData(Buffer.concat([header('d', 1), query('base:'), Buffer.from([1])]))), 'TRAILING_BYTES');
  t.equal(codeOf(parseMetaContextData(Buffer.concat([header('d', 1), query('ba\0e:')]))), 'STRING_HAS_NUL');
  const tooLongName = Buffer.alloc(4 + 1 + 4);
  tooLongName.writeUInt32BE(2, 0);
  t.equal(codeOf(parseMetaContextData(tooLongName)), 'TRUNCATED', 'name length past the fixed fields');
  t.same(parseMetaContextData(Buffer.concat([header('d', 1), query('base:')])), { exportName: 'd', queries: ['base:'] });
});

t.test('EXPORT_NAME data is validated as a string', async (t) => {
  t.equal(codeOf(parseExportNameData(Buffer.from([0xc3]))), 'STRING_NOT_UTF8');
  t.equal(codeOf(parseExportNameData(Buffer.from('a\0b'))), 'STRING_HAS_NUL');
  t.equal(codeOf(parseExportNameData(Buffer.alloc(5000, 0x61))), 'STRING_TOO_LONG');
  t.same(parseExportNameData(Buffer.alloc(4096, 0x61)), { exportName: 'a'.repeat(4096) });
});

t.test('client-side decoders reject inconsistent payloads', async (t) => {
  t.equal(codeOf(decodeServerReplyData(Buffer.from([0, 0, 0, 9, 0x61]))), 'TRUNCATED');
  t.equal(codeOf(decodeInfoReplyData(Buffer.from([0]))), 'TRUNCATED');
  t.equal(codeOf(decodeInfoReplyData(Buffer.from([0, 0, 1, 2, 3]))), 'BAD_LENGTH', 'INFO_EXPORT not 12 bytes');
  t.equal(codeOf(decodeInfoReplyData(Buffer.from([0, 3, 0, 0]))), 'BAD_LENGTH', 'INFO_BLOCK_SIZE not 14 bytes');
  t.equal(codeOf(decodeInfoReplyData(Buffer.from([0, 1, 0xff]))), 'STRING_NOT_UTF8');
  t.equal(codeOf(decodeMetaContextReplyData(Buffer.from([0, 0]))), 'TRUNCATED');
  t.equal(codeOf(decodeOffsetDataPayload(Buffer.alloc(8))), 'BAD_LENGTH', 'OFFSET_DATA without data');
  t.equal(codeOf(decodeOffsetHolePayload(Buffer.alloc(11))), 'BAD_LENGTH');
  t.equal(codeOf(decodeOffsetHolePayload(Buffer.alloc(12))), 'BAD_VALUE', 'zero hole size');
  t.equal(codeOf(decodeBlockStatusPayload(Buffer.alloc(4))), 'BAD_LENGTH', 'no extents');
  t.equal(codeOf(decodeBlockStatusPayload(Buffer.alloc(13))), 'BAD_LENGTH', 'partial extent');
  t.equal(codeOf(decodeBlockStatusPayload(Buffer.alloc(12))), 'BAD_VALUE', 'zero-length extent');
  const error = Buffer.from([0, 0, 0, 5, 0, 10, 0x61]);
  t.equal(codeOf(decodeErrorPayload(error)), 'TRUNCATED', 'message length past the chunk');
  const errorOffset = Buffer.alloc(15);
  errorOffset.writeUInt32BE(5, 0);
  t.equal(codeOf(decodeErrorOffsetPayload(errorOffset)), 'BAD_LENGTH', 'byte between message and offset');
  const bigOffset = Buffer.alloc(14);
  bigOffset.writeUInt32BE(5, 0);
  bigOffset.writeBigUInt64BE(2n ** 63n, 6);
  t.same(decodeErrorOffsetPayload(bigOffset), { error: 5, message: '', offsetBytes: Infinity });
});

t.test('client parser fatal cases', async (t) => {
  const fatalCode = (bytes: Buffer, setup: (parser: ClientParser) => void = () => {}): string | undefined => {
    const parser = new ClientParser({ maxOptionReplyDataBytes: 100, maxChunkPayloadBytes: 100 });
    setup(parser);
    parser.push(bytes);
    let message = parser.next();
    while (message !== undefined && message.kind !== 'fatal') message = parser.next();
    return message?.kind === 'fatal' ? message.error.code : undefined;
  };
  const greeting = serializeGreeting();
  const badFirst = Buffer.from(greeting);
  badFirst[0] = 0;
  t.equal(fatalCode(badFirst), 'BAD_GREETING_MAGIC');
  const oldstyle = Buffer.from(greeting);
  oldstyle.writeBigUInt64BE(Magic.CLISERV, 8);
  t.equal(fatalCode(oldstyle), 'OLDSTYLE_NEGOTIATION');
  const badSecond = Buffer.from(greeting);
  badSecond[15] = 0;
  t.equal(fatalCode(badSecond), 'BAD_GREETING_MAGIC');
  const badReply = Buffer.alloc(20);
  t.equal(fatalCode(Buffer.concat([greeting, badReply])), 'BAD_OPTION_REPLY_MAGIC');
  const bigReply = Buffer.alloc(20);
  bigReply.writeBigUInt64BE(Magic.OPTION_REPLY, 0);
  bigReply.writeUInt32BE(101, 16);
  t.equal(fatalCode(Buffer.concat([greeting, bigReply])), 'OPTION_REPLY_TOO_BIG');
  const enter = (parser: ClientParser): void => {
    parser.push(greeting);
    parser.next();
    parser.enterTransmission();
  };
  t.equal(fatalCode(Buffer.from([0x96, 0x74, 0x46, 0x68]), enter), 'BAD_REPLY_MAGIC', 'detected from 4 bytes');
  t.equal(fatalCode(Buffer.from([0x6e, 0x8a, 0x27, 0x8c]), enter), 'EXTENDED_HEADERS_UNSUPPORTED');
  const enterStructured = (parser: ClientParser): void => {
    parser.push(Buffer.concat([greeting, serializeAckReply(OptionType.STRUCTURED_REPLY)]));
    parser.next();
    parser.next();
    parser.enterTransmission();
    parser.expectReply(1n, { type: CommandType.BLOCK_STATUS, flags: 0, offsetBytes: 0, lengthBytes: 4096 });
  };
  t.equal(fatalCode(serializeStructuredChunkHeader(1n, 0, ChunkType.BLOCK_STATUS, 108), enterStructured), 'CHUNK_TOO_BIG');
});

t.test('client parser misuse throws TypeError', async (t) => {
  const parser = new ClientParser();
  t.throws(() => parser.enterTransmission(), TypeError);
  t.throws(() => parser.expectExportNameReply(true), TypeError);
  const read = { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: 10 };
  parser.expectReply(1n, read);
  t.throws(() => parser.expectReply(1n, read), TypeError, 'duplicate cookie');
  t.throws(() => parser.expectReply(2n, { ...read, type: CommandType.DISC }), TypeError, 'DISC has no reply');
  t.throws(() => parser.expectReply(3n, { ...read, lengthBytes: 2 ** 32 }), TypeError, 'length beyond a compact request');
  t.throws(() => parser.expectReply(4n, { ...read, offsetBytes: -1 }), TypeError, 'negative offset');
  t.throws(() => parser.expectReply(-1n, read), TypeError, 'negative cookie');
});

t.test('a WRITE whose payload is still arriving names its length, so a server can reserve room first', async (t) => {
  const parser = transmissionParser({ maxWritePayloadBytes: 1024 });
  t.equal(parser.pendingWritePayloadBytes, 0, 'nothing pending before a header');
  const header = serializeRequestHeader(CommandType.WRITE, 0, 7n, 0, 1000);
  parser.push(header.subarray(0, 20));
  t.equal(parser.next(), undefined);
  t.equal(parser.pendingWritePayloadBytes, 0, 'nor with half a header');
  parser.push(header.subarray(20));
  parser.push(Buffer.alloc(300, 0xaa));
  t.equal(parser.next(), undefined);
  t.equal(parser.pendingWritePayloadBytes, 1000, 'the header read, the payload named before it is all there');
  parser.push(Buffer.alloc(700, 0xaa));
  t.equal(parser.next()?.kind, 'request');
  t.equal(parser.pendingWritePayloadBytes, 0, 'nothing pending once the WRITE is delivered');
  parser.push(serializeRequestHeader(CommandType.WRITE, 0, 8n, 0, 5000));
  t.equal(parser.next()?.kind, 'writeTooBig');
  t.equal(parser.pendingWritePayloadBytes, 0, 'a payload being skipped is not pending: it is not kept');
});
