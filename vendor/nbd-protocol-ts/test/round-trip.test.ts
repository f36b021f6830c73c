// Round trips across the wire: what one side's serializers produce, the
// other side's parser returns unchanged, and the payload decoders recover
// the values that were serialized.
import t from 'tap';
import {
  ChunkType,
  CommandType,
  Errno,
  InfoType,
  OptionType,
  type ServerMessage,
  StateFlag,
  TransmissionFlag,
  decodeBlockStatusPayload,
  decodeErrorOffsetPayload,
  decodeErrorPayload,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  decodeOptionErrorMessage,
  decodeServerReplyData,
  isErrorChunkType,
  isOptionReplyError,
  parseExportNameData,
  parseInfoOrGoData,
  parseMetaContextData,
} from '../src/index.js';
import { parseAsClient, parseAsServer, plain } from './helpers.js';
import { SMALL_LIMITS, clientExportNameSession, clientSession, serverExportNameSession, serverSession, serverStructuredSession } from './streams.js';

t.test('client GO session parses back on the server side', async (t) => {
  const { stream, expected } = clientSession();
  const messages = parseAsServer([stream], SMALL_LIMITS);
  t.same(messages.map(plain), expected);
  t.notOk(messages.some((message) => message.kind === 'fatal'));
});

t.test('client EXPORT_NAME session parses back on the server side', async (t) => {
  const { stream, expected } = clientExportNameSession();
  t.same(parseAsServer([stream]).map(plain), expected);
});

t.test('option payloads decode to what the client built', async (t) => {
  const messages = parseAsServer([clientSession().stream], SMALL_LIMITS);
  const dataOf = (option: number): Buffer => {
    const message = messages.find((candidate) => candidate.kind === 'option' && candidate.option === option);
    if (message?.kind !== 'option') throw new Error(`no option ${option}`);
    return message.data;
  };
  t.same(parseInfoOrGoData(dataOf(OptionType.INFO)), {
    exportName: 'disk',
    infoTypes: [InfoType.NAME, InfoType.DESCRIPTION, InfoType.BLOCK_SIZE],
  });
  t.same(parseInfoOrGoData(dataOf(OptionType.GO)), { exportName: 'disk', infoTypes: [InfoType.BLOCK_SIZE] });
  t.same(parseMetaContextData(dataOf(OptionType.LIST_META_CONTEXT)), { exportName: 'disk', queries: ['base:', 'qemu:'] });
  t.same(parseMetaContextData(dataOf(OptionType.SET_META_CONTEXT)), { exportName: 'disk', queries: ['base:allocation'] });
  const exportNameMessages = parseAsServer([clientExportNameSession().stream]);
  const exportName = exportNameMessages.find((message) => message.kind === 'option' && message.option === OptionType.EXPORT_NAME);
  if (exportName?.kind !== 'option') throw new Error('no EXPORT_NAME');
  t.same(parseExportNameData(exportName.data), { exportName: 'vm-disk-ß' });
});

for (const session of [serverSession, serverStructuredSession]) {
  t.test(`${session().name} parses back on the client side`, async (t) => {
    const { stream, expected, script } = session();
    t.same(parseAsClient([stream], script).map(plain), expected);
  });
}

for (const noZeroes of [true, false]) {
  t.test(`EXPORT_NAME reply ${noZeroes ? 'without' : 'with'} zeroes parses back`, async (t) => {
    const { stream, expected, script } = serverExportNameSession(noZeroes);
    t.equal(stream.length, 18 + 10 + (noZeroes ? 0 : 124) + 16);
    t.same(parseAsClient([stream], script).map(plain), expected);
  });
}

t.test('option reply payloads decode to what the server serialized', async (t) => {
  const { stream, script } = serverSession();
  const replies = parseAsClient([stream], script).filter(
    (message): message is Extract<ServerMessage, { kind: 'optionReply' }> => message.kind === 'optionReply',
  );
  const servers = replies.filter((reply) => reply.replyType === 2).map((reply) => decodeServerReplyData(reply.data));
  t.same(servers, [
    { exportName: 'disk', description: 'the main disk' },
    { exportName: 'spare', description: '' },
  ]);
  const infos = replies
    .filter((reply) => reply.option === OptionType.INFO && reply.replyType === 3)
    .map((reply) => decodeInfoReplyData(reply.data));
  t.same(infos, [
    {
      kind: 'export',
      sizeBytes: 2 ** 40 + 4096,
      transmissionFlags: TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_DF,
    },
    { kind: 'name', exportName: 'disk' },
    { kind: 'description', description: 'über disk' },
    { kind: 'blockSize', minimumBytes: 512, preferredBytes: 4096, maximumBytes: 2 ** 25 },
  ]);
  const contexts = replies.filter((reply) => reply.replyType === 4).map((reply) => decodeMetaContextReplyData(reply.data));
  t.same(contexts, [
    { contextId: 0, contextName: 'base:allocation' },
    { contextId: 1, contextName: 'base:allocation' },
  ]);
  const errors = replies.filter((reply) => isOptionReplyError(reply.replyType));
  t.same(errors.map((reply) => decodeOptionErrorMessage(reply.data)), ['no TLS here', '']);
  t.same(plain(decodeInfoReplyData(Buffer.from([0, 9, 1, 2]))), plain({ kind: 'unknown', infoType: 9, data: Buffer.from([1, 2]) }));
});

t.test('structured chunk payloads decode to what the server serialized', async (t) => {
  const { stream, script } = serverStructuredSession();
  const chunks = parseAsClient([stream], script).filter(
    (message): message is Extract<ServerMessage, { kind: 'structuredChunk' }> => message.kind === 'structuredChunk',
  );
  const payloadOf = (type: number): Buffer => {
    const found = chunks.find((chunk) => chunk.type === type);
    if (found === undefined) throw new Error(`no chunk type ${type}`);
    return found.payload;
  };
  const offsetData = decodeOffsetDataPayload(payloadOf(ChunkType.OFFSET_DATA));
  t.same(plain(offsetData), plain({ offsetBytes: 1024, data: Buffer.from(Array.from({ length: 33 }, (_, index) => (index * 31 + 2) & 0xff)) }));
  t.same(decodeOffsetHolePayload(payloadOf(ChunkType.OFFSET_HOLE)), { offsetBytes: 1024 + 33, holeLengthBytes: 512 });
  t.same(decodeBlockStatusPayload(payloadOf(ChunkType.BLOCK_STATUS)), {
    contextId: 1,
    extents: [
      { lengthBytes: 4096, flags: 0 },
      { lengthBytes: 65536, flags: StateFlag.HOLE | StateFlag.ZERO },
    ],
  });
  t.same(decodeErrorPayload(payloadOf(ChunkType.ERROR)), { error: Errno.EINVAL, message: 'bad offset' });
  t.same(decodeErrorOffsetPayload(payloadOf(ChunkType.ERROR_OFFSET)), { error: Errno.EIO, message: 'disk error', offsetBytes: 8192 });
  t.ok(isErrorChunkType(ChunkType.ERROR_OFFSET));
  t.notOk(isErrorChunkType(ChunkType.OFFSET_DATA));
});

t.test('request types cover every compact command', async (t) => {
  const types = new Set(
    parseAsServer([clientSession().stream], SMALL_LIMITS).flatMap((message) => (message.kind === 'request' ? [message.type] : [])),
  );
  for (const type of [CommandType.READ, CommandType.WRITE, CommandType.DISC, CommandType.FLUSH, CommandType.TRIM, CommandType.CACHE, CommandType.WRITE_ZEROES, CommandType.BLOCK_STATUS]) {
    t.ok(types.has(type), `command ${type} present`);
  }
});
