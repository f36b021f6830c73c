// The delta-map index's databases on a simulated machine, for crash tests of history on the
// simulated file system (test/support/simulated-file-system.ts). Each index folder gets an
// in-memory abstract-level database (memory-level) that remembers the writes made to it.
//
// The power-loss model is LevelDB's: writes go to its log in order, and recovery replays that log
// up to its first damaged record, so after a power loss a database holds a prefix of its write
// sequence. A write made with {sync: true} was durable when it resolved, with everything before
// it: the prefix holds it. A batch is all or nothing; a clear() deletes key by key (classic-level
// clears in several batches), so a crash can cut it short. A kill -9 keeps every completed write
// (they reached the operating system). Databases of a crashed machine refuse writes.

import { MemoryLevel } from 'memory-level';
import type { IndexDatabase, IndexDatabaseFactory } from '../../storage/index/map-store.js';
import { chance, randomInteger, type RandomSource } from './seeded-random.js';

type WriteOperation = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** One unit a crash keeps or loses whole, in the order the database took it. */
interface LoggedWrite {
  operations: WriteOperation[];
  sync: boolean;
}

interface RangeOptions {
  gt?: Buffer;
  gte?: Buffer;
  lt?: Buffer;
  lte?: Buffer;
  limit?: number;
  reverse?: boolean;
}

/** memory-level's private write methods, which the recording database wraps. */
interface PrivateWrites {
  _open(options: object): Promise<void>;
  _put(key: Buffer, value: Buffer, options: { sync?: boolean }): Promise<void>;
  _del(key: Buffer, options: { sync?: boolean }): Promise<void>;
  _batch(operations: WriteOperation[], options: { sync?: boolean }): Promise<void>;
}

const memoryWrites = MemoryLevel.prototype as unknown as PrivateWrites;

class Folder {
  /** What the database held when this machine started. */
  readonly startEntries: Map<string, Buffer>;
  /** Every write since, in order. */
  readonly writes: LoggedWrite[] = [];
  /** Writes [0, syncedCount) survive any crash. */
  syncedCount = 0;
  /** The contents now (for the next open on this machine). */
  readonly entries: Map<string, Buffer>;

  constructor(startEntries: Map<string, Buffer>) {
    this.startEntries = startEntries;
    this.entries = new Map(startEntries);
  }

  log(write: LoggedWrite): void {
    this.writes.push(write);
    applyWrite(this.entries, write);
    if (write.sync) this.syncedCount = this.writes.length;
  }

  /** The contents after a crash that kept writes [0, keptCount). */
  after(keptCount: number): Map<string, Buffer> {
    const entries = new Map(this.startEntries);
    for (const write of this.writes.slice(0, keptCount)) applyWrite(entries, write);
    return entries;
  }
}

function applyWrite(entries: Map<string, Buffer>, write: LoggedWrite): void {
  for (const operation of write.operations) {
    if (operation.type === 'put') entries.set(operation.key.toString('hex'), operation.value);
    else entries.delete(operation.key.toString('hex'));
  }
}

export interface IndexCrashReport {
  /** Writes lost by the crash, over every folder. */
  lostWrites: number;
  keptWrites: number;
}

export class SimulatedIndexDatabases {
  readonly crashReport: IndexCrashReport | null;
  private readonly folders: Map<string, Folder>;
  private crashed = false;
  /** Called before every write any database of this machine takes (crash points count them). */
  onWrite: () => void = () => undefined;

  constructor(state?: { folders: Map<string, Folder>; crashReport: IndexCrashReport }) {
    this.folders = state?.folders ?? new Map();
    this.crashReport = state?.crashReport ?? null;
  }

  get isCrashed(): boolean {
    return this.crashed;
  }

  /** Give this to Volume.open as its indexDatabase. */
  readonly factory: IndexDatabaseFactory = (directory) => {
    let folder = this.folders.get(directory);
    if (folder === undefined) {
      folder = new Folder(new Map());
      this.folders.set(directory, folder);
    }
    return createRecordingDatabase(this, folder);
  };

  /**
   * The databases a crash now could leave: after a power loss each holds a prefix of its writes
   * that contains every synced one (keptProbability 1 keeps all, 0 only the synced ones; default
   * a random cut); after a kill -9 every write.
   */
  crash(random: RandomSource, options: { process?: boolean; keepProbability?: number } = {}): SimulatedIndexDatabases {
    if (this.crashed) throw new Error('these simulated databases have already crashed');
    this.crashed = true;
    const report: IndexCrashReport = { lostWrites: 0, keptWrites: 0 };
    const folders = new Map<string, Folder>();
    for (const [directory, folder] of this.folders) {
      const keptCount = options.process === true ? folder.writes.length : keptPrefix(random, folder, options.keepProbability);
      report.keptWrites += keptCount;
      report.lostWrites += folder.writes.length - keptCount;
      folders.set(directory, new Folder(folder.after(keptCount)));
    }
    return new SimulatedIndexDatabases({ folders, crashReport: report });
  }

  /** Every write must go through here: it may crash the machine first (the write then fails). */
  beforeWrite(): void {
    if (!this.crashed) this.onWrite();
    this.assertAlive();
  }

  assertAlive(): void {
    if (this.crashed) throw new Error('the machine of this index database crashed');
  }
}

function keptPrefix(random: RandomSource, folder: Folder, keepProbability: number | undefined): number {
  const { syncedCount } = folder;
  const total = folder.writes.length;
  if (keepProbability !== undefined) return chance(random, keepProbability) ? total : syncedCount;
  return randomInteger(random, syncedCount, total);
}

/** A memory-level database that starts with the folder's contents and logs every write to it. */
function createRecordingDatabase(machine: SimulatedIndexDatabases, folder: Folder): IndexDatabase {
  class RecordingLevel extends MemoryLevel<Buffer, Buffer> {
    async _open(options: object): Promise<void> {
      await memoryWrites._open.call(this, options);
      const entries = [...folder.entries].map(([key, value]): WriteOperation => ({ type: 'put', key: Buffer.from(key, 'hex'), value }));
      await memoryWrites._batch.call(this, entries, {});
    }

    async _put(key: Buffer, value: Buffer, options: { sync?: boolean }): Promise<void> {
      await this.logged([{ type: 'put', key, value }], options.sync === true);
    }

    async _del(key: Buffer, options: { sync?: boolean }): Promise<void> {
      await this.logged([{ type: 'del', key }], options.sync === true);
    }

    async _batch(operations: WriteOperation[], options: { sync?: boolean }): Promise<void> {
      await this.logged(
        operations.map((operation) => (operation.type === 'put' ? { type: 'put', key: operation.key, value: operation.value } : { type: 'del', key: operation.key })),
        options.sync === true,
      );
    }

    /** Key by key, as several batches may leave it. */
    async _clear(options: RangeOptions): Promise<void> {
      const { gt, gte, lt, lte, limit, reverse } = options;
      const range = { ...(gt && { gt }), ...(gte && { gte }), ...(lt && { lt }), ...(lte && { lte }), limit: limit ?? -1, reverse: reverse ?? false };
      for (const key of await this.keys(range).all()) await this.logged([{ type: 'del', key }], false);
    }

    private async logged(operations: WriteOperation[], sync: boolean): Promise<void> {
      machine.beforeWrite();
      await memoryWrites._batch.call(this, operations, {});
      machine.assertAlive(); // a crash while it was in flight: lost, and never acknowledged
      folder.log({ operations, sync });
    }
  }
  return new RecordingLevel({ keyEncoding: 'buffer', valueEncoding: 'buffer' }) as unknown as IndexDatabase;
}
