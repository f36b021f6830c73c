// Randomized robustness. Invariants checked for every input:
//  1. push() and next() never throw, whatever the bytes and however split.
//  2. next() makes progress: every message consumes input, so the number of
//     messages is bounded by the input size, and a fatal message is final
//     (the same object on every later call).
//  3. Delivered requests are well-formed: a payload exactly when the type
//     is WRITE, of exactly lengthBytes; offsets are safe integers or Infinity.
//  4. Payload decoders return a value or a ProtocolError, never throw.
// The PRNG is seeded so any failure reproduces.
import t from 'tap';
import {
  type ClientMessage,
  ClientParser,
  CommandType,
  OptionReplyType,
  OptionType,
  ServerParser,
  serializeClientFlags,
  serializeOption,
  decodeBlockStatusPayload,
  decodeErrorOffsetPayload,
  decodeErrorPayload,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  decodeServerReplyData,
  parseExportNameData,
  parseInfoOrGoData,
  parseMetaContextData,
  type ServerMessage,
} from '../src/index.js';
import { type ClientScript, seededRandom } from './helpers.js';
import { SMALL_LIMITS, clientSession, serverSession, serverStructuredSession } from './streams.js';

const random = seededRandom(0x6e6264);
const integer = (limit: number): number => Math.floor(random() * limit);

function randomBytes(lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) bytes[index] = integer(256);
  return bytes;
}

// Flips, overwrites, deletes, inserts or truncates a few bytes of a valid stream.
function mutate(stream: Buffer): Buffer {
  let bytes = Buffer.from(stream);
  const editCount = 1 + integer(4);
  for (let edit = 0; edit < editCount && bytes.length > 0; edit++) {
    const position = integer(bytes.length);
    switch (integer(5)) {
      case 0:
        bytes[position] = (bytes[position] as number) ^ (1 << integer(8));
        break;
      case 1:
        bytes[position] = integer(256);
        break;
      case 2:
        bytes = Buffer.concat([bytes.subarray(0, position), bytes.subarray(position + 1 + integer(8))]);
        break;
      case 3:
        bytes = Buffer.concat([bytes.subarray(0, position), randomBytes(1 + integer(8)), bytes.subarray(position)]);
        break;
      default:
        bytes = bytes.subarray(0, position);
    }
  }
  return bytes;
}

function randomPieces(stream: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  let position = 0;
  while (position < stream.length) {
    const lengthBytes = 1 + integer(random() < 0.3 ? 4 : 64);
    pieces.push(stream.subarray(position, position + lengthBytes));
    position += lengthBytes;
  }
  return pieces;
}

function checkRequest(message: ClientMessage): string | undefined {
  if (message.kind !== 'request') return undefined;
  if ((message.type === CommandType.WRITE) !== (message.payload !== undefined)) return 'payload presence wrong';
  if (message.payload !== undefined && message.payload.length !== message.lengthBytes) return 'payload length wrong';
  if (!Number.isSafeInteger(message.offsetBytes) && message.offsetBytes !== Infinity) return 'offset not safe';
  return undefined;
}

// Returns a description of the first broken invariant, or undefined.
function runServerParser(stream: Buffer, startInTransmission: boolean): string | undefined {
  const parser = new ServerParser(SMALL_LIMITS);
  if (startInTransmission) {
    parser.push(Buffer.concat([serializeClientFlags(1), serializeOption(OptionType.GO)]));
    parser.next();
    parser.next();
    parser.enterTransmission();
  }
  let messageCount = 0;
  for (const piece of randomPieces(stream)) {
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      messageCount++;
      if (messageCount > stream.length / 4 + 2) return 'too many messages';
      const problem = checkRequest(message);
      if (problem !== undefined) return problem;
      if (message.kind === 'fatal') {
        if (parser.next() !== message) return 'fatal not sticky';
        break;
      }
      if (message.kind === 'option' && (message.option === OptionType.EXPORT_NAME || message.option === OptionType.GO)) parser.enterTransmission();
    }
  }
  return undefined;
}

function runClientParser(stream: Buffer, script: ClientScript): string | undefined {
  const parser = new ClientParser({ maxChunkPayloadBytes: 4096 });
  for (const [cookie, request] of script.requests ?? []) parser.expectReply(cookie, request);
  let messageCount = 0;
  for (const piece of randomPieces(stream)) {
    parser.push(piece);
    for (let message: ServerMessage | undefined = parser.next(); message !== undefined; message = parser.next()) {
      messageCount++;
      if (messageCount > stream.length / 4 + 2) return 'too many messages';
      if (message.kind === 'fatal') {
        if (parser.next() !== message) return 'fatal not sticky';
        break;
      }
      if (message.kind === 'optionReply' && message.option === OptionType.GO && message.replyType === OptionReplyType.ACK) parser.enterTransmission();
    }
  }
  return undefined;
}

const decoders: Array<(data: Buffer) => unknown> = [
  parseExportNameData,
  parseInfoOrGoData,
  parseMetaContextData,
  decodeServerReplyData,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeErrorOffsetPayload,
];

t.test('2000 random and mutated inputs never break an invariant', async (t) => {
  const clientStream = clientSession().stream;
  const serverConversations = [serverSession(), serverStructuredSession()];
  const failures: string[] = [];
  const attempt = (label: string, run: () => string | undefined): void => {
    try {
      const problem = run();
      if (problem !== undefined) failures.push(`${label}: ${problem}`);
    } catch (error) {
      failures.push(`${label}: threw ${String(error)}`);
    }
  };
  for (let round = 0; round < 2000; round++) {
    const label = `round ${round}`;
    switch (round % 5) {
      case 0:
        attempt(label, () => runServerParser(randomBytes(integer(300)), random() < 0.5));
        break;
      case 1:
        attempt(label, () => runServerParser(mutate(clientStream), false));
        break;
      case 2:
        attempt(label, () => runClientParser(randomBytes(integer(300)), serverConversations[integer(2)]!.script));
        break;
      case 3: {
        const conversation = serverConversations[integer(2)]!;
        attempt(label, () => runClientParser(mutate(conversation.stream), conversation.script));
        break;
      }
      default:
        attempt(label, () => {
          const data = random() < 0.5 ? randomBytes(integer(64)) : mutate(clientStream.subarray(integer(clientStream.length)));
          for (const decode of decoders) decode(data);
          return undefined;
        });
    }
    if (failures.length > 0) break;
  }
  t.same(failures, []);
});
