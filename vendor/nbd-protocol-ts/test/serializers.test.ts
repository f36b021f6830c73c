// Serializers: exact wire layouts for a few messages checked byte by byte
// against the spec, message text handling, and TypeError on misuse.
import t from 'tap';
import {
  ChunkType,
  CommandFlag,
  CommandType,
  Errno,
  OptionReplyType,
  OptionType,
  ReplyFlag,
  decodeErrorPayload,
  serializeBlockStatusChunk,
  serializeClientFlags,
  serializeErrorChunk,
  serializeExportNameReply,
  serializeGoOption,
  serializeGreeting,
  serializeNoneChunk,
  serializeOffsetDataHeader,
  serializeOffsetHoleChunk,
  serializeOptionErrorReply,
  serializeOptionReply,
  serializeRequestHeader,
  serializeServerReply,
  serializeSimpleReplyHeader,
  serializeInfoOption,
  serializeMetaContextReply,
} from '../src/index.js';

t.test('greeting is NBDMAGIC IHAVEOPT flags', async (t) => {
  t.equal(serializeGreeting().toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
  t.equal(serializeGreeting(1).toString('hex').slice(-4), '0001');
});

t.test('request header is 28 bytes in spec order', async (t) => {
  const header = serializeRequestHeader(CommandType.WRITE, CommandFlag.FUA, 0x0102030405060708n, 2 ** 40 + 1, 4096);
  t.equal(header.toString('hex'), '25609513' + '0001' + '0001' + '0102030405060708' + '0000010000000001' + '00001000');
});

t.test('simple reply header is 16 bytes', async (t) => {
  t.equal(serializeSimpleReplyHeader(5n, Errno.EINVAL).toString('hex'), '67446698' + '00000016' + '0000000000000005');
});

t.test('offset data header counts the offset in the chunk length and leaves data to the caller', async (t) => {
  const header = serializeOffsetDataHeader(1n, ReplyFlag.DONE, 512, 4096);
  t.equal(header.length, 28);
  t.equal(header.toString('hex'), '668e33ef' + '0001' + '0001' + '0000000000000001' + '00001008' + '0000000000000200');
});

t.test('fixed-size chunks', async (t) => {
  t.equal(serializeNoneChunk(2n).toString('hex'), '668e33ef' + '0001' + '0000' + '0000000000000002' + '00000000');
  const hole = serializeOffsetHoleChunk(2n, 0, 4096, 512);
  t.equal(hole.length, 32);
  t.equal(hole.readUInt16BE(6), ChunkType.OFFSET_HOLE);
  t.equal(hole.readUInt32BE(16), 12);
  const status = serializeBlockStatusChunk(3n, ReplyFlag.DONE, 7, [{ lengthBytes: 512, flags: 3 }]);
  t.equal(status.subarray(16).toString('hex'), '0000000c' + '00000007' + '00000200' + '00000003');
});

t.test('option reply and option layouts', async (t) => {
  t.equal(serializeOptionReply(OptionType.GO, OptionReplyType.ACK).toString('hex'), '0003e889045565a9' + '00000007' + '00000001' + '00000000');
  t.equal(serializeServerReply('ab').toString('hex'), '0003e889045565a9' + '00000003' + '00000002' + '00000006' + '00000002' + '6162');
  t.equal(serializeGoOption('ab', [3]).toString('hex'), '49484156454f5054' + '00000007' + '0000000a' + '00000002' + '6162' + '0001' + '0003');
  t.equal(serializeClientFlags(3).toString('hex'), '00000003');
});

t.test('EXPORT_NAME reply with and without zeroes', async (t) => {
  const short = serializeExportNameReply(2 ** 33, 0x0103, true);
  t.equal(short.toString('hex'), '0000000200000000' + '0103');
  const long = serializeExportNameReply(2 ** 33, 0x0103, false);
  t.equal(long.length, 134);
  t.ok(long.subarray(10).equals(Buffer.alloc(124)));
});

t.test('error messages are cut to 4096 bytes on a character boundary and lose NULs', async (t) => {
  const message = 'a'.repeat(4095) + 'é';
  const chunk = serializeErrorChunk(1n, ReplyFlag.DONE, Errno.EIO, message);
  const decoded = decodeErrorPayload(chunk.subarray(20));
  t.same(decoded, { error: Errno.EIO, message: 'a'.repeat(4095) }, 'the two-byte é would cross 4096, so it is dropped');
  const euro = serializeErrorChunk(1n, ReplyFlag.DONE, Errno.EIO, '€'.repeat(2000));
  t.equal(euro.readUInt16BE(24), 4095, '1365 three-byte characters');
  const reply = serializeOptionErrorReply(OptionType.GO, OptionReplyType.ERR_UNKNOWN, 'no\0such');
  t.equal(reply.subarray(20).toString(), 'nosuch');
  t.equal(serializeOptionErrorReply(OptionType.GO, OptionReplyType.ERR_UNKNOWN).length, 20, 'no message, no data');
});

t.test('misuse throws TypeError', async (t) => {
  t.throws(() => serializeRequestHeader(CommandType.READ, 0, 1n, 2 ** 53, 1), TypeError, 'unsafe offset');
  t.throws(() => serializeRequestHeader(CommandType.READ, 0, 1n, -1, 1), TypeError, 'negative offset');
  t.throws(() => serializeRequestHeader(CommandType.READ, 0, 2n ** 64n, 0, 1), TypeError, 'cookie too large');
  t.throws(() => serializeRequestHeader(CommandType.READ, 0x10000, 1n, 0, 1), TypeError, 'flags too large');
  t.throws(() => serializeRequestHeader(CommandType.READ, 0, 1n, 0, 2 ** 32), TypeError, 'length too large');
  t.throws(() => serializeOffsetDataHeader(1n, 0, 0, 0), TypeError, 'empty data');
  t.throws(() => serializeOffsetHoleChunk(1n, 0, 0, 0), TypeError, 'empty hole');
  t.throws(() => serializeBlockStatusChunk(1n, 0, 1, []), TypeError, 'no extents');
  t.throws(() => serializeErrorChunk(1n, 0, 0), TypeError, 'zero error');
  t.throws(() => serializeOptionErrorReply(OptionType.GO, OptionReplyType.ACK), TypeError, 'not an error type');
  t.throws(() => serializeInfoOption('a\0b'), TypeError, 'NUL in name');
  t.throws(() => serializeInfoOption('x'.repeat(4097)), TypeError, 'name too long');
  t.throws(() => serializeMetaContextReply(OptionType.SET_META_CONTEXT, -1, 'base:allocation'), TypeError);
});
