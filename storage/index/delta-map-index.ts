// The delta-map index of a volume (docs/formats/delta-map.md): level-0 maps cut from the write
// log in windows, merged maps above them, the tail of records not yet cut, snapshots, and the
// last write of every chunk. It answers "where is the data of this range as of record S" through
// O(log history) maps, never by scanning the log.
//
// Cuts and merges run one at a time, in the background, in order. The index is derived from the
// log: a cut only takes records the caller made durable, and after a crash the volume replays the
// log from the checkpoint into the tail.

import fs from 'node:fs';
import { Level } from 'level';
import { StorageError, assert } from '../errors.js';
import type { LogPosition } from '../write-log/batch.js';
import { gapsOf, flattenNewestWins, type Extent, type ExtentSource } from './extents.js';
import {
  builtCountKey,
  builtCountRange,
  checkpointKey,
  chunkLastWriteKey,
  chunkLastWriteRange,
  decodeChunkLastWrite,
  chunkExtentsKey,
  chunkExtentsRange,
  decodeChunkExtents,
  decodeChunkExtentsKey,
  encodeChunkExtents,
  decodeMapInfo,
  decodeWindowByTimeKey,
  decodeWindowIndex,
  decodeWindowRecords,
  encodeMapInfo,
  encodeSequence,
  encodeWindowIndex,
  encodeWindowRecords,
  indexFormatVersion,
  mapInfoKey,
  snapshotKey,
  snapshotRange,
  versionKey,
  windowByTimeEnd,
  windowByTimeKey,
  windowBySequenceEnd,
  windowBySequenceKey,
  windowRecordsKey,
  type IndexCheckpoint,
  type MapInfo,
  type MapReference,
  type SnapshotRecord,
  type WindowRecord,
} from './map-keys.js';

export const indexLimits = {
  /** A level-0 window is cut at this many data-changing records ... */
  windowRecordsMax: 4096,
  /** ... or once its first record is this old ... */
  windowAgeMicrosMax: 10_000_000,
  /** ... and always right after a snapshot mark. Merged maps have this many children. */
  fanout: 4,
  /** Chunks written per LevelDB batch while merging. */
  mergeBatchChunks: 256,
  /** The chunks of the last-write table: 1 MiB, or larger so there are at most 2^20. */
  chunkBytesMin: 1024 * 1024,
  chunkCountMax: 1 << 20,
} as const;

/** One record as the index is told of it, in log order. */
export interface IndexedRecord {
  sequence: number;
  timestampMicros: number;
  /** 'data' and 'zeroes' (zeroes and trims) change data; 'mark' and 'other' do not. */
  change: 'data' | 'zeroes' | 'mark' | 'other';
  offsetBytes: number;
  lengthBytes: number;
  position: LogPosition;
  encodedBytes: number;
  /** Data records: the log holds the payload compressed. */
  compressed: boolean;
  /** Marks: their JSON payload (snapshots are registered from it). */
  markPayload?: Buffer;
}

/** Where "as of record S" stands: the maps to consult, newest first, and the partial window. */
export interface InstantPlan {
  sequence: number;
  /** Extents of the records after the last whole window, up to S (sorted, non-overlapping). */
  partial: Extent[];
  mapsNewestFirst: MapReference[];
}

interface Tail {
  records: WindowRecord[];
  /** Where the log continues after each record of the tail, for cuts before its end. */
  ends: Array<{ sequence: number; nextPosition: LogPosition }>;
  firstMicros: number;
  lastMicros: number;
  lastSequence: number;
  nextPosition: LogPosition;
  /** Snapshots made (or deleted) in the tail, written with the next cut. */
  snapshots: Map<string, SnapshotRecord | null>;
  cutRequestedThrough: number;
}

function emptyTail(lastSequence: number, nextPosition: LogPosition): Tail {
  return { records: [], ends: [], firstMicros: 0, lastMicros: 0, lastSequence, nextPosition, snapshots: new Map(), cutRequestedThrough: 0 };
}

type Batch = Array<{ type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer }>;

export class DeltaMapIndex {
  readonly chunkBytes: number;
  private readonly directory: string;
  private readonly db: Level<Buffer, Buffer>;
  private checkpoint: IndexCheckpoint;
  /** Merged maps built per level (index 0 unused: level 0 is checkpoint.windowCount). */
  private readonly mergedCounts: number[] = [0];
  private tail: Tail;
  private readonly lastWriteByChunk: Float64Array;
  private changedChunks = new Set<number>();
  /** Cuts and merges run one at a time each, cuts never waiting for a long merge. */
  private readonly queues = { cuts: Promise.resolve(), merges: Promise.resolve() };
  private failure: unknown = null;
  /** Counters for the metrics and the benchmark. */
  readonly counters = { cuts: 0, merges: 0, mapQueries: 0 };

  private constructor(directory: string, db: Level<Buffer, Buffer>, checkpoint: IndexCheckpoint, volumeSizeBytes: number) {
    this.directory = directory;
    this.db = db;
    this.checkpoint = checkpoint;
    this.tail = emptyTail(checkpoint.mappedThroughSequence, checkpoint.nextPosition);
    this.chunkBytes = chunkBytesFor(volumeSizeBytes);
    this.lastWriteByChunk = new Float64Array(Math.ceil(volumeSizeBytes / this.chunkBytes));
  }

  /** Open (creating if needed) the index of a volume whose log starts at firstPosition. */
  static async open(directory: string, volumeSizeBytes: number, firstPosition: LogPosition): Promise<DeltaMapIndex> {
    const db = new Level<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    try {
      const version = await db.get(versionKey);
      if (version === undefined) {
        const fresh: IndexCheckpoint = { windowCount: 0, mappedThroughSequence: 0, nextPosition: firstPosition };
        await db.batch([
          { type: 'put', key: versionKey, value: Buffer.from(String(indexFormatVersion)) },
          { type: 'put', key: checkpointKey, value: Buffer.from(JSON.stringify(fresh)) },
        ]);
      } else if (version.toString() !== String(indexFormatVersion)) {
        throw new StorageError('ECORRUPT', `${directory}: unsupported index format version ${version.toString()}`);
      }
      const checkpoint = JSON.parse((await db.get(checkpointKey))!.toString('utf8')) as IndexCheckpoint;
      const index = new DeltaMapIndex(directory, db, checkpoint, volumeSizeBytes);
      for await (const [key, value] of db.iterator(builtCountRange)) index.mergedCounts[key[1]!] = decodeWindowIndex(value);
      for (let level = 1; level < index.mergedCounts.length; level++) index.mergedCounts[level] ??= 0;
      for await (const [key, value] of db.iterator(chunkLastWriteRange)) {
        const { chunk, sequence } = decodeChunkLastWrite(key, value);
        if (chunk < index.lastWriteByChunk.length) index.lastWriteByChunk[chunk] = sequence;
      }
      return index;
    } catch (error) {
      await db.close();
      throw error;
    }
  }

  /** Where the volume must replay the log from, so the tail holds every record not yet cut. */
  get resumeFrom(): { position: LogPosition; sequence: number } {
    return { position: this.checkpoint.nextPosition, sequence: this.checkpoint.mappedThroughSequence + 1 };
  }

  get mappedThroughSequence(): number {
    return this.checkpoint.mappedThroughSequence;
  }

  get windowCount(): number {
    return this.checkpoint.windowCount;
  }

  get tailRecordCount(): number {
    return this.tail.records.length;
  }

  /** Maps built per level (level 0: windows). */
  get builtCounts(): readonly number[] {
    return [this.checkpoint.windowCount, ...this.mergedCounts.slice(1)];
  }

  private builtCount(level: number): number {
    return level === 0 ? this.checkpoint.windowCount : (this.mergedCounts[level] ?? 0);
  }

  // ---- feeding ----

  /** Take one record, in log order (called as records are appended, and during replay). */
  noteRecord(record: IndexedRecord): void {
    const tail = this.tail;
    assert(record.sequence === tail.lastSequence + 1, `records reach the index in order (${record.sequence} after ${tail.lastSequence})`);
    tail.lastSequence = record.sequence;
    tail.nextPosition = { segmentNumber: record.position.segmentNumber, offsetBytes: record.position.offsetBytes + record.encodedBytes };
    tail.ends.push({ sequence: record.sequence, nextPosition: tail.nextPosition });
    if (tail.firstMicros === 0) tail.firstMicros = record.timestampMicros;
    tail.lastMicros = record.timestampMicros;
    if (record.change === 'data' || record.change === 'zeroes') {
      tail.records.push({
        micros: record.timestampMicros,
        startBytes: record.offsetBytes,
        lengthBytes: record.lengthBytes,
        source: {
          sequence: record.sequence,
          hasData: record.change === 'data',
          compressed: record.compressed,
          segmentNumber: record.position.segmentNumber,
          recordOffsetBytes: record.position.offsetBytes,
          volumeOffsetBytes: record.offsetBytes,
        },
      });
      const firstChunk = Math.floor(record.offsetBytes / this.chunkBytes);
      const lastChunk = Math.floor((record.offsetBytes + record.lengthBytes - 1) / this.chunkBytes);
      for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
        this.lastWriteByChunk[chunk] = record.sequence;
        this.changedChunks.add(chunk);
      }
    } else if (record.change === 'mark' && record.markPayload !== undefined) {
      this.noteMark(record, record.markPayload);
    }
  }

  private noteMark(record: IndexedRecord, payload: Buffer): void {
    let event: { event?: string; name?: string; note?: string };
    try {
      event = JSON.parse(payload.toString('utf8')) as typeof event;
    } catch {
      return;
    }
    if (typeof event.name !== 'string') return;
    if (event.event === 'snapshot') {
      this.tail.snapshots.set(event.name, { name: event.name, sequence: record.sequence, micros: record.timestampMicros, note: event.note ?? '' });
      this.tail.cutRequestedThrough = record.sequence; // a snapshot's instant is the end of a window
    } else if (event.event === 'snapshot-deleted') {
      this.tail.snapshots.set(event.name, null);
    }
  }

  /** The newest record that wrote the chunk holding offsetBytes (0: none yet). */
  lastWriteSequence(offsetBytes: number): number {
    return this.lastWriteByChunk[Math.floor(offsetBytes / this.chunkBytes)] ?? 0;
  }

  /**
   * Should a window be cut now? Returns the last sequence to cut through, or 0. A window takes at
   * most windowRecordsMax records however far the tail has grown, and ends at a snapshot mark.
   */
  cutDue(nowMicros: number): number {
    const tail = this.tail;
    if (tail.lastSequence <= this.checkpoint.mappedThroughSequence) return 0;
    const full = tail.records.length >= indexLimits.windowRecordsMax;
    const capped = full ? tail.records[indexLimits.windowRecordsMax - 1]!.source.sequence : tail.lastSequence;
    if (tail.cutRequestedThrough > this.checkpoint.mappedThroughSequence) return Math.min(tail.cutRequestedThrough, capped);
    if (full) return capped;
    if (tail.firstMicros > 0 && nowMicros - tail.firstMicros >= indexLimits.windowAgeMicrosMax) return capped;
    return 0;
  }

  /** Cut the tail through record `throughSequence` (durable in the log) into a window; merges follow, on their own queue. */
  cut(throughSequence: number): Promise<void> {
    const cutting = this.enqueue('cuts', async () => {
      if (throughSequence <= this.checkpoint.mappedThroughSequence) return;
      await this.cutWindow(throughSequence);
    });
    void cutting.then(() => this.enqueue('merges', () => this.mergeDue())).catch(() => undefined);
    return cutting;
  }

  /** Resolves when every cut and merge asked for so far is done. */
  async settled(): Promise<void> {
    await this.queues.cuts;
    await this.queues.merges;
  }

  private enqueue(queue: 'cuts' | 'merges', task: () => Promise<void>): Promise<void> {
    const next = this.queues[queue].then(async () => {
      if (this.failure !== null) throw this.failure;
      try {
        await task();
      } catch (error) {
        this.failure = error;
        throw error;
      }
    });
    this.queues[queue] = next.catch(() => undefined);
    return next;
  }

  private async cutWindow(throughSequence: number): Promise<void> {
    const tail = this.tail;
    assert(throughSequence <= tail.lastSequence, 'a cut takes records the index has seen');
    const cutCount = countThrough(tail.records, throughSequence);
    const records = tail.records.slice(0, cutCount);
    const windowIndex = this.checkpoint.windowCount;
    const window: MapReference = { level: 0, index: windowIndex };
    const extents = flattenNewestWins(records.map((record) => ({ startBytes: record.startBytes, endBytes: record.startBytes + record.lengthBytes, source: record.source })));
    const lastMicros = records.length > 0 ? records[records.length - 1]!.micros : tail.lastMicros;
    const info: MapInfo = {
      firstSequence: this.checkpoint.mappedThroughSequence + 1,
      lastSequence: throughSequence,
      firstMicros: records[0]?.micros ?? tail.firstMicros,
      lastMicros,
      recordCount: records.length,
      dataBytes: records.reduce((sum, record) => sum + (record.source.hasData ? record.lengthBytes : 0), 0),
      extentCount: extents.length,
    };
    const endsCut = tail.ends.findIndex((end) => end.sequence === throughSequence);
    assert(endsCut >= 0, `the tail knows where record ${throughSequence} ends`);
    const nextPosition = tail.ends[endsCut]!.nextPosition;
    const checkpoint: IndexCheckpoint = { windowCount: windowIndex + 1, mappedThroughSequence: throughSequence, nextPosition };
    const batch: Batch = [
      { type: 'put', key: mapInfoKey(window), value: encodeMapInfo(info) },
      { type: 'put', key: windowRecordsKey(windowIndex), value: encodeWindowRecords(records) },
      { type: 'put', key: windowBySequenceKey(throughSequence), value: encodeWindowIndex(windowIndex) },
      { type: 'put', key: windowByTimeKey(lastMicros, windowIndex), value: Buffer.alloc(0) },
    ];
    for (const [chunk, chunkExtents] of splitByChunk(extents, this.chunkBytes)) {
      batch.push({ type: 'put', key: chunkExtentsKey(window, chunk), value: encodeChunkExtents(chunkExtents) });
    }
    for (const chunk of this.changedChunks) batch.push({ type: 'put', key: chunkLastWriteKey(chunk), value: encodeSequence(this.lastWriteByChunk[chunk]!) });
    const snapshotsCut: string[] = [];
    for (const [name, snapshot] of tail.snapshots) {
      if (snapshot !== null && snapshot.sequence > throughSequence) continue;
      batch.push(snapshot === null ? { type: 'del', key: snapshotKey(name) } : { type: 'put', key: snapshotKey(name), value: Buffer.from(JSON.stringify(snapshot)) });
      snapshotsCut.push(name);
    }
    batch.push({ type: 'put', key: checkpointKey, value: Buffer.from(JSON.stringify(checkpoint)) });
    const changedChunks = this.changedChunks;
    this.changedChunks = new Set();
    try {
      await this.db.batch(batch);
    } catch (error) {
      for (const chunk of changedChunks) this.changedChunks.add(chunk);
      throw error;
    }
    this.checkpoint = checkpoint;
    tail.records.splice(0, cutCount);
    tail.ends.splice(0, endsCut + 1);
    for (const name of snapshotsCut) tail.snapshots.delete(name);
    tail.firstMicros = tail.records[0]?.micros ?? 0;
    this.counters.cuts++;
  }

  /** Build every merged map whose children all exist, lowest level first. */
  private async mergeDue(): Promise<void> {
    for (let level = 1; ; level++) {
      const childCount = this.builtCount(level - 1);
      const builtCount = this.builtCount(level);
      const due = Math.floor(childCount / indexLimits.fanout);
      if (due === 0) return;
      for (let index = builtCount; index < due; index++) await this.mergeMap({ level, index });
    }
  }

  private async mergeMap(map: MapReference): Promise<void> {
    const { fanout } = indexLimits;
    const childrenOldestFirst: MapReference[] = [];
    for (let child = fanout * map.index; child < fanout * map.index + fanout; child++) childrenOldestFirst.push({ level: map.level - 1, index: child });
    await this.db.clear(chunkExtentsRange(map)); // a merge cut short by a crash left stale chunks
    const infos = await Promise.all(childrenOldestFirst.map((child) => this.mapInfo(child)));
    const streams = childrenOldestFirst.map((child) => this.chunkStream(child));
    const heads = await Promise.all(streams.map((stream) => stream.next()));
    let batch: Batch = [];
    let extentCount = 0;
    for (;;) {
      let chunk = Number.POSITIVE_INFINITY;
      for (const head of heads) if (head !== null) chunk = Math.min(chunk, head.chunk);
      if (chunk === Number.POSITIVE_INFINITY) break;
      // Oldest child first, so that flattening lets the newest win where they overlap.
      const together: Extent[] = [];
      for (let child = 0; child < heads.length; child++) {
        const head = heads[child];
        if (head === null || head === undefined || head.chunk !== chunk) continue;
        together.push(...head.extents);
        heads[child] = await streams[child]!.next();
      }
      const merged = flattenNewestWins(together);
      extentCount += merged.length;
      batch.push({ type: 'put', key: chunkExtentsKey(map, chunk), value: encodeChunkExtents(merged) });
      if (batch.length >= indexLimits.mergeBatchChunks) {
        await this.db.batch(batch);
        batch = [];
      }
    }
    const info: MapInfo = {
      firstSequence: infos[0]!.firstSequence,
      lastSequence: infos[infos.length - 1]!.lastSequence,
      firstMicros: infos[0]!.firstMicros,
      lastMicros: infos[infos.length - 1]!.lastMicros,
      recordCount: infos.reduce((sum, child) => sum + child.recordCount, 0),
      dataBytes: infos.reduce((sum, child) => sum + child.dataBytes, 0),
      extentCount,
    };
    batch.push({ type: 'put', key: mapInfoKey(map), value: encodeMapInfo(info) });
    batch.push({ type: 'put', key: builtCountKey(map.level), value: encodeWindowIndex(map.index + 1) });
    await this.db.batch(batch);
    this.mergedCounts[map.level] = map.index + 1;
    this.counters.merges++;
  }

  /** A map's chunks in order, read in batches. */
  private chunkStream(map: MapReference): { next(): Promise<{ chunk: number; extents: Extent[] } | null> } {
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

  async mapInfo(map: MapReference): Promise<MapInfo> {
    const value = await this.db.get(mapInfoKey(map));
    assert(value !== undefined, `map ${map.level}/${map.index} has a summary`);
    return decodeMapInfo(value);
  }

  // ---- queries ----

  /**
   * Run a query that reads both the tail and the maps again if a cut moved records from the
   * tail into a new window while it was waiting on LevelDB: it would have seen those records in
   * neither place (or in both). Cuts come at most every 4096 records, so a retry settles it.
   */
  private async consistent<T>(query: () => Promise<T>): Promise<T> {
    for (;;) {
      const cutsBefore = this.counters.cuts;
      const result = await query();
      if (this.counters.cuts === cutsBefore) return result;
    }
  }

  /** The window holding record `sequence`, or null when it is still in the tail. */
  async windowOf(sequence: number): Promise<number | null> {
    if (sequence > this.checkpoint.mappedThroughSequence || this.checkpoint.windowCount === 0) return null;
    const entries = await this.db.iterator({ gte: windowBySequenceKey(sequence), lt: windowBySequenceEnd, limit: 1 }).all();
    assert(entries.length === 1, `a window holds record ${sequence}`);
    return decodeWindowIndex(entries[0]![1]);
  }

  /** The last data-changing record written at or before `micros` (0 if none). */
  async sequenceAt(micros: number): Promise<number> {
    return this.consistent(() => this.sequenceAtOnce(micros));
  }

  private async sequenceAtOnce(micros: number): Promise<number> {
    const tailRecords = this.tail.records;
    if (tailRecords.length > 0 && tailRecords[0]!.micros <= micros) {
      return lastAtOrBefore(tailRecords, micros)!.source.sequence;
    }
    // The first window ending at or after `micros` holds the instant, or starts after it.
    const entries = await this.db.iterator({ gte: windowByTimeKey(micros, 0), lt: windowByTimeEnd, limit: 1 }).all();
    if (entries.length === 0) return this.checkpoint.mappedThroughSequence;
    const { index } = decodeWindowByTimeKey(entries[0]![0]);
    const record = lastAtOrBefore(await this.windowRecords(index), micros);
    if (record !== undefined) return record.source.sequence;
    return index === 0 ? 0 : (await this.mapInfo({ level: 0, index: index - 1 })).lastSequence;
  }

  /** Time of the last data-changing record at or before `sequence` (0 if none). */
  async microsOf(sequence: number): Promise<number> {
    return this.consistent(() => this.microsOfOnce(sequence));
  }

  private async microsOfOnce(sequence: number): Promise<number> {
    const window = await this.windowOf(sequence);
    const records = window === null ? this.tail.records : await this.windowRecords(window);
    let micros = 0;
    for (const record of records) {
      if (record.source.sequence > sequence) break;
      micros = record.micros;
    }
    if (micros > 0 || window === null || window === 0) return micros;
    return (await this.mapInfo({ level: 0, index: window - 1 })).lastMicros;
  }

  async windowRecords(index: number): Promise<WindowRecord[]> {
    const value = await this.db.get(windowRecordsKey(index));
    assert(value !== undefined, `window ${index} has its records`);
    return decodeWindowRecords(value);
  }

  /** The plan to read the volume as of record `sequence`. */
  async planAt(sequence: number): Promise<InstantPlan> {
    return this.consistent(() => this.planAtOnce(sequence));
  }

  private async planAtOnce(sequence: number): Promise<InstantPlan> {
    const window = await this.windowOf(sequence);
    if (window === null) {
      const upTo = this.tail.records.filter((record) => record.source.sequence <= sequence);
      return { sequence, partial: flattenRecords(upTo), mapsNewestFirst: this.prefixMaps(this.checkpoint.windowCount) };
    }
    const info = await this.mapInfo({ level: 0, index: window });
    if (sequence >= info.lastSequence) return { sequence, partial: [], mapsNewestFirst: this.prefixMaps(window + 1) };
    const upTo = (await this.windowRecords(window)).filter((record) => record.source.sequence <= sequence);
    return { sequence, partial: flattenRecords(upTo), mapsNewestFirst: this.prefixMaps(window) };
  }

  /** Maps covering windows [0, windowEnd), newest first: the largest aligned merged maps that exist. */
  prefixMaps(windowEnd: number): MapReference[] {
    return this.rangeMaps(0, windowEnd).reverse();
  }

  /** Maps covering windows [from, to) exactly, oldest first. */
  rangeMaps(from: number, to: number): MapReference[] {
    const maps: MapReference[] = [];
    const { fanout } = indexLimits;
    let position = from;
    while (position < to) {
      let level = 0;
      let span = 1;
      // Grow while the next level's map is aligned here, fits, and has been built.
      while (position % (span * fanout) === 0 && position + span * fanout <= to && this.builtCount(level + 1) > position / (span * fanout)) {
        level++;
        span *= fanout;
      }
      maps.push({ level, index: position / span });
      position += span;
    }
    return maps;
  }

  /**
   * The extents of [startBytes, endBytes) as of the plan's instant, sorted; ranges no record
   * wrote are left out (they read as zeroes). Counts the maps consulted.
   */
  async resolve(plan: InstantPlan, startBytes: number, endBytes: number): Promise<{ extents: Extent[]; mapsConsulted: number }> {
    const found: Extent[] = [];
    let mapsConsulted = 0;
    const firstChunk = Math.floor(startBytes / this.chunkBytes);
    const lastChunk = Math.floor((endBytes - 1) / this.chunkBytes);
    for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
      const chunkStart = Math.max(startBytes, chunk * this.chunkBytes);
      const chunkEnd = Math.min(endBytes, (chunk + 1) * this.chunkBytes);
      // Every map's extents of the chunk in one call (unless the tail fills it); then newest first.
      const needed = gapsOf(clip(plan.partial, chunkStart, chunkEnd), chunkStart, chunkEnd).length > 0;
      const values = needed ? await this.db.getMany(plan.mapsNewestFirst.map((map) => chunkExtentsKey(map, chunk))) : [];
      const filled = fillNewestFirst(plan, chunkStart, chunkEnd, values);
      for (const extent of filled.extents) found.push(extent);
      mapsConsulted = Math.max(mapsConsulted, filled.mapsConsulted);
    }
    this.counters.mapQueries += mapsConsulted;
    return { extents: found, mapsConsulted };
  }

  /**
   * The extents of whole chunks [firstChunk, endChunk) as of the plan's instant, per chunk: one
   * range scan per map instead of one lookup of every map per chunk. For reading a large part of
   * a view soon (a transfer): 1,894 chunks looked up one by one cost about 230 ms of LevelDB work.
   */
  async resolveChunks(plan: InstantPlan, firstChunk: number, endChunk: number, volumeSizeBytes: number): Promise<Map<number, Extent[]>> {
    const valuesByChunk = new Map<number, Array<Buffer | undefined>>();
    for (let chunk = firstChunk; chunk < endChunk; chunk++) valuesByChunk.set(chunk, new Array<Buffer | undefined>(plan.mapsNewestFirst.length));
    for (const [mapIndex, map] of plan.mapsNewestFirst.entries()) {
      for await (const [key, value] of this.db.iterator({ gte: chunkExtentsKey(map, firstChunk), lt: chunkExtentsKey(map, endChunk) })) {
        valuesByChunk.get(decodeChunkExtentsKey(key))![mapIndex] = value;
      }
    }
    const resolved = new Map<number, Extent[]>();
    for (const [chunk, values] of valuesByChunk) {
      const startBytes = chunk * this.chunkBytes;
      resolved.set(chunk, fillNewestFirst(plan, startBytes, Math.min(startBytes + this.chunkBytes, volumeSizeBytes), values).extents);
    }
    this.counters.mapQueries += plan.mapsNewestFirst.length;
    return resolved;
  }

  /** The extents of one map overlapping [startBytes, endBytes), clipped to it. */
  async queryMap(map: MapReference, startBytes: number, endBytes: number): Promise<Extent[]> {
    const firstChunk = Math.floor(startBytes / this.chunkBytes);
    const lastChunk = Math.floor((endBytes - 1) / this.chunkBytes);
    const extents: Extent[] = [];
    for await (const [, value] of this.db.iterator({ gte: chunkExtentsKey(map, firstChunk), lte: chunkExtentsKey(map, lastChunk) })) {
      for (const extent of decodeChunkExtents(value)) {
        if (extent.endBytes <= startBytes || extent.startBytes >= endBytes) continue;
        extents.push({ startBytes: Math.max(extent.startBytes, startBytes), endBytes: Math.min(extent.endBytes, endBytes), source: extent.source });
      }
    }
    return extents;
  }

  /** Byte ranges of [startBytes, endBytes) written by records in (fromSequence, toSequence]. */
  async changedBetween(fromSequence: number, toSequence: number, startBytes: number, endBytes: number): Promise<Array<[number, number]>> {
    return this.consistent(() => this.changedBetweenOnce(fromSequence, toSequence, startBytes, endBytes));
  }

  private async changedBetweenOnce(fromSequence: number, toSequence: number, startBytes: number, endBytes: number): Promise<Array<[number, number]>> {
    if (toSequence <= fromSequence) return [];
    const ranges: Array<[number, number]> = [];
    const addRecords = (records: readonly WindowRecord[]): void => {
      for (const record of records) {
        if (record.source.sequence <= fromSequence || record.source.sequence > toSequence) continue;
        const start = Math.max(record.startBytes, startBytes);
        const end = Math.min(record.startBytes + record.lengthBytes, endBytes);
        if (start < end) ranges.push([start, end]);
      }
    };
    const fromWindow = await this.windowOf(fromSequence + 1);
    const toWindow = await this.windowOf(toSequence);
    const windowEnd = toWindow ?? this.checkpoint.windowCount;
    if (fromWindow !== null) {
      addRecords(await this.windowRecords(fromWindow));
      for (const map of this.rangeMaps(fromWindow + 1, windowEnd)) {
        for (const extent of await this.queryMap(map, startBytes, endBytes)) ranges.push([extent.startBytes, extent.endBytes]);
      }
      if (toWindow !== null && toWindow !== fromWindow) addRecords(await this.windowRecords(toWindow));
    }
    if (toWindow === null) addRecords(this.tail.records);
    return unionOf(ranges);
  }

  // ---- snapshots ----

  async snapshot(name: string): Promise<SnapshotRecord | null> {
    const pending = this.tail.snapshots.get(name);
    if (pending !== undefined) return pending;
    const value = await this.db.get(snapshotKey(name));
    return value === undefined ? null : (JSON.parse(value.toString('utf8')) as SnapshotRecord);
  }

  async snapshots(): Promise<SnapshotRecord[]> {
    const byName = new Map<string, SnapshotRecord>();
    for await (const [, value] of this.db.iterator(snapshotRange)) {
      const snapshot = JSON.parse(value.toString('utf8')) as SnapshotRecord;
      byName.set(snapshot.name, snapshot);
    }
    for (const [name, pending] of this.tail.snapshots) {
      if (pending === null) byName.delete(name);
      else byName.set(name, pending);
    }
    return [...byName.values()].sort((left, right) => left.sequence - right.sequence);
  }

  // ---- the timeline ----

  /** Summaries of the windows that end within [fromMicros, toMicros], plus the tail's. */
  async windowsBetween(fromMicros: number, toMicros: number, limit: number): Promise<MapInfo[]> {
    const infos: MapInfo[] = [];
    for await (const [key] of this.db.iterator({ gte: windowByTimeKey(fromMicros, 0), lt: windowByTimeEnd, limit })) {
      const { lastMicros, index } = decodeWindowByTimeKey(key);
      if (lastMicros > toMicros) {
        infos.push(await this.mapInfo({ level: 0, index })); // it may start within the range
        break;
      }
      infos.push(await this.mapInfo({ level: 0, index }));
    }
    const tail = this.tail;
    if (tail.records.length > 0 && tail.firstMicros <= toMicros) {
      infos.push({
        firstSequence: this.checkpoint.mappedThroughSequence + 1,
        lastSequence: tail.lastSequence,
        firstMicros: tail.firstMicros,
        lastMicros: tail.lastMicros,
        recordCount: tail.records.length,
        dataBytes: tail.records.reduce((sum, record) => sum + (record.source.hasData ? record.lengthBytes : 0), 0),
        extentCount: 0,
      });
    }
    return infos;
  }

  /** The oldest record's time (0 if none). */
  async firstMicros(): Promise<number> {
    if (this.checkpoint.windowCount === 0) return this.tail.firstMicros;
    return (await this.mapInfo({ level: 0, index: 0 })).firstMicros;
  }

  get lastMicros(): number {
    return this.tail.lastMicros;
  }

  /** Bytes the index's files take on disk. */
  sizeBytes(): number {
    let total = 0;
    for (const name of fs.readdirSync(this.directory)) total += fs.statSync(`${this.directory}/${name}`).size;
    return total;
  }

  async close(): Promise<void> {
    await this.settled();
    await this.db.close();
  }
}

function chunkBytesFor(volumeSizeBytes: number): number {
  let chunkBytes: number = indexLimits.chunkBytesMin;
  while (Math.ceil(volumeSizeBytes / chunkBytes) > indexLimits.chunkCountMax) chunkBytes *= 2;
  return chunkBytes;
}

function countThrough(records: readonly WindowRecord[], throughSequence: number): number {
  let count = 0;
  while (count < records.length && records[count]!.source.sequence <= throughSequence) count++;
  return count;
}

function lastAtOrBefore(records: readonly WindowRecord[], micros: number): WindowRecord | undefined {
  let found: WindowRecord | undefined;
  for (const record of records) {
    if (record.micros > micros) break;
    found = record;
  }
  return found;
}

/** Extents grouped by chunk, split at chunk boundaries. */
function splitByChunk(extents: readonly Extent[], chunkBytes: number): Map<number, Extent[]> {
  const byChunk = new Map<number, Extent[]>();
  for (const extent of extents) {
    let start = extent.startBytes;
    while (start < extent.endBytes) {
      const chunk = Math.floor(start / chunkBytes);
      const end = Math.min(extent.endBytes, (chunk + 1) * chunkBytes);
      let list = byChunk.get(chunk);
      if (list === undefined) byChunk.set(chunk, (list = []));
      list.push({ startBytes: start, endBytes: end, source: extent.source });
      start = end;
    }
  }
  return byChunk;
}

function flattenRecords(records: readonly WindowRecord[]): Extent[] {
  return flattenNewestWins(records.map((record) => ({ startBytes: record.startBytes, endBytes: record.startBytes + record.lengthBytes, source: record.source })));
}

/** The sorted extents overlapping [startBytes, endBytes), clipped to it (binary search to the first). */
/**
 * The extents of [startBytes, endBytes) (within one chunk) as of the plan's instant: the partial
 * window first, then the maps' values for the chunk, newest first, each filling what is still a
 * gap. `valuesNewestFirst[i]` is map i's value for the chunk (undefined: no extents there).
 */
function fillNewestFirst(plan: InstantPlan, startBytes: number, endBytes: number, valuesNewestFirst: ReadonlyArray<Buffer | undefined>): { extents: Extent[]; mapsConsulted: number } {
  let found: Extent[] = clip(plan.partial, startBytes, endBytes);
  let gaps = gapsOf(found, startBytes, endBytes);
  let mapsConsulted = 0;
  for (const value of valuesNewestFirst) {
    if (gaps.length === 0) break;
    mapsConsulted++;
    if (value === undefined) continue;
    const filling = intersect(decodeChunkExtents(value), gaps);
    if (filling.length === 0) continue;
    found = mergeSorted(found, filling);
    gaps = gapsOf(found, startBytes, endBytes);
  }
  return { extents: found, mapsConsulted };
}

function clip(extents: readonly Extent[], startBytes: number, endBytes: number): Extent[] {
  let low = 0;
  let high = extents.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (extents[middle]!.endBytes <= startBytes) low = middle + 1;
    else high = middle;
  }
  const clipped: Extent[] = [];
  for (let index = low; index < extents.length; index++) {
    const extent = extents[index]!;
    if (extent.startBytes >= endBytes) break;
    clipped.push({ startBytes: Math.max(extent.startBytes, startBytes), endBytes: Math.min(extent.endBytes, endBytes), source: extent.source });
  }
  return clipped;
}

/** The parts of the sorted extents that fall in the sorted, disjoint gaps. */
function intersect(extents: readonly Extent[], gaps: ReadonlyArray<[number, number]>): Extent[] {
  const result: Extent[] = [];
  let gapIndex = 0;
  for (const extent of extents) {
    while (gapIndex < gaps.length && gaps[gapIndex]![1] <= extent.startBytes) gapIndex++;
    for (let index = gapIndex; index < gaps.length && gaps[index]![0] < extent.endBytes; index++) {
      const start = Math.max(extent.startBytes, gaps[index]![0]);
      const end = Math.min(extent.endBytes, gaps[index]![1]);
      if (start < end) result.push({ startBytes: start, endBytes: end, source: extent.source });
    }
  }
  return result;
}

/** Two sorted lists of disjoint extents, merged in order. */
function mergeSorted(left: readonly Extent[], right: readonly Extent[]): Extent[] {
  const merged: Extent[] = [];
  let leftIndex = 0;
  let rightIndex = 0;
  while (leftIndex < left.length || rightIndex < right.length) {
    if (rightIndex >= right.length || (leftIndex < left.length && left[leftIndex]!.startBytes <= right[rightIndex]!.startBytes)) merged.push(left[leftIndex++]!);
    else merged.push(right[rightIndex++]!);
  }
  return merged;
}

function unionOf(ranges: Array<[number, number]>): Array<[number, number]> {
  ranges.sort((left, right) => left[0] - right[0]);
  const union: Array<[number, number]> = [];
  for (const [start, end] of ranges) {
    const last = union[union.length - 1];
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
    else union.push([start, end]);
  }
  return union;
}

export type { ExtentSource, MapReference, SnapshotRecord };
