// The client's checks of transmission replies against the requests they answer, one rule of
// proto.md at a time. Invariants: a reply that breaks a rule is fatal with the code that names
// the rule (never a message that reaches the caller, never an exception); replies that keep the
// rules, including the unusual ones the spec allows, pass unchanged.
import t from 'tap';
import {
  ChunkType,
  ClientParser,
  CommandFlag,
  CommandType,
  Errno,
  OptionType,
  READ_REPLY_PIECE_COUNT_MAX,
  ReplyFlag,
  serializeAckReply,
  serializeGreeting,
  type ExpectedRequest,
  type ServerMessage,
} from '../src/index.js';
import {
  blockStatusPayload,
  errorPayload,
  feed,
  offsetDataPayload,
  offsetHolePayload,
  rawChunk,
  rawSimpleReply,
  transmissionClient,
  type Negotiated,
} from './replies.js';

const DONE = ReplyFlag.DONE;
const plainConnection: Negotiated = { structuredReplies: false, contextIds: [] };
const structured: Negotiated = { structuredReplies: true, contextIds: [1, 2] };

const read = (offsetBytes: number, lengthBytes: number, flags = 0): ExpectedRequest => ({ type: CommandType.READ, flags, offsetBytes, lengthBytes });
const write = (offsetBytes: number, lengthBytes: number): ExpectedRequest => ({ type: CommandType.WRITE, flags: 0, offsetBytes, lengthBytes });
const flush: ExpectedRequest = { type: CommandType.FLUSH, flags: 0, offsetBytes: 0, lengthBytes: 0 };
const blockStatus = (offsetBytes: number, lengthBytes: number, flags = 0): ExpectedRequest => ({ type: CommandType.BLOCK_STATUS, flags, offsetBytes, lengthBytes });

interface Case {
  name: string;
  negotiated: Negotiated;
  requests: Array<[bigint, ExpectedRequest]>;
  stream: Buffer[];
  /** The fatal code, or 'ok' when every message must pass. */
  expect: string;
}

function outcome(messages: ServerMessage[]): string {
  const last = messages[messages.length - 1];
  return last?.kind === 'fatal' ? last.error.code : 'ok';
}

const data = (lengthBytes: number): Buffer => Buffer.alloc(lengthBytes, 0xab);

const cases: Case[] = [
  // Structured replies that were never negotiated.
  { name: 'OFFSET_DATA on a connection without structured replies', negotiated: plainConnection, requests: [[1n, read(4096, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512)))], expect: 'STRUCTURED_REPLY_NOT_NEGOTIATED' },
  { name: 'NONE on a connection without structured replies', negotiated: plainConnection, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(0))], expect: 'STRUCTURED_REPLY_NOT_NEGOTIATED' },
  // Cookies.
  { name: 'simple reply for a cookie never sent', negotiated: plainConnection, requests: [[1n, write(0, 512)]], stream: [rawSimpleReply(2n, 0)], expect: 'UNKNOWN_COOKIE' },
  { name: 'simple reply twice for one cookie', negotiated: plainConnection, requests: [[1n, write(0, 512)]], stream: [rawSimpleReply(1n, 0), rawSimpleReply(1n, 0)], expect: 'UNKNOWN_COOKIE' },
  { name: 'chunk for a cookie never sent', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(9n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512)))], expect: 'UNKNOWN_COOKIE' },
  { name: 'chunk after the DONE chunk', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(0))], expect: 'UNKNOWN_COOKIE' },
  // Simple replies.
  { name: 'READ data after a successful simple reply, then the next reply', negotiated: plainConnection, requests: [[1n, read(0, 512)], [2n, read(0, 512)], [3n, write(0, 1)]], stream: [rawSimpleReply(1n, 0, data(512)), rawSimpleReply(2n, Errno.EIO), rawSimpleReply(3n, 0)], expect: 'ok' },
  { name: 'simple reply to a READ once structured replies were negotiated', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawSimpleReply(1n, 0, data(512))], expect: 'UNEXPECTED_REPLY' },
  { name: 'simple error reply to a READ once structured replies were negotiated', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawSimpleReply(1n, Errno.EINVAL)], expect: 'UNEXPECTED_REPLY' },
  { name: 'simple reply to a WRITE with structured replies (allowed)', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawSimpleReply(1n, 0)], expect: 'ok' },
  { name: 'successful simple reply to BLOCK_STATUS', negotiated: plainConnection, requests: [[1n, blockStatus(0, 512)]], stream: [rawSimpleReply(1n, 0)], expect: 'UNEXPECTED_REPLY' },
  { name: 'simple reply in the middle of a structured reply', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, 0, ChunkType.ERROR, errorPayload(Errno.EIO, '')), rawSimpleReply(1n, 0)], expect: 'UNEXPECTED_REPLY' },
  // OFFSET_DATA and OFFSET_HOLE inside the READ.
  { name: 'OFFSET_DATA before the READ', negotiated: structured, requests: [[1n, read(4096, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(4095, data(512)))], expect: 'OUT_OF_RANGE' },
  { name: 'OFFSET_DATA running past the READ', negotiated: structured, requests: [[1n, read(4096, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(4097, data(512)))], expect: 'OUT_OF_RANGE' },
  { name: 'OFFSET_DATA at offset 2^63', negotiated: structured, requests: [[1n, read(4096, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(2n ** 63n, data(512)))], expect: 'OUT_OF_RANGE' },
  { name: 'OFFSET_DATA declaring more data than the READ, caught from its header', negotiated: structured, requests: [[1n, read(0, 4096)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, Buffer.alloc(0), 8 + 4097)], expect: 'OUT_OF_RANGE' },
  { name: 'OFFSET_DATA with no data', negotiated: structured, requests: [[1n, read(0, 4096)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(0)))], expect: 'BAD_LENGTH' },
  { name: 'OFFSET_DATA to a WRITE', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512)))], expect: 'UNEXPECTED_REPLY' },
  { name: 'OFFSET_HOLE past the READ', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_HOLE, offsetHolePayload(256, 512))], expect: 'OUT_OF_RANGE' },
  { name: 'OFFSET_HOLE of size zero', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_HOLE, offsetHolePayload(0, 0))], expect: 'BAD_VALUE' },
  { name: 'OFFSET_HOLE of the wrong length', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.OFFSET_HOLE, Buffer.concat([offsetHolePayload(0, 512), Buffer.alloc(1)]))], expect: 'BAD_LENGTH' },
  { name: 'chunks that overlap', negotiated: structured, requests: [[1n, read(0, 1024)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.OFFSET_HOLE, offsetHolePayload(511, 513))], expect: 'OUT_OF_RANGE' },
  { name: 'the same chunk twice (overlap with a gap: the byte count alone would match)', negotiated: structured, requests: [[1n, read(0, 1024)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512)))], expect: 'OUT_OF_RANGE' },
  { name: 'DONE with part of the READ never described', negotiated: structured, requests: [[1n, read(0, 1024)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(0))], expect: 'INCOMPLETE_REPLY' },
  { name: 'chunks out of order that join up (allowed)', negotiated: structured, requests: [[1n, read(100, 30)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_HOLE, offsetHolePayload(120, 10)), rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(100, data(10))), rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(110, data(10)))], expect: 'ok' },
  { name: 'part of a READ, then an error (allowed: the READ fails)', negotiated: structured, requests: [[1n, read(0, 1024)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.ERROR_OFFSET, errorPayload(Errno.EIO, 'bad sector', { offsetBytes: 600 }))], expect: 'ok' },
  { name: 'a zero-length READ answered by NONE', negotiated: structured, requests: [[1n, read(0, 0)]], stream: [rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(0))], expect: 'ok' },
  { name: 'two content chunks though DF was set', negotiated: structured, requests: [[1n, read(0, 1024, CommandFlag.DF)]], stream: [rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))), rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(512, data(512)))], expect: 'UNEXPECTED_REPLY' },
  // Chunk types.
  { name: 'an unknown non-error chunk type', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, 0x77, Buffer.alloc(4))], expect: 'UNEXPECTED_REPLY' },
  { name: 'BLOCK_STATUS_EXT without extended headers', negotiated: structured, requests: [[1n, blockStatus(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.BLOCK_STATUS_EXT, Buffer.alloc(24))], expect: 'UNEXPECTED_REPLY' },
  { name: 'NONE without DONE', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, 0, ChunkType.NONE, Buffer.alloc(0))], expect: 'UNEXPECTED_REPLY' },
  { name: 'NONE with a payload', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(1))], expect: 'BAD_LENGTH' },
  { name: 'unknown reply flags are ignored', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE | 0x8000, ChunkType.NONE, Buffer.alloc(0))], expect: 'ok' },
  // Error chunks.
  { name: 'ERROR shorter than its fields', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR, Buffer.alloc(5))], expect: 'BAD_LENGTH' },
  { name: 'ERROR whose message runs past the chunk', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR, errorPayload(Errno.EIO, 'short', { declaredMessageBytes: 200 }))], expect: 'TRUNCATED' },
  { name: 'ERROR with bytes after its message', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR, errorPayload(Errno.EIO, 'text', { trailingBytes: 3 }))], expect: 'TRAILING_BYTES' },
  { name: 'ERROR with error value zero', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR, errorPayload(0, 'all fine?'))], expect: 'BAD_VALUE' },
  { name: 'ERROR longer than a 4096-byte message, caught from its header', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR, Buffer.alloc(0), 6 + 4097)], expect: 'CHUNK_TOO_BIG' },
  { name: 'ERROR_OFFSET whose offset lies outside the READ', negotiated: structured, requests: [[1n, read(4096, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR_OFFSET, errorPayload(Errno.EIO, 'x', { offsetBytes: 4096 + 512 }))], expect: 'OUT_OF_RANGE' },
  { name: 'ERROR_OFFSET with a byte between message and offset', negotiated: structured, requests: [[1n, read(0, 512)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR_OFFSET, Buffer.concat([errorPayload(Errno.EIO, 'x'), Buffer.alloc(9)]))], expect: 'BAD_LENGTH' },
  { name: 'ERROR_OFFSET to a FLUSH (unexpected error type: the reply fails, the connection goes on)', negotiated: structured, requests: [[1n, flush], [2n, write(0, 1)]], stream: [rawChunk(1n, DONE, ChunkType.ERROR_OFFSET, errorPayload(Errno.EIO, 'x', { offsetBytes: 77 })), rawSimpleReply(2n, 0)], expect: 'ok' },
  { name: 'an unknown error type with a message (the reply fails, the connection goes on)', negotiated: structured, requests: [[1n, write(0, 512)], [2n, write(0, 1)]], stream: [rawChunk(1n, DONE, 0x8123, errorPayload(Errno.EIO, 'new kind', { trailingBytes: 16 })), rawSimpleReply(2n, 0)], expect: 'ok' },
  { name: 'an unknown error type whose message does not fit', negotiated: structured, requests: [[1n, write(0, 512)]], stream: [rawChunk(1n, DONE, 0x8123, errorPayload(Errno.EIO, 'x', { declaredMessageBytes: 60 }))], expect: 'TRUNCATED' },
  // BLOCK_STATUS.
  { name: 'BLOCK_STATUS for every context, the last descriptor past the end (allowed)', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[4096, 0], [65536, 3]])), rawChunk(1n, DONE, ChunkType.BLOCK_STATUS, blockStatusPayload(2, [[8192, 0]]))], expect: 'ok' },
  { name: 'BLOCK_STATUS for a context never selected', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, DONE, ChunkType.BLOCK_STATUS, blockStatusPayload(7, [[8192, 0]]))], expect: 'UNEXPECTED_REPLY' },
  { name: 'BLOCK_STATUS twice for one context', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8192, 0]])), rawChunk(1n, DONE, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8192, 0]]))], expect: 'UNEXPECTED_REPLY' },
  { name: 'BLOCK_STATUS done without every context', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, DONE, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8192, 0]]))], expect: 'INCOMPLETE_REPLY' },
  { name: 'BLOCK_STATUS descriptors that go on past the request', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8192, 0], [512, 0]]))], expect: 'OUT_OF_RANGE' },
  { name: 'BLOCK_STATUS with two descriptors though REQ_ONE was set', negotiated: structured, requests: [[1n, blockStatus(0, 8192, CommandFlag.REQ_ONE)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[512, 0], [512, 0]]))], expect: 'UNEXPECTED_REPLY' },
  { name: 'BLOCK_STATUS descriptor longer than the request though REQ_ONE was set', negotiated: structured, requests: [[1n, blockStatus(0, 8192, CommandFlag.REQ_ONE)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8193, 0]]))], expect: 'OUT_OF_RANGE' },
  { name: 'BLOCK_STATUS with a zero-length descriptor', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[0, 0]]))], expect: 'BAD_VALUE' },
  { name: 'BLOCK_STATUS of a bad length', negotiated: structured, requests: [[1n, blockStatus(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, Buffer.alloc(10))], expect: 'BAD_LENGTH' },
  { name: 'BLOCK_STATUS to a READ', negotiated: structured, requests: [[1n, read(0, 8192)]], stream: [rawChunk(1n, 0, ChunkType.BLOCK_STATUS, blockStatusPayload(1, [[8192, 0]]))], expect: 'UNEXPECTED_REPLY' },
];

for (const testCase of cases) {
  t.test(testCase.name, async (t) => {
    const parser = transmissionClient(testCase.negotiated);
    for (const [cookie, request] of testCase.requests) parser.expectReply(cookie, request);
    const messages = feed(parser, ...testCase.stream);
    t.equal(outcome(messages), testCase.expect);
    if (testCase.expect !== 'ok') {
      t.equal(parser.next(), messages[messages.length - 1], 'fatal is sticky');
      t.equal(parser.requestsInFlight, 0, 'no request is left to be answered');
    }
    // The same stream split at every byte says the same.
    const joined = Buffer.concat(testCase.stream);
    for (let position = 1; position < joined.length; position++) {
      const again = transmissionClient(testCase.negotiated);
      for (const [cookie, request] of testCase.requests) again.expectReply(cookie, request);
      const split = outcome(feed(again, joined.subarray(0, position), joined.subarray(position)));
      if (split !== testCase.expect) {
        t.fail(`split at ${position}: ${split}`);
        return;
      }
    }
  });
}

t.test('a chunk with an unknown cookie is fatal from its header, before its payload is buffered', async (t) => {
  const parser = transmissionClient(structured);
  parser.expectReply(1n, read(0, 512));
  const header = rawChunk(2n, DONE, ChunkType.OFFSET_DATA, Buffer.alloc(0), 64 * 1024 * 1024);
  t.equal(outcome(feed(parser, header)), 'UNKNOWN_COOKIE');
});

t.test(`a READ scattered in more than ${READ_REPLY_PIECE_COUNT_MAX} separate pieces is fatal`, async (t) => {
  const lengthBytes = 2 * READ_REPLY_PIECE_COUNT_MAX + 2;
  const parser = transmissionClient(structured);
  parser.expectReply(1n, read(0, lengthBytes));
  const pieces: Buffer[] = [];
  for (let at = 0; at < lengthBytes; at += 2) pieces.push(rawChunk(1n, 0, ChunkType.OFFSET_DATA, offsetDataPayload(at, data(1))));
  const messages = feed(parser, Buffer.concat(pieces));
  t.equal(outcome(messages), 'REPLY_TOO_FRAGMENTED');
  t.equal(messages.length, READ_REPLY_PIECE_COUNT_MAX + 1, 'every piece up to the bound was accepted');

  const filled = transmissionClient(structured);
  filled.expectReply(1n, read(0, lengthBytes));
  const gaps: Buffer[] = [];
  for (let at = 1; at < lengthBytes; at += 2) gaps.push(rawChunk(1n, 0, ChunkType.OFFSET_HOLE, offsetHolePayload(at, 1)));
  const none = rawChunk(1n, DONE, ChunkType.NONE, Buffer.alloc(0));
  const joined = feed(filled, Buffer.concat(pieces.slice(0, READ_REPLY_PIECE_COUNT_MAX)), Buffer.concat(gaps), Buffer.concat(pieces.slice(READ_REPLY_PIECE_COUNT_MAX)), none);
  t.equal(outcome(joined), 'ok', 'pieces that join up stay under the bound');
  t.equal(filled.requestsInFlight, 0, 'and the READ completed');
});

t.test('STARTTLS forgets structured replies negotiated before it', async (t) => {
  const parser = new ClientParser();
  t.same(
    feed(parser, serializeGreeting(), serializeAckReply(OptionType.STRUCTURED_REPLY), serializeAckReply(OptionType.STARTTLS)).map((message) => message.kind),
    ['greeting', 'optionReply', 'optionReply'],
  );
  t.equal(parser.structuredRepliesNegotiated, true);
  t.equal(parser.startTls(), 0);
  t.equal(parser.structuredRepliesNegotiated, false);
  feed(parser, serializeAckReply(OptionType.GO));
  parser.enterTransmission();
  parser.expectReply(1n, read(0, 512));
  t.equal(outcome(feed(parser, rawChunk(1n, DONE, ChunkType.OFFSET_DATA, offsetDataPayload(0, data(512))))), 'STRUCTURED_REPLY_NOT_NEGOTIATED');
});
