// The LevelDB database of a volume's delta-map index (docs/formats/delta-map.md), and the reads
// of what is stored in it: the checkpoint, map summaries, windows' records, extents by chunk.
// Every other file of the index reads and writes the database through here.

import fs from 'node:fs';
import type { AbstractBatchOptions, AbstractLevel } from 'abstract-level';
import { Level } from 'level';
import { StorageError, assert } from '../errors.js';
import { indexLimits } from '../limits.js';
import type { LogPosition } from '../write-log/batch.js';
import type { Extent } from './extents.js';
import {
  builtCountRange,
  checkpointKey,
  chunkExtentsKey,
  chunkExtentsRange,
  decodeChunkExtents,
  decodeChunkExtentsKey,
  decodeMapInfo,
  decodeWindowEndPosition,
  decodeWindowIndex,
  decodeWindowRecords,
  indexFormatVersion,
  indexFormatVersionsReadable,
  mapInfoKey,
  versionKey,
  windowBySequenceEnd,
  windowByTimeEnd,
  windowByTimeKey,
  decodeWindowByTimeKey,
  windowBySequenceKey,
  windowRecordsKey,
  type IndexCheckpoint,
  type MapInfo,
  type MapReference,
  type WindowRecord,
} from './map-keys.js';

export type IndexBatch = Array<{ type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer }>;

/** The index's database: LevelDB in a volume's index folder, or another abstract-level database (tests). */
export type IndexDatabase = AbstractLevel<string | Buffer | Uint8Array, Buffer, Buffer>;

/** Makes the (unopened) database of the index folder `directory`. */
export type IndexDatabaseFactory = (directory: string) => IndexDatabase;

export const levelIndexDatabase: IndexDatabaseFactory = (directory) => new Level<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });

export class MapStore {
  readonly directory: string;
  readonly db: IndexDatabase;
  /** Windows [0, windowCount) are cut, through mappedThroughSequence. */
  checkpoint: IndexCheckpoint;
  /** Merged maps built per level (index 0 unused: level 0 is checkpoint.windowCount). */
  private readonly mergedCounts: number[] = [0];

  private constructor(directory: string, db: IndexDatabase, checkpoint: IndexCheckpoint) {
    this.directory = directory;
    this.db = db;
    this.checkpoint = checkpoint;
  }

  /** Open (creating if needed) the database of a volume whose log starts at firstPosition. */
  static async open(directory: string, firstPosition: LogPosition, openDatabase: IndexDatabaseFactory = levelIndexDatabase): Promise<MapStore> {
    const db = openDatabase(directory);
    await db.open();
    try {
      const version = await db.get(versionKey);
      if (version === undefined) {
        const fresh: IndexCheckpoint = { windowCount: 0, mappedThroughSequence: 0, nextPosition: firstPosition };
        await db.batch([
          { type: 'put', key: versionKey, value: Buffer.from(String(indexFormatVersion)) },
          { type: 'put', key: checkpointKey, value: Buffer.from(JSON.stringify(fresh)) },
        ]);
      } else if (!indexFormatVersionsReadable.includes(Number(version.toString()))) {
        throw new StorageError('ECORRUPT', `${directory}: unsupported index format version ${version.toString()}`);
      } else if (version.toString() !== String(indexFormatVersion)) {
        await db.put(versionKey, Buffer.from(String(indexFormatVersion))); // version 1 reads as 2 without the new keys
      }
      const checkpoint = JSON.parse((await db.get(checkpointKey))!.toString('utf8')) as IndexCheckpoint;
      const store = new MapStore(directory, db, checkpoint);
      for await (const [key, value] of db.iterator(builtCountRange)) store.mergedCounts[key[1]!] = decodeWindowIndex(value);
      for (let level = 1; level < store.mergedCounts.length; level++) store.mergedCounts[level] ??= 0;
      return store;
    } catch (error) {
      await db.close();
      throw error;
    }
  }

  /** Maps built on a level (level 0: windows). */
  builtCount(level: number): number {
    return level === 0 ? this.checkpoint.windowCount : (this.mergedCounts[level] ?? 0);
  }

  /** Maps built per level (level 0: windows). */
  get builtCounts(): readonly number[] {
    return [this.checkpoint.windowCount, ...this.mergedCounts.slice(1)];
  }

  noteMerged(map: MapReference): void {
    this.mergedCounts[map.level] = map.index + 1;
  }

  async batch(operations: IndexBatch): Promise<void> {
    await this.db.batch(operations);
  }

  /** A batch that is durable when it resolves, with every write before it (LevelDB keeps writes in order). */
  async batchSynced(operations: IndexBatch): Promise<void> {
    const synced: AbstractBatchOptions<Buffer, Buffer> & { sync: boolean } = { sync: true }; // LevelDB's own option
    await this.db.batch(operations, synced);
  }

  async mapInfo(map: MapReference): Promise<MapInfo> {
    const value = await this.db.get(mapInfoKey(map));
    assert(value !== undefined, `map ${map.level}/${map.index} has a summary`);
    return decodeMapInfo(value);
  }

  async windowRecords(index: number): Promise<WindowRecord[]> {
    const value = await this.db.get(windowRecordsKey(index));
    assert(value !== undefined, `window ${index} has its records`);
    return decodeWindowRecords(value);
  }

  /** Where the log continues after window `index`'s last record (null: a version 1 window, position not kept). */
  async windowEndPosition(index: number): Promise<LogPosition | null> {
    const info = await this.mapInfo({ level: 0, index });
    const value = await this.db.get(windowBySequenceKey(info.lastSequence));
    assert(value !== undefined, `window ${index} is findable by its last sequence`);
    return decodeWindowEndPosition(value);
  }

  /** The window holding record `sequence`, or null when it is not cut yet (still in the tail). */
  async windowOf(sequence: number): Promise<number | null> {
    if (sequence > this.checkpoint.mappedThroughSequence || this.checkpoint.windowCount === 0) return null;
    const entries = await this.db.iterator({ gte: windowBySequenceKey(sequence), lt: windowBySequenceEnd, limit: 1 }).all();
    assert(entries.length === 1, `a window holds record ${sequence}`);
    return decodeWindowIndex(entries[0]![1]);
  }

  /** Each map's extents of one chunk (undefined: the map wrote nothing there), in one call. */
  async chunkValues(maps: readonly MapReference[], chunk: number): Promise<Array<Buffer | undefined>> {
    return this.db.getMany(maps.map((map) => chunkExtentsKey(map, chunk)));
  }

  /** One map's extents of chunks [firstChunk, endChunk), by chunk, with one range scan. */
  async *chunkValuesBetween(map: MapReference, firstChunk: number, endChunk: number): AsyncGenerator<[number, Buffer]> {
    for await (const [key, value] of this.db.iterator({ gte: chunkExtentsKey(map, firstChunk), lt: chunkExtentsKey(map, endChunk) })) {
      yield [decodeChunkExtentsKey(key), value];
    }
  }

  /** The extents of one map overlapping [startBytes, endBytes), clipped to it. */
  async queryMap(map: MapReference, startBytes: number, endBytes: number, chunkBytes: number): Promise<Extent[]> {
    const firstChunk = Math.floor(startBytes / chunkBytes);
    const endChunk = Math.floor((endBytes - 1) / chunkBytes) + 1;
    const extents: Extent[] = [];
    for await (const [, value] of this.chunkValuesBetween(map, firstChunk, endChunk)) {
      for (const extent of decodeChunkExtents(value)) {
        if (extent.endBytes <= startBytes || extent.startBytes >= endBytes) continue;
        extents.push({ startBytes: Math.max(extent.startBytes, startBytes), endBytes: Math.min(extent.endBytes, endBytes), source: extent.source });
      }
    }
    return extents;
  }

  /** A map's chunks in order, read in batches (for merging maps larger than memory). */
  chunkStream(map: MapReference): { next(): Promise<{ chunk: number; extents: Extent[] } | null> } {
    const iterator = this.db.iterator(chunkExtentsRange(map));
    let buffered: Array<[Buffer, Buffer]> = [];
    let position = 0;
    let done = false;
    return {
      next: async () => {
        if (position >= buffered.length && !done) {
          buffered = (await iterator.nextv(256)) as Array<[Buffer, Buffer]>;
          position = 0;
          if (buffered.length === 0) {
            done = true;
            await iterator.close();
          }
        }
        if (position >= buffered.length) return null;
        const [key, value] = buffered[position++]!;
        return { chunk: decodeChunkExtentsKey(key), extents: decodeChunkExtents(value) };
      },
    };
  }

  /** Bytes the database's files take on disk (0 for a database without a folder). */
  sizeBytes(): number {
    if (!fs.existsSync(this.directory)) return 0;
    let total = 0;
    for (const name of fs.readdirSync(this.directory)) {
      // LevelDB deletes files as it compacts: one listed a moment ago may be gone.
      total += fs.statSync(`${this.directory}/${name}`, { throwIfNoEntry: false })?.size ?? 0;
    }
    return total;
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  /**
   * Delete the keys of every window before `fineStartWindow` and of every merged map that starts
   * before it: they are packed (or folded) and no plan uses them. Idempotent; run after each
   * switch and at open.
   */
  async clearWindowsBefore(fineStartWindow: number, fineStartSequence: number): Promise<void> {
    if (fineStartWindow === 0) return;
    for (let level = 0; level < this.builtCounts.length; level++) {
      const end = Math.ceil(fineStartWindow / indexLimits.fanout ** level);
      await this.db.clear({ gte: chunkExtentsKey({ level, index: 0 }, 0), lt: chunkExtentsKey({ level, index: end }, 0) });
      await this.db.clear({ gte: mapInfoKey({ level, index: 0 }), lt: mapInfoKey({ level, index: end }) });
    }
    await this.db.clear({ gte: windowRecordsKey(0), lt: windowRecordsKey(fineStartWindow) });
    await this.db.clear({ gte: windowBySequenceKey(0), lt: windowBySequenceKey(fineStartSequence) });
    const stale: IndexBatch = [];
    for await (const [key] of this.db.iterator({ gte: windowByTimeKey(0, 0), lt: windowByTimeEnd })) {
      if (decodeWindowByTimeKey(key).index >= fineStartWindow) break;
      stale.push({ type: 'del', key });
    }
    if (stale.length > 0) await this.db.batch(stale);
  }
}
