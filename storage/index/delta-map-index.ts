// The delta-map index of a volume (docs/formats/delta-map.md): it answers "where is the data of
// this range as of record S" through O(log history) maps, never by scanning the log. This file
// holds the index together; each concern has its own file:
//
//   tail.ts         records not yet cut, and when a window is due
//   map-engine.ts   cutting windows and merging maps
//   planner.ts      the plan for an instant, and resolving chunks through it
//   timeline.ts     instants and times, windows along a span of time
//   changes.ts      ranges written between two records (changed-block tracking)
//   snapshots.ts    named marks
//   intervals.ts    the packed region: intervals between kept points, the lifecycle state
//   last-writes.ts  the last record that wrote each chunk
//   map-store.ts    the LevelDB database and reads of what it stores
//   map-keys.ts     the key and value encodings
//
// Cuts and merges run one at a time each, in the background, in order. The index is derived from
// the log: a cut only takes records the caller made durable, and after a crash the volume replays
// the log from the checkpoint into the tail. A failed cut or merge changes nothing in memory (the
// database batch is all or nothing): the caller tries it again.

import { IntervalStore } from './intervals.js';
import { LastWriteTable } from './last-writes.js';
import { changedBetween } from './changes.js';
import type { Extent } from './extents.js';
import type { MapInfo, MapReference, SnapshotRecord } from './map-keys.js';
import { cutWindow, mergeDue } from './map-engine.js';
import { MapStore, type IndexDatabaseFactory } from './map-store.js';
import { planAt, rangeMaps, resolve, resolveChunks, type InstantPlan } from './planner.js';
import { allSnapshots, snapshotNamed } from './snapshots.js';
import { Tail, type IndexedRecord, type WindowBoundary } from './tail.js';
import { firstMicros, lastDataSequence, microsOf, sequenceAt, windowsBetween, type TimelineSpan } from './timeline.js';
import type { LogPosition } from '../write-log/batch.js';

export type { IndexDatabaseFactory, IndexedRecord, InstantPlan, MapReference, SnapshotRecord, WindowBoundary };

export class DeltaMapIndex {
  readonly chunkBytes: number;
  private readonly store: MapStore;
  /** The packed region and the lifecycle state (the retention engine changes them). */
  readonly intervals: IntervalStore;
  private readonly tail: Tail;
  private readonly lastWrites: LastWriteTable;
  /** Cuts and merges run one at a time each, cuts never waiting for a long merge. */
  private readonly queues = { cuts: Promise.resolve(), merges: Promise.resolve() };
  /** The last merge's failure (merges are tried again after the next cut), or null once one succeeds. */
  mergeFailure: unknown = null;
  /** Where windows must end besides size and age (tier points); set by the retention engine. */
  windowBoundary: WindowBoundary | null = null;
  /** Counters for the metrics and the benchmark. */
  readonly counters = { cuts: 0, merges: 0, mapQueries: 0 };
  /**
   * Bumped whenever the retention engine switches the index to new intervals or a new horizon:
   * views plan again, and queries that straddled the switch run again.
   */
  generation = 0;

  private constructor(store: MapStore, intervals: IntervalStore, lastWrites: LastWriteTable) {
    this.store = store;
    this.intervals = intervals;
    this.lastWrites = lastWrites;
    this.chunkBytes = lastWrites.chunkBytes;
    this.tail = new Tail(store.checkpoint.mappedThroughSequence, store.checkpoint.nextPosition);
  }

  /** Open (creating if needed) the index of a volume whose log starts at firstPosition. */
  static async open(directory: string, volume: { sizeBytes: number; createdMicros: number }, firstPosition: LogPosition, openDatabase?: IndexDatabaseFactory): Promise<DeltaMapIndex> {
    const store = await MapStore.open(directory, firstPosition, openDatabase);
    try {
      const lastWrites = new LastWriteTable(volume.sizeBytes);
      await lastWrites.load(store);
      const intervals = await IntervalStore.load(store, volume.createdMicros, firstPosition);
      return new DeltaMapIndex(store, intervals, lastWrites);
    } catch (error) {
      await store.close();
      throw error;
    }
  }

  /** Where the volume must replay the log from, so the tail holds every record not yet cut. */
  get resumeFrom(): { position: LogPosition; sequence: number } {
    return { position: this.store.checkpoint.nextPosition, sequence: this.store.checkpoint.mappedThroughSequence + 1 };
  }

  get mappedThroughSequence(): number {
    return this.store.checkpoint.mappedThroughSequence;
  }

  get windowCount(): number {
    return this.store.checkpoint.windowCount;
  }

  get tailRecordCount(): number {
    return this.tail.records.length;
  }

  /** Records of every kind the tail holds in memory (bounded by the history's admission). */
  get tailHeldRecordCount(): number {
    return this.tail.heldRecordCount;
  }

  /** Maps built per level (level 0: windows). */
  get builtCounts(): readonly number[] {
    return this.store.builtCounts;
  }

  // ---- feeding ----

  /** Take one record, in log order (called as records are appended, and during replay). */
  noteRecord(record: IndexedRecord): void {
    this.tail.note(record);
    this.lastWrites.note(record);
  }

  /** The newest record that wrote the chunk holding offsetBytes (0: none yet). */
  lastWriteSequence(offsetBytes: number): number {
    return this.lastWrites.sequenceAt(offsetBytes);
  }

  /** Should a window be cut now? Returns the last sequence to cut through, or 0. */
  cutDue(nowMicros: number): number {
    return this.tail.cutDue(nowMicros, this.store.checkpoint.mappedThroughSequence, this.windowBoundary);
  }

  /** Cut the tail through record `throughSequence` (durable in the log) into a window; merges follow, on their own queue. */
  cut(throughSequence: number): Promise<void> {
    const cutting = this.enqueue('cuts', async () => {
      if (throughSequence <= this.store.checkpoint.mappedThroughSequence) return;
      await cutWindow(this.store, this.tail, this.lastWrites, throughSequence);
      this.counters.cuts++;
    });
    void cutting.then(() => this.enqueue('merges', () => this.mergeWhatIsDue())).catch(() => undefined);
    return cutting;
  }

  private async mergeWhatIsDue(): Promise<void> {
    try {
      this.counters.merges += await mergeDue(this.store, this.intervals.state.fineStartWindow);
      this.mergeFailure = null;
    } catch (error) {
      this.mergeFailure = error;
      throw error;
    }
  }

  /** Resolves when every cut and merge asked for so far is done. */
  async settled(): Promise<void> {
    await this.queues.cuts;
    await this.queues.merges;
  }

  private enqueue(queue: 'cuts' | 'merges', task: () => Promise<void>): Promise<void> {
    const next = this.queues[queue].then(task);
    this.queues[queue] = next.catch(() => undefined);
    return next;
  }

  // ---- queries ----

  /**
   * Run a query that reads both the tail and the maps again if a cut moved records from the
   * tail into a new window while it was waiting on LevelDB: it would have seen those records in
   * neither place (or in both). Cuts come at most every 4096 records, so a retry settles it. A
   * query the retention engine switched the index under may also fail (housekeeping clears the
   * packed windows it was reading): it runs again too.
   */
  private async consistent<T>(query: () => Promise<T>): Promise<T> {
    for (;;) {
      const cutsBefore = this.counters.cuts;
      const generationBefore = this.generation;
      let result: T;
      try {
        result = await query();
      } catch (error) {
        if (this.generation !== generationBefore) continue;
        throw error;
      }
      if (this.counters.cuts === cutsBefore && this.generation === generationBefore) return result;
    }
  }

  /** The plan to read the volume as of record `sequence`. */
  planAt(sequence: number): Promise<InstantPlan> {
    return this.consistent(() => planAt(this.store, this.intervals, this.tail, sequence));
  }

  /** Maps covering windows [from, to) exactly, oldest first. */
  rangeMaps(from: number, to: number): MapReference[] {
    return rangeMaps(this.store, from, to);
  }

  /** The extents of [startBytes, endBytes) as of the plan's instant (holes left out). */
  async resolve(plan: InstantPlan, startBytes: number, endBytes: number): Promise<{ extents: Extent[]; mapsConsulted: number }> {
    const resolved = await resolve(this.store, this.intervals, this.chunkBytes, plan, startBytes, endBytes);
    this.counters.mapQueries += resolved.mapsConsulted;
    return resolved;
  }

  /** The extents of whole chunks [firstChunk, endChunk) as of the plan's instant, per chunk (one range scan per map). */
  async resolveChunks(plan: InstantPlan, firstChunk: number, endChunk: number, volumeSizeBytes: number): Promise<Map<number, Extent[]>> {
    this.counters.mapQueries += plan.mapsNewestFirst.length;
    return resolveChunks(this.store, this.intervals, this.chunkBytes, plan, firstChunk, endChunk, volumeSizeBytes);
  }

  /** Byte ranges of [startBytes, endBytes) written by records in (fromSequence, toSequence]. */
  changedBetween(fromSequence: number, toSequence: number, startBytes: number, endBytes: number): Promise<Array<[number, number]>> {
    return this.consistent(() => changedBetween(this.store, this.intervals, this.tail, this.chunkBytes, { fromSequence, toSequence, startBytes, endBytes }));
  }

  /** The last data-changing record written at or before `micros` (0 if none). */
  sequenceAt(micros: number): Promise<number> {
    return this.consistent(() => sequenceAt(this.store, this.intervals, this.tail, micros));
  }

  /** The last data-changing record at or before `sequence`: the volume looks the same just after both. */
  lastDataSequence(sequence: number): Promise<number> {
    return this.consistent(() => lastDataSequence(this.store, this.intervals, this.tail, sequence));
  }

  /** Time of the last data-changing record at or before `sequence` (0 if none). */
  microsOf(sequence: number): Promise<number> {
    return this.consistent(() => microsOf(this.store, this.intervals, this.tail, sequence));
  }

  /** The window holding record `sequence`, or null when it is still in the tail. */
  windowHolding(sequence: number): Promise<number | null> {
    return this.store.windowOf(sequence);
  }

  mapInfo(map: MapReference): Promise<MapInfo> {
    return this.store.mapInfo(map);
  }

  // ---- snapshots ----

  snapshot(name: string): Promise<SnapshotRecord | null> {
    return snapshotNamed(this.store, this.tail, name);
  }

  snapshots(): Promise<SnapshotRecord[]> {
    return allSnapshots(this.store, this.tail);
  }

  // ---- the timeline ----

  /** Summaries of the windows that end within [fromMicros, toMicros], plus the tail's. */
  windowsBetween(fromMicros: number, toMicros: number, limit: number): Promise<TimelineSpan[]> {
    return windowsBetween(this.store, this.intervals, this.tail, fromMicros, toMicros, limit);
  }

  /** The oldest record's time (0 if none). */
  firstMicros(): Promise<number> {
    return firstMicros(this.store, this.intervals, this.tail);
  }

  get lastMicros(): number {
    return this.tail.lastMicros;
  }

  /** What the retention engine works with (storage/retention/): the database, the packed region, the chunk size. */
  lifecycleAccess(): { store: MapStore; intervals: IntervalStore; chunkBytes: number } {
    return { store: this.store, intervals: this.intervals, chunkBytes: this.chunkBytes };
  }

  /** The retention engine switched the index: views plan again, straddling queries run again. */
  noteSwitch(): void {
    this.generation++;
  }

  /** Run a task between merges (clearing packed windows must not pull children from under a merge). Its failure stays its own. */
  betweenMerges<T>(task: () => Promise<T>): Promise<T> {
    const running = this.queues.merges.then(task);
    this.queues.merges = running.then(
      () => undefined,
      () => undefined,
    );
    return running;
  }

  /** Bytes the index's files take on disk. */
  sizeBytes(): number {
    return this.store.sizeBytes();
  }

  async close(): Promise<void> {
    await this.settled();
    await this.store.close();
  }
}
