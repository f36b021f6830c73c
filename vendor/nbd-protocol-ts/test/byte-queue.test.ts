// The byte queue and the zero-copy promise: bytes inside one received chunk
// come back as views of that chunk; only data spanning chunks is copied.
import t from 'tap';
import {
  ByteQueue,
  ClientFlag,
  ClientParser,
  CommandType,
  OptionType,
  ServerParser,
  serializeClientFlags,
  serializeGreeting,
  serializeOption,
  serializeRequestHeader,
  serializeSimpleReplyHeader,
} from '../src/index.js';

t.test('consume inside one chunk is a view; across chunks a copy of exact size', async (t) => {
  const queue = new ByteQueue();
  const first = Buffer.from('abcdef');
  const second = Buffer.from('ghij');
  queue.push(first);
  queue.push(Buffer.alloc(0));
  queue.push(second);
  t.equal(queue.lengthBytes, 10);
  const view = queue.consume(2);
  t.equal(view.toString(), 'ab');
  t.equal(view.buffer, first.buffer);
  t.equal(view.byteOffset, first.byteOffset);
  const spanning = queue.consume(6);
  t.equal(spanning.toString(), 'cdefgh');
  t.equal(spanning.length, 6);
  t.equal(queue.lengthBytes, 2);
  t.equal(queue.consume(0).length, 0);
  t.throws(() => queue.consume(3), RangeError);
  t.equal(queue.consume(2).toString(), 'ij');
  t.equal(queue.lengthBytes, 0);
});

t.test('peekUint32 reads across chunk boundaries without consuming', async (t) => {
  const queue = new ByteQueue();
  for (const byte of [0x25, 0x60, 0x95, 0x13, 0x01]) queue.push(Buffer.from([byte]));
  t.equal(queue.peekUint32(), 0x25609513);
  t.equal(queue.lengthBytes, 5);
  queue.discard(1);
  t.equal(queue.peekUint32(), 0x60951301);
});

t.test('discard drops at most what is queued', async (t) => {
  const queue = new ByteQueue();
  queue.push(Buffer.alloc(10));
  queue.push(Buffer.alloc(10));
  t.equal(queue.discard(15), 15);
  t.equal(queue.discard(15), 5);
  t.equal(queue.lengthBytes, 0);
  queue.push(Buffer.from('xy'));
  t.equal(queue.consume(2).toString(), 'xy');
});

t.test('many tiny chunks stay linear and correct', async (t) => {
  const queue = new ByteQueue();
  const data = Buffer.alloc(200_000);
  for (let index = 0; index < data.length; index++) data[index] = index & 0xff;
  for (let index = 0; index < data.length; index++) queue.push(data.subarray(index, index + 1));
  const chunks: Buffer[] = [];
  while (queue.lengthBytes > 0) chunks.push(queue.consume(Math.min(3000, queue.lengthBytes)));
  t.ok(Buffer.concat(chunks).equals(data));
});

t.test('a WRITE payload inside one pushed chunk is a view of that chunk', async (t) => {
  const parser = new ServerParser();
  parser.push(Buffer.concat([serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE), serializeOption(OptionType.EXPORT_NAME)]));
  parser.next();
  parser.next();
  parser.enterTransmission();
  const payload = Buffer.alloc(65536, 0x5a);
  const chunk = Buffer.concat([serializeRequestHeader(CommandType.WRITE, 0, 1n, 0, payload.length), payload]);
  parser.push(chunk);
  const message = parser.next();
  if (message?.kind !== 'request' || message.payload === undefined) throw new Error('expected a WRITE');
  t.equal(message.payload.buffer, chunk.buffer, 'same memory');
  t.equal(message.payload.byteOffset, chunk.byteOffset + 28);
  t.equal(message.payload.length, payload.length);
});

t.test('a WRITE payload split over chunks is one contiguous copy of exactly its length', async (t) => {
  const parser = new ServerParser();
  parser.push(Buffer.concat([serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE), serializeOption(OptionType.EXPORT_NAME)]));
  parser.next();
  parser.next();
  parser.enterTransmission();
  const payload = Buffer.alloc(10_000, 0x33);
  parser.push(serializeRequestHeader(CommandType.WRITE, 0, 1n, 0, payload.length));
  parser.push(payload.subarray(0, 4000));
  t.equal(parser.next(), undefined);
  parser.push(payload.subarray(4000));
  const message = parser.next();
  if (message?.kind !== 'request' || message.payload === undefined) throw new Error('expected a WRITE');
  t.equal(message.payload.length, payload.length);
  t.ok(message.payload.equals(payload));
});

t.test('READ data inside one chunk reaches the client as a view', async (t) => {
  const parser = new ClientParser();
  parser.push(serializeGreeting());
  parser.next();
  parser.enterTransmission();
  parser.expectReply(9n, { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: 8192 });
  const chunk = Buffer.concat([serializeSimpleReplyHeader(9n, 0), Buffer.alloc(8192, 1)]);
  parser.push(chunk);
  const message = parser.next();
  if (message?.kind !== 'simpleReply' || message.data === undefined) throw new Error('expected READ data');
  t.equal(message.data.buffer, chunk.buffer);
});
