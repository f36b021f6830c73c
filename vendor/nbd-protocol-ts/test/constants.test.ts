// Constants against the spec's numbers, name lookups for logs, and the
// client-flag rule a server applies right after the greeting.
import t from 'tap';
import {
  ChunkType,
  ClientFlag,
  CommandType,
  Errno,
  HandshakeFlag,
  OptionReplyType,
  OptionType,
  chunkTypeName,
  commandFlagNames,
  commandTypeName,
  errnoName,
  infoTypeName,
  optionReplyTypeName,
  optionTypeName,
  transmissionFlagNames,
  unknownClientFlags,
} from '../src/index.js';

t.test('numbers that older spec versions got differently', async (t) => {
  t.equal(OptionType.LIST_META_CONTEXT, 9);
  t.equal(OptionType.SET_META_CONTEXT, 10);
  t.equal(OptionType.EXTENDED_HEADERS, 11);
  t.equal(OptionReplyType.ERR_TOO_BIG, 2 ** 31 + 9);
  t.equal(ChunkType.ERROR_OFFSET, 2 ** 15 + 2);
  t.equal(CommandType.BLOCK_STATUS, 7);
  t.equal(Errno.ESHUTDOWN, 108);
});

t.test('names for logs', async (t) => {
  t.equal(optionTypeName(OptionType.GO), 'NBD_OPT_GO');
  t.equal(optionTypeName(4242), 'unknown(0x1092)');
  t.equal(optionReplyTypeName(OptionReplyType.ERR_UNSUP), 'NBD_REP_ERR_UNSUP');
  t.equal(infoTypeName(3), 'NBD_INFO_BLOCK_SIZE');
  t.equal(commandTypeName(CommandType.WRITE_ZEROES), 'NBD_CMD_WRITE_ZEROES');
  t.equal(chunkTypeName(ChunkType.OFFSET_HOLE), 'NBD_REPLY_TYPE_OFFSET_HOLE');
  t.equal(errnoName(0), 'NBD_OK');
  t.equal(errnoName(Errno.ENOSPC), 'NBD_ENOSPC');
  t.equal(commandFlagNames(0x1 | 0x2 | 0x100), 'FUA|NO_HOLE|0x100');
  t.equal(commandFlagNames(0), '0');
  t.equal(transmissionFlagNames(0x1 | 0x4), 'HAS_FLAGS|SEND_FLUSH');
});

t.test('unknownClientFlags', async (t) => {
  const offered = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;
  const both = ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES;
  t.equal(unknownClientFlags(both, offered), 0);
  t.equal(unknownClientFlags(0, offered), 0, 'a client may omit every flag');
  t.equal(unknownClientFlags(both, HandshakeFlag.FIXED_NEWSTYLE), ClientFlag.C_NO_ZEROES, 'NO_ZEROES not offered');
  t.equal(unknownClientFlags(0x80000001, offered), 0x80000000, 'unknown high bit, unsigned');
});
