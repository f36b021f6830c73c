// Fragmentation: TCP may cut the stream anywhere, so every conversation is
// fed split in two at every byte position, and one byte at a time, and must
// yield exactly the messages it yields when fed whole. Each message on its
// own is covered too, since a conversation contains every message type.
import t from 'tap';
import { type Plain, oneByteAtATime, parseAsClient, parseAsServer, plain, splitAt } from './helpers.js';
import {
  type ClientConversation,
  type Conversation,
  SMALL_LIMITS,
  clientExportNameSession,
  clientSession,
  serverExportNameSession,
  serverSession,
  serverStructuredSession,
} from './streams.js';

// Compares without building one assertion per split position, which would
// flood the output; reports the first position that differs.
function firstMismatch(stream: Buffer, parse: (pieces: Buffer[]) => Plain[], expected: Plain[]): string | undefined {
  const expectedText = JSON.stringify(expected);
  for (let position = 0; position <= stream.length; position++) {
    if (JSON.stringify(parse(splitAt(stream, [position]))) !== expectedText) return `split at ${position}`;
  }
  if (JSON.stringify(parse(oneByteAtATime(stream))) !== expectedText) return 'one byte at a time';
  return undefined;
}

const serverSide: Conversation[] = [clientSession(), clientExportNameSession()];
for (const conversation of serverSide) {
  t.test(`${conversation.name}: every split yields the same messages`, async (t) => {
    const parse = (pieces: Buffer[]): Plain[] => parseAsServer(pieces, SMALL_LIMITS).map(plain);
    t.same(parse([conversation.stream]), conversation.expected);
    t.equal(firstMismatch(conversation.stream, parse, conversation.expected), undefined);
  });
}

const clientSide: ClientConversation[] = [serverSession(), serverStructuredSession(), serverExportNameSession(true), serverExportNameSession(false)];
for (const conversation of clientSide) {
  t.test(`${conversation.name}: every split yields the same messages`, async (t) => {
    const parse = (pieces: Buffer[]): Plain[] => parseAsClient(pieces, conversation.script).map(plain);
    t.same(parse([conversation.stream]), conversation.expected);
    t.equal(firstMismatch(conversation.stream, parse, conversation.expected), undefined);
  });
}

t.test('random multi-way splits yield the same messages', async (t) => {
  const { stream, expected } = clientSession();
  let seed = 12345;
  const random = (limit: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % limit;
  };
  for (let round = 0; round < 200; round++) {
    const positions = Array.from({ length: 1 + random(12) }, () => random(stream.length + 1)).sort((a, b) => a - b);
    const messages = parseAsServer(splitAt(stream, positions), SMALL_LIMITS).map(plain);
    if (JSON.stringify(messages) !== JSON.stringify(expected)) {
      t.fail(`split at ${positions.join(',')}`);
      return;
    }
  }
  t.pass('200 random splits agree');
});
