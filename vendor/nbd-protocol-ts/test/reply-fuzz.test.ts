// Randomized hostile servers against the client parser's reply checks. Each case registers a
// few requests, builds the replies a server could send them (valid ones, then spoiled: offsets
// moved, lengths changed, chunks dropped, repeated or retyped, cookies swapped, DONE moved,
// simple and structured forms mixed, bytes flipped), and feeds them in random pieces.
// Invariants, checked against a model of the requests kept by the test, not by the parser:
//  1. push() and next() never throw.
//  2. Every message the parser delivers fits a request in flight: a simple reply carries READ
//     data exactly when its request is a successful READ, of exactly its length; a chunk
//     arrives only if structured replies were negotiated, for a request not yet done; content
//     chunks lie inside their READ and overlap nothing described before; a BLOCK_STATUS chunk
//     answers a selected context once.
//  3. A reply that ends without an error chunk answered all of its request (a READ's every
//     byte, a BLOCK_STATUS's every context).
//  4. Once fatal, the parser stays fatal; messages are bounded by the input size.
// Coverage is asserted too: enough cases end fatal with each code, and enough end clean, so
// the generator keeps reaching the checks. The PRNG is seeded so any failure reproduces.
import t from 'tap';
import {
  ChunkType,
  CommandFlag,
  CommandType,
  Errno,
  ReplyFlag,
  decodeBlockStatusPayload,
  decodeOffsetDataPayload,
  decodeOffsetHolePayload,
  isErrorChunkType,
  type ExpectedRequest,
  type ServerMessage,
} from '../src/index.js';
import { seededRandom } from './helpers.js';
import { blockStatusPayload, errorPayload, offsetDataPayload, offsetHolePayload, rawChunk, rawSimpleReply, transmissionClient, type Negotiated } from './replies.js';

const CASE_COUNT = 3000;
const random = seededRandom(0x726570);
const integer = (limit: number): number => Math.floor(random() * limit);
const chance = (probability: number): boolean => random() < probability;
function pick<T>(items: readonly T[]): T {
  return items[integer(items.length)]!;
}

/** One reply message before it is put on the wire, so the spoilers can change its fields. */
type Unit =
  | { kind: 'simple'; cookie: bigint; error: number; data: Buffer }
  | { kind: 'chunk'; cookie: bigint; flags: number; type: number; payload: Buffer; declaredLengthBytes?: number };

const CONTEXT_IDS = [1, 2];

function randomRequest(structured: boolean): ExpectedRequest {
  const type = pick(structured ? [CommandType.READ, CommandType.READ, CommandType.WRITE, CommandType.FLUSH, CommandType.BLOCK_STATUS, CommandType.TRIM] : [CommandType.READ, CommandType.READ, CommandType.WRITE, CommandType.FLUSH]);
  const offsetBytes = integer(4) === 0 ? 0 : integer(1 << 20);
  const lengthBytes = type === CommandType.FLUSH ? 0 : type === CommandType.BLOCK_STATUS ? 1 + integer(64) : integer(65);
  let flags = 0;
  if (type === CommandType.READ && structured && chance(0.2)) flags |= CommandFlag.DF;
  if (type === CommandType.BLOCK_STATUS && chance(0.3)) flags |= CommandFlag.REQ_ONE;
  return { type, flags, offsetBytes, lengthBytes };
}

function patterned(lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) bytes[index] = integer(256);
  return bytes;
}

/** A reply the spec allows, as units in order. */
function validReply(cookie: bigint, request: ExpectedRequest, structured: boolean): Unit[] {
  if (!structured) {
    const fails = chance(0.15);
    return [{ kind: 'simple', cookie, error: fails ? Errno.EIO : 0, data: request.type === CommandType.READ && !fails ? patterned(request.lengthBytes) : Buffer.alloc(0) }];
  }
  if (chance(0.1)) return [{ kind: 'chunk', cookie, flags: ReplyFlag.DONE, type: ChunkType.ERROR, payload: errorPayload(Errno.EIO, 'failed') }];
  const units: Unit[] = [];
  if (request.type === CommandType.READ) {
    const cuts = [0, request.lengthBytes];
    const pieceCount = (request.flags & CommandFlag.DF) !== 0 ? 1 : 1 + integer(4);
    for (let cut = 1; cut < pieceCount && request.lengthBytes > 1; cut++) cuts.push(1 + integer(request.lengthBytes - 1));
    const sorted = [...new Set(cuts)].sort((left, right) => left - right);
    for (let index = 0; index + 1 < sorted.length; index++) {
      const startBytes = request.offsetBytes + sorted[index]!;
      const lengthBytes = sorted[index + 1]! - sorted[index]!;
      const asData = (request.flags & CommandFlag.DF) !== 0 || chance(0.6);
      units.push({ kind: 'chunk', cookie, flags: 0, type: asData ? ChunkType.OFFSET_DATA : ChunkType.OFFSET_HOLE, payload: asData ? offsetDataPayload(startBytes, patterned(lengthBytes)) : offsetHolePayload(startBytes, lengthBytes) });
    }
    shuffle(units);
  } else if (request.type === CommandType.BLOCK_STATUS) {
    for (const contextId of CONTEXT_IDS) {
      const oneOnly = (request.flags & CommandFlag.REQ_ONE) !== 0;
      const extents: Array<[number, number]> = [[1 + integer(request.lengthBytes), integer(4)]];
      if (!oneOnly) {
        let usedBytes = extents[0]![0];
        while (usedBytes < request.lengthBytes && chance(0.5)) {
          const lengthBytes = 1 + integer(request.lengthBytes);
          extents.push([lengthBytes, integer(4)]);
          usedBytes += lengthBytes;
        }
      }
      units.push({ kind: 'chunk', cookie, flags: 0, type: ChunkType.BLOCK_STATUS, payload: blockStatusPayload(contextId, extents) });
    }
  } else if (chance(0.3)) {
    return [{ kind: 'simple', cookie, error: chance(0.5) ? 0 : Errno.EPERM, data: Buffer.alloc(0) }];
  } else if (chance(0.2) && request.lengthBytes > 0) {
    units.push({ kind: 'chunk', cookie, flags: 0, type: ChunkType.ERROR_OFFSET, payload: errorPayload(Errno.EIO, 'bad block', { offsetBytes: request.offsetBytes + integer(request.lengthBytes) }) });
  }
  const last = units[units.length - 1];
  if (last !== undefined && last.kind === 'chunk' && chance(0.5)) last.flags |= ReplyFlag.DONE;
  else units.push({ kind: 'chunk', cookie, flags: ReplyFlag.DONE, type: ChunkType.NONE, payload: Buffer.alloc(0) });
  return units;
}

function shuffle<T>(items: T[]): void {
  for (let index = items.length - 1; index > 0; index--) {
    const other = integer(index + 1);
    [items[index], items[other]] = [items[other]!, items[index]!];
  }
}

/** Spoils one unit the way a broken or hostile server would. */
function spoil(units: Unit[], cookies: bigint[]): void {
  if (units.length === 0) return;
  const index = integer(units.length);
  const unit = units[index]!;
  switch (integer(10)) {
    case 0: // move an offset a little or far
      if (unit.kind === 'chunk' && unit.payload.length >= 8 && !isErrorChunkType(unit.type)) {
        const moved = unit.payload.readBigUInt64BE(0) + BigInt(pick([-1, 1, -64, 64, 2 ** 40]));
        unit.payload.writeBigUInt64BE(moved < 0n ? 2n ** 64n + moved : moved, 0);
      }
      break;
    case 1: // grow or shrink a payload, or make the header lie about it
      if (unit.kind === 'chunk') {
        if (chance(0.5)) unit.payload = chance(0.5) ? Buffer.concat([unit.payload, Buffer.alloc(1 + integer(8))]) : unit.payload.subarray(0, integer(unit.payload.length + 1));
        else unit.declaredLengthBytes = pick([0, unit.payload.length + 1, 0xffffffff]);
      } else {
        unit.data = unit.data.subarray(0, integer(unit.data.length + 1));
      }
      break;
    case 2:
      units.splice(index, 1);
      break;
    case 3:
      units.splice(index, 0, { ...unit });
      break;
    case 4: // another cookie: in flight, done, or never sent
      unit.cookie = chance(0.5) ? pick(cookies) : BigInt(1000 + integer(5));
      break;
    case 5:
      if (unit.kind === 'chunk') unit.type = pick([ChunkType.NONE, ChunkType.OFFSET_DATA, ChunkType.OFFSET_HOLE, ChunkType.BLOCK_STATUS, ChunkType.BLOCK_STATUS_EXT, ChunkType.ERROR, ChunkType.ERROR_OFFSET, 3, 0x8123]);
      break;
    case 6:
      if (unit.kind === 'chunk') unit.flags ^= ReplyFlag.DONE;
      break;
    case 7: // the other form of reply
      units[index] =
        unit.kind === 'chunk'
          ? { kind: 'simple', cookie: unit.cookie, error: 0, data: unit.payload.subarray(Math.min(8, unit.payload.length)) }
          : { kind: 'chunk', cookie: unit.cookie, flags: ReplyFlag.DONE, type: ChunkType.OFFSET_DATA, payload: offsetDataPayload(0, unit.data.length > 0 ? unit.data : Buffer.alloc(1)) };
      break;
    case 8: // an error chunk with lying lengths
      units.splice(index, 0, { kind: 'chunk', cookie: unit.cookie, flags: chance(0.5) ? ReplyFlag.DONE : 0, type: pick([ChunkType.ERROR, ChunkType.ERROR_OFFSET, 0x8123]), payload: errorPayload(pick([0, Errno.EIO]), 'x'.repeat(integer(20)), { declaredMessageBytes: integer(40), trailingBytes: integer(3) }) });
      break;
    default: // a BLOCK_STATUS chunk for a context that may not be selected
      if (unit.kind === 'chunk' && unit.type === ChunkType.BLOCK_STATUS && unit.payload.length >= 4) unit.payload.writeUInt32BE(pick([1, 2, 3]), 0);
  }
}

function serialize(unit: Unit): Buffer {
  return unit.kind === 'simple' ? rawSimpleReply(unit.cookie, unit.error, unit.data) : rawChunk(unit.cookie, unit.flags, unit.type, unit.payload, unit.declaredLengthBytes ?? unit.payload.length);
}

function flipBytes(stream: Buffer): Buffer {
  const bytes = Buffer.from(stream);
  for (let flip = 1 + integer(3); flip > 0 && bytes.length > 0; flip--) {
    const position = integer(bytes.length);
    bytes[position] = bytes[position]! ^ (1 << integer(8));
  }
  return bytes;
}

function randomPieces(stream: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  for (let position = 0; position < stream.length; ) {
    const lengthBytes = 1 + integer(chance(0.3) ? 4 : 96);
    pieces.push(stream.subarray(position, position + lengthBytes));
    position += lengthBytes;
  }
  return pieces;
}

/** The test's own account of a request and what its reply has said. */
interface ModelRequest {
  request: ExpectedRequest;
  done: boolean;
  errored: boolean;
  /** READ: which bytes were described. */
  covered: boolean[];
  contexts: Set<number>;
}

/** Returns the first broken invariant for this message, or undefined. */
function judge(message: ServerMessage, model: Map<bigint, ModelRequest>, structured: boolean): string | undefined {
  if (message.kind === 'simpleReply') {
    const entry = model.get(message.cookie);
    if (entry === undefined || entry.done) return `simple reply for cookie ${message.cookie}, not in flight`;
    if (structured && entry.request.type === CommandType.READ) return 'simple reply to a READ under structured replies';
    const wantsData = entry.request.type === CommandType.READ && message.error === 0;
    if (wantsData !== (message.data !== undefined)) return 'data presence wrong';
    if (message.data !== undefined && message.data.length !== entry.request.lengthBytes) return 'READ data of the wrong length';
    if (entry.request.type === CommandType.BLOCK_STATUS && message.error === 0) return 'successful simple BLOCK_STATUS';
    entry.done = true;
    return undefined;
  }
  if (message.kind !== 'structuredChunk') return `unexpected ${message.kind} in transmission`;
  if (!structured) return 'chunk without structured replies';
  const entry = model.get(message.cookie);
  if (entry === undefined || entry.done) return `chunk for cookie ${message.cookie}, not in flight`;
  const { request } = entry;
  if (isErrorChunkType(message.type)) {
    entry.errored = true;
  } else if (message.type === ChunkType.OFFSET_DATA || message.type === ChunkType.OFFSET_HOLE) {
    if (request.type !== CommandType.READ) return 'content chunk for something other than a READ';
    const decodedData = message.type === ChunkType.OFFSET_DATA ? decodeOffsetDataPayload(message.payload) : null;
    const decodedHole = message.type === ChunkType.OFFSET_HOLE ? decodeOffsetHolePayload(message.payload) : null;
    const range = decodedData !== null && !(decodedData instanceof Error) ? { offsetBytes: decodedData.offsetBytes, lengthBytes: decodedData.data.length } : decodedHole !== null && !(decodedHole instanceof Error) ? { offsetBytes: decodedHole.offsetBytes, lengthBytes: decodedHole.holeLengthBytes } : null;
    if (range === null) return 'content chunk that does not decode';
    const startBytes = range.offsetBytes - request.offsetBytes;
    if (!(startBytes >= 0 && startBytes + range.lengthBytes <= request.lengthBytes)) return `content ${range.offsetBytes}+${range.lengthBytes} outside the READ`;
    for (let at = startBytes; at < startBytes + range.lengthBytes; at++) {
      if (entry.covered[at]) return `byte ${at} described twice`;
      entry.covered[at] = true;
    }
  } else if (message.type === ChunkType.BLOCK_STATUS) {
    const decoded = decodeBlockStatusPayload(message.payload);
    if (decoded instanceof Error) return 'BLOCK_STATUS that does not decode';
    if (request.type !== CommandType.BLOCK_STATUS) return 'BLOCK_STATUS chunk for another command';
    if (!CONTEXT_IDS.includes(decoded.contextId) || entry.contexts.has(decoded.contextId)) return 'BLOCK_STATUS context unselected or repeated';
    entry.contexts.add(decoded.contextId);
  } else if (message.type !== ChunkType.NONE) {
    return `chunk type ${message.type} delivered`;
  }
  if ((message.flags & ReplyFlag.DONE) === 0) return undefined;
  entry.done = true;
  if (entry.errored) return undefined;
  if (request.type === CommandType.READ && entry.covered.some((covered) => !covered)) return 'READ done with bytes never described';
  if (request.type === CommandType.BLOCK_STATUS && entry.contexts.size !== CONTEXT_IDS.length) return 'BLOCK_STATUS done without every context';
  return undefined;
}

interface CaseResult {
  problem?: string;
  outcome: string;
}

function runCase(): CaseResult {
  const structured = chance(0.7);
  const negotiated: Negotiated = { structuredReplies: structured, contextIds: structured ? CONTEXT_IDS : [] };
  const parser = transmissionClient(negotiated);
  const model = new Map<bigint, ModelRequest>();
  const cookies: bigint[] = [];
  let units: Unit[] = [];
  for (let index = 0; index < 1 + integer(4); index++) {
    const cookie = BigInt(index + 1);
    const request = randomRequest(structured);
    parser.expectReply(cookie, request);
    model.set(cookie, { request, done: false, errored: false, covered: new Array<boolean>(request.lengthBytes).fill(false), contexts: new Set() });
    cookies.push(cookie);
    units.push(...validReply(cookie, request, structured));
  }
  if (chance(0.5)) units = interleave(units);
  const spoilCount = chance(0.2) ? 0 : 1 + integer(3);
  for (let spoiled = 0; spoiled < spoilCount; spoiled++) spoil(units, cookies);
  let stream: Buffer = Buffer.concat(units.map(serialize));
  if (chance(0.15)) stream = flipBytes(stream);

  let messageCount = 0;
  for (const piece of randomPieces(stream)) {
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      if (++messageCount > stream.length / 16 + 2) return { problem: 'too many messages', outcome: 'broken' };
      if (message.kind === 'fatal') {
        if (parser.next() !== message) return { problem: 'fatal not sticky', outcome: 'broken' };
        return { outcome: message.error.code };
      }
      const problem = judge(message, model, structured);
      if (problem !== undefined) return { problem, outcome: 'broken' };
    }
  }
  return { outcome: 'clean' };
}

/** Replies to different requests may interleave (proto.md allows it); a reply's own order stays. */
function interleave(units: Unit[]): Unit[] {
  const queues = new Map<bigint, Unit[]>();
  for (const unit of units) queues.set(unit.cookie, [...(queues.get(unit.cookie) ?? []), unit]);
  const result: Unit[] = [];
  while (queues.size > 0) {
    const cookie = pick([...queues.keys()]);
    const queue = queues.get(cookie)!;
    result.push(queue.shift()!);
    if (queue.length === 0) queues.delete(cookie);
  }
  return result;
}

t.test(`${CASE_COUNT} hostile reply streams: every delivered reply fits its request`, async (t) => {
  const outcomes = new Map<string, number>();
  const failures: string[] = [];
  for (let index = 0; index < CASE_COUNT && failures.length === 0; index++) {
    try {
      const result = runCase();
      if (result.problem !== undefined) failures.push(`case ${index}: ${result.problem}`);
      outcomes.set(result.outcome, (outcomes.get(result.outcome) ?? 0) + 1);
    } catch (error) {
      failures.push(`case ${index}: threw ${String(error)}`);
    }
  }
  t.same(failures, []);
  t.comment(JSON.stringify(Object.fromEntries([...outcomes].sort())));
  // The generator must keep reaching the checks, not only the magic numbers.
  t.ok((outcomes.get('clean') ?? 0) >= CASE_COUNT / 10, 'many streams pass every check');
  for (const code of ['UNKNOWN_COOKIE', 'OUT_OF_RANGE', 'UNEXPECTED_REPLY', 'INCOMPLETE_REPLY', 'BAD_LENGTH', 'STRUCTURED_REPLY_NOT_NEGOTIATED', 'TRUNCATED', 'BAD_VALUE']) {
    t.ok((outcomes.get(code) ?? 0) >= 10, `at least 10 streams end ${code}`);
  }
});
