// Crash test: the real appliance process under write load (two connections, writes with and
// without FUA, write-zeroes, trims, flushes) killed with `kill -9` at a random moment, then
// restarted, many times over the same data folder.
//
// Invariants checked after every restart:
//   1. Every write acknowledged with FUA, or acknowledged before a FLUSH that was acknowledged,
//      is present: each block holds its last such write or a write issued after it, never an
//      older one and never anything that was not written.
//   2. No acknowledged-durable write is missing from the log: its record is found, in order.
//   3. The live image equals a replay of the whole log (checked after an orderly stop, when the
//      image is closed), byte for byte.
//   4. The appliance comes back every time, and keeps serving afterwards.

import t from 'tap';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { NbdClient } from '../../transfer/nbd-client.js';
import { RecordKind, decodePayload, logStart, nodeFileSystem, scanLog, volumePaths } from '../../storage/index.js';
import { startAppliance } from '../support/appliance.js';
import { seededRandom } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const blockBytes = 4096;
const blockCount = 4096; // the load touches the first 16 MiB of a 64 MiB volume
const volumeSizeBytes = 64 * 1024 * 1024;
const cycleCount = Number(process.env.CRASH_CYCLES ?? 12);
const seed = Number(process.env.CRASH_SEED ?? Date.now() % 1_000_000);
const magic = Buffer.from('CDPCRASH');
/** Each cycle's load must have this many writes acknowledged durable before the kill. */
const durableWritesPerCycleMin = 20;

function blockContent(writeId: number, block: number): Buffer {
  const content = Buffer.allocUnsafe(blockBytes);
  magic.copy(content, 0);
  content.writeUInt32BE(Math.floor(writeId / 2 ** 32), 8);
  content.writeUInt32BE(writeId >>> 0, 12);
  content.writeUInt32BE(block, 16);
  let fill = (writeId * 2654435761) >>> 0;
  for (let offset = 20; offset < blockBytes; offset += 4) {
    fill = (fill * 1103515245 + 12345) >>> 0;
    content.writeUInt32BE(fill, offset);
  }
  return content;
}

/** The write a block holds: its id, 0 for all zeroes, or -1 when it is not a write of ours. */
function identify(content: Buffer, block: number): number {
  if (content.every((byte) => byte === 0)) return 0;
  if (!content.subarray(0, 8).equals(magic) || content.readUInt32BE(16) !== block) return -1;
  const writeId = content.readUInt32BE(8) * 2 ** 32 + content.readUInt32BE(12);
  return blockContent(writeId, block).equals(content) ? writeId : -1;
}

interface Operation {
  /** Write id, or 0 for a zero-write/trim. */
  writeId: number;
  acknowledged: boolean;
}

/** What each block may hold: its operations in issue order, and the last durable one. */
class Model {
  readonly operations: Operation[][] = Array.from({ length: blockCount }, () => []);
  readonly durableIndex: number[] = new Array<number>(blockCount).fill(-1);
  readonly durableWrites = new Map<number, number>(); // writeId -> block, acknowledged durable
  /** Writes made durable since the count was last reset (one kill cycle). */
  durableCount = 0;
  private readonly acknowledgedSinceFlush = new Set<Operation & { block: number }>();

  issue(block: number, writeId: number): Operation & { block: number } {
    const operation = { writeId, acknowledged: false, block };
    this.operations[block]!.push(operation);
    return operation;
  }

  acknowledge(operation: Operation & { block: number }, durable: boolean): void {
    operation.acknowledged = true;
    if (durable) this.makeDurable(operation);
    else this.acknowledgedSinceFlush.add(operation);
  }

  /** A FLUSH was sent: returns what it will cover (everything acknowledged before it was sent). */
  flushCovers(): Array<Operation & { block: number }> {
    const covered = [...this.acknowledgedSinceFlush];
    this.acknowledgedSinceFlush.clear();
    return covered;
  }

  makeDurable(operation: Operation & { block: number }): void {
    const index = this.operations[operation.block]!.indexOf(operation);
    if (index > this.durableIndex[operation.block]!) this.durableIndex[operation.block] = index;
    if (operation.writeId !== 0 && !this.durableWrites.has(operation.writeId)) {
      this.durableWrites.set(operation.writeId, operation.block);
      this.durableCount++;
    }
  }

  /** Check what a block holds; returns a problem or null. Then the block holds exactly that. */
  settle(block: number, heldId: number): string | null {
    const operations = this.operations[block]!;
    const durable = this.durableIndex[block]!;
    const candidates = durable < 0 ? [{ writeId: 0, acknowledged: true }, ...operations] : operations.slice(durable);
    const index = candidates.findIndex((operation) => operation.writeId === heldId);
    if (heldId === -1 || index < 0) {
      return `block ${block} holds ${heldId === -1 ? 'foreign data' : `write ${heldId}`}; allowed: ${candidates.map((operation) => operation.writeId).join(',')}`;
    }
    // Recovery made what survived durable; what did not survive is gone for good.
    const survivor = { writeId: heldId, acknowledged: true, block };
    this.operations[block] = [survivor];
    this.durableIndex[block] = 0;
    this.acknowledgedSinceFlush.clear();
    return null;
  }
}

/** The load's switch: `killed` is set just before the kill; a request that fails before it is a bug. */
interface LoadControl {
  now: boolean;
  killed: boolean;
  unexpectedFailures: string[];
}

async function runLoad(clients: NbdClient[], model: Model, random: () => number, nextWriteId: () => number, stop: LoadControl): Promise<void> {
  const busy = new Set<number>();
  const pickBlock = (): number => {
    for (;;) {
      const block = Math.floor(random() * blockCount);
      if (!busy.has(block)) return block;
    }
  };
  const worker = async (client: NbdClient): Promise<void> => {
    try {
      await work(client);
    } catch (error) {
      // After the kill every request in flight fails; before it, none may.
      if (!stop.killed) stop.unexpectedFailures.push(error instanceof Error ? error.message : String(error));
    }
  };
  const work = async (client: NbdClient): Promise<void> => {
    while (!stop.now) {
      const choice = random();
      if (choice < 0.12) {
        const covered = model.flushCovers();
        await client.flush();
        for (const operation of covered) model.makeDurable(operation);
        continue;
      }
      const block = pickBlock();
      busy.add(block);
      try {
        if (choice < 0.2) {
          const operation = model.issue(block, 0);
          if (choice < 0.16) await client.writeZeroes(block * blockBytes, blockBytes);
          else await client.trim(block * blockBytes, blockBytes);
          model.acknowledge(operation, false);
        } else {
          const writeId = nextWriteId();
          const fua = random() < 0.25;
          const operation = model.issue(block, writeId);
          await client.write(block * blockBytes, blockContent(writeId, block), { fua });
          model.acknowledge(operation, fua);
        }
      } finally {
        busy.delete(block);
      }
    }
  };
  const workers: Promise<void>[] = [];
  for (const client of clients) for (let lane = 0; lane < 8; lane++) workers.push(worker(client));
  await Promise.all(workers);
}

/** Read every block of the load's span through a fresh connection and check it against the model. */
async function settleEveryBlock(nbdSocket: string, model: Model): Promise<string[]> {
  const reader = await NbdClient.connect({ kind: 'unix', path: nbdSocket }, { exportName: 'vol0' });
  const image = await reader.read(0, blockCount * blockBytes);
  await reader.disconnect();
  const problems: string[] = [];
  for (let block = 0; block < blockCount; block++) {
    const problem = model.settle(block, identify(image.subarray(block * blockBytes, (block + 1) * blockBytes), block));
    if (problem !== null) problems.push(problem);
  }
  return problems;
}

/** Replay the whole log onto zeroes: what the live image must equal. */
function replayLog(volumeDirectory: string): Buffer {
  const image = Buffer.alloc(volumeSizeBytes);
  const log = volumePaths(volumeDirectory).log;
  scanLog(nodeFileSystem, log, { from: logStart(nodeFileSystem, log)!, expectedSequence: 1, withPayload: true }, ({ header, payload }) => {
    if (header.kind === RecordKind.data) decodePayload(payload!, header.flags, header.lengthBytes).copy(image, header.offsetBytes);
    else if (header.kind === RecordKind.zeroes || header.kind === RecordKind.trim) image.fill(0, header.offsetBytes, header.offsetBytes + header.lengthBytes);
  });
  return image;
}

/** Write ids of every data record in the log, in order. */
function loggedWriteIds(volumeDirectory: string): Set<number> {
  const ids = new Set<number>();
  const log = volumePaths(volumeDirectory).log;
  scanLog(nodeFileSystem, log, { from: logStart(nodeFileSystem, log)!, withPayload: true }, ({ header, payload: stored }) => {
    if (header.kind !== RecordKind.data || stored === null) return;
    const payload = decodePayload(stored, header.flags, header.lengthBytes);
    for (let offset = 0; offset + blockBytes <= payload.length; offset += blockBytes) {
      const block = (header.offsetBytes + offset) / blockBytes;
      const id = identify(payload.subarray(offset, offset + blockBytes), block);
      if (id > 0) ids.add(id);
    }
  });
  return ids;
}

t.test(`kill -9 under load, ${cycleCount} times (seed ${seed})`, async (t) => {
  const dataDirectory = temporaryDirectory(t);
  const volumeDirectory = `${dataDirectory}/volumes/vol0`;
  const random = seededRandom(seed);
  const model = new Model();
  let writeCounter = 0;
  const nextWriteId = (): number => ++writeCounter;
  let tornTails = 0;
  let replayedRecords = 0;

  for (let cycle = 0; cycle < cycleCount; cycle++) {
    const appliance = await startAppliance(t, { dataDirectory, volumeSize: String(volumeSizeBytes) });
    const recoveryLine = appliance.logEntries().find((entry) => entry.msg === 'volume opened');
    if (recoveryLine?.tear) tornTails++;
    replayedRecords += Number(recoveryLine?.replayedRecords ?? 0);

    // Invariant 1 (and 4): after a restart, every block is as the model allows.
    if (cycle > 0) {
      const problems = await settleEveryBlock(appliance.nbdSocket, model);
      t.same(problems.slice(0, 5), [], `cycle ${cycle}: every durable write survived the kill`);
      if (problems.length > 0) {
        await appliance.kill();
        return;
      }
    }

    const clients = [
      await NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0' }),
      await NbdClient.connect({ kind: 'tcp', host: '127.0.0.1', port: appliance.nbdPort }, { exportName: 'vol0' }),
    ];
    const stop: LoadControl = { now: false, killed: false, unexpectedFailures: [] };
    model.durableCount = 0;
    const load = runLoad(clients, model, random, nextWriteId, stop);
    // The kill lands at a random moment once the load is acknowledging durable writes.
    const deadlineMs = Date.now() + 30_000;
    while (model.durableCount < durableWritesPerCycleMin && stop.unexpectedFailures.length === 0 && Date.now() < deadlineMs) await sleep(10);
    await sleep(Math.floor(random() * 600));
    stop.killed = true;
    await appliance.kill();
    stop.now = true;
    await load;
    for (const client of clients) client.destroy();
    t.same(stop.unexpectedFailures.slice(0, 5), [], `cycle ${cycle}: no request failed before the kill`);
    t.ok(model.durableCount >= durableWritesPerCycleMin, `cycle ${cycle}: ${model.durableCount} writes acknowledged durable (FUA or flushed) before the kill`);
  }

  // Invariants 2 and 3, checked on the files after one more recovery and an orderly stop.
  const last = await startAppliance(t, { dataDirectory, volumeSize: String(volumeSizeBytes) });
  const problems = await settleEveryBlock(last.nbdSocket, model);
  t.same(problems.slice(0, 5), [], 'after the last kill every durable write survived');
  t.equal(await last.stop(), 0, 'orderly stop');

  const logged = loggedWriteIds(volumeDirectory);
  const missing = [...model.durableWrites.keys()].filter((writeId) => !logged.has(writeId));
  t.same(missing.slice(0, 10), [], `all ${model.durableWrites.size} acknowledged-durable writes are in the log`);

  const primary = fs.readFileSync(volumePaths(volumeDirectory).primary);
  const replay = replayLog(volumeDirectory);
  t.ok(primary.equals(replay), 'the live image equals a replay of the whole log');
  t.ok(writeCounter > cycleCount * 100, `the load wrote (${writeCounter} writes)`);
  t.comment(`writes ${writeCounter}, durable ${model.durableWrites.size}, torn tails ${tornTails}, replayed records ${replayedRecords}`);
});
