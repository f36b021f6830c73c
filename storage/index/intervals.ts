// The packed part of the index (docs/formats/delta-map.md, "History lifecycle"): the intervals
// between kept points older than the fine region, each with its map (chunk-major `X` keys, so one
// range scan finds every interval that wrote a chunk), and the lifecycle state: the horizon (the
// oldest kept instant, held by the base image), where the fine region starts, and the operation
// in progress. Intervals tile (horizon, fineStartSequence - 1] exactly.

import { assert } from '../errors.js';
import type { LogPosition } from '../write-log/batch.js';
import { decodeIntervalExtentsKey, intervalExtentsKey, intervalKey, intervalRange, lifecycleKey } from './map-keys.js';
import type { IndexBatch, MapStore } from './map-store.js';

/** One packed interval: records (previous interval's end, lastSequence], newest data per byte. */
export interface IntervalInfo {
  firstSequence: number;
  lastSequence: number;
  /** Times of its first and last data-changing record (0 when it has none). */
  firstMicros: number;
  lastMicros: number;
  /** Its first data-changing record (lastSequence + 1 when it has none): marks before it show the previous end. */
  firstDataSequence: number;
  /** Its last data-changing record (firstSequence - 1 when it has none): the same instant as lastSequence. */
  lastDataSequence: number;
  /** The grade of the point it ended at when packed (a tier's index, -1 a snapshot or hold, -2 not a kept point). */
  endGrade: number;
  /** Its pack file (0: the interval changed no data and has no pack). */
  pack: number;
  packBytes: number;
  /** Extents stored (records in the pack). */
  recordCount: number;
  dataBytes: number;
}

/** What an operation changes in the lifecycle state when it is switched in. */
export interface LifecycleTarget {
  /** The oldest kept instant: the volume just after this record (0: as created). The base image holds it. */
  horizonSequence: number;
  horizonMicros: number;
  /** The horizon's last data-changing record: every sequence from it to the horizon shows the base image. */
  horizonDataSequence: number;
  /** Windows from fineStartWindow on are kept whole; their first record is fineStartSequence. */
  fineStartWindow: number;
  fineStartSequence: number;
  /** Where record fineStartSequence starts in the log, when known. */
  fineStartPosition: LogPosition | null;
}

/**
 * An operation whose new packs are written and synced but whose switch may be incomplete. Open
 * redoes it: folds write the same bytes again, keys are put and deleted again.
 */
export interface PendingOperation {
  kind: 'pack' | 'merge' | 'fold';
  /** writing: new packs are being written (a crash abandons them); switching: they are whole (a crash redoes the switch). */
  phase: 'writing' | 'switching';
  add: IntervalInfo[];
  remove: IntervalInfo[];
  /** A fold of fine windows [from, to) into the base image (their data read from the log). */
  foldWindows: { from: number; to: number } | null;
  target: LifecycleTarget;
}

export interface LifecycleState extends LifecycleTarget {
  nextPackNumber: number;
  pending: PendingOperation | null;
  /** Packs the index no longer names: deleted when no reader needs them (and at open). */
  obsoletePacks: number[];
}

export function initialLifecycleState(createdMicros: number, firstPosition: LogPosition): LifecycleState {
  return {
    horizonSequence: 0,
    horizonMicros: createdMicros,
    horizonDataSequence: 0,
    fineStartWindow: 0,
    fineStartSequence: 1,
    fineStartPosition: firstPosition,
    nextPackNumber: 1,
    pending: null,
    obsoletePacks: [],
  };
}

export class IntervalStore {
  private readonly store: MapStore;
  state: LifecycleState;
  /** Every interval, oldest first (bounded by lifecycleLimits.intervalCountMax). */
  private list: IntervalInfo[];

  private constructor(store: MapStore, state: LifecycleState, list: IntervalInfo[]) {
    this.store = store;
    this.state = state;
    this.list = list;
  }

  static async load(store: MapStore, createdMicros: number, firstPosition: LogPosition): Promise<IntervalStore> {
    const value = await store.db.get(lifecycleKey);
    const state = value === undefined ? initialLifecycleState(createdMicros, firstPosition) : (JSON.parse(value.toString('utf8')) as LifecycleState);
    state.horizonDataSequence ??= state.horizonSequence;
    const list: IntervalInfo[] = [];
    for await (const [, interval] of store.db.iterator(intervalRange)) list.push(JSON.parse(interval.toString('utf8')) as IntervalInfo);
    return new IntervalStore(store, state, list);
  }

  get intervals(): readonly IntervalInfo[] {
    return this.list;
  }

  /** The last record of the packed region (the horizon when nothing is packed). */
  get packedThroughSequence(): number {
    return this.state.fineStartSequence - 1;
  }

  intervalEndingAt(sequence: number): IntervalInfo | null {
    return this.list.find((interval) => interval.lastSequence === sequence) ?? null;
  }

  /** The interval holding record `sequence` (not its end: an instant inside it is gone). */
  intervalHolding(sequence: number): IntervalInfo | null {
    return this.list.find((interval) => interval.firstSequence <= sequence && sequence <= interval.lastSequence) ?? null;
  }

  /**
   * The kept end of the packed region (an interval's last record, or the horizon) that shows what
   * record `sequence` shows: marks after an interval's last data record show its end, marks before
   * its first data record the previous end. Null when `sequence` lies among its data: gone.
   */
  keptEndShowing(sequence: number): number | null {
    const { horizonSequence } = this.state;
    if (sequence === horizonSequence) return horizonSequence;
    const position = this.list.findIndex((interval) => interval.firstSequence <= sequence && sequence <= interval.lastSequence);
    if (position < 0) return null;
    const interval = this.list[position]!;
    const hasData = interval.lastDataSequence >= interval.firstSequence;
    if (hasData && sequence >= interval.lastDataSequence) return interval.lastSequence;
    if (!hasData || sequence < interval.firstDataSequence) return position > 0 ? this.list[position - 1]!.lastSequence : horizonSequence;
    return null;
  }

  /** The last data-changing record `sequence` shows in the packed region (the canonical instant), or null when gone. */
  canonicalShowing(sequence: number): number | null {
    const end = this.keptEndShowing(sequence);
    if (end === null) return null;
    for (let position = this.list.findIndex((interval) => interval.lastSequence === end); position >= 0; position--) {
      const interval = this.list[position]!;
      if (interval.lastDataSequence >= interval.firstSequence) return interval.lastDataSequence;
    }
    return this.state.horizonSequence;
  }

  /** Each interval's extents of one chunk, newest interval first, for intervals ending at or before `throughSequence`. */
  async valuesForChunk(chunk: number, throughSequence: number): Promise<Buffer[]> {
    if (this.list.length === 0 || throughSequence <= this.state.horizonSequence) return [];
    const values: Buffer[] = [];
    for await (const [, value] of this.store.db.iterator({ gte: intervalExtentsKey(chunk, 0), lte: intervalExtentsKey(chunk, throughSequence), reverse: true })) values.push(value);
    return values;
  }

  /** valuesForChunk for chunks [firstChunk, endChunk), with one range scan. */
  async valuesForChunks(firstChunk: number, endChunk: number, throughSequence: number): Promise<Map<number, Buffer[]>> {
    const byChunk = new Map<number, Buffer[]>();
    if (this.list.length === 0 || throughSequence <= this.state.horizonSequence) return byChunk;
    for await (const [key, value] of this.store.db.iterator({ gte: intervalExtentsKey(firstChunk, 0), lt: intervalExtentsKey(endChunk, 0) })) {
      const { chunk, lastSequence } = decodeIntervalExtentsKey(key);
      if (lastSequence > throughSequence) continue;
      let values = byChunk.get(chunk);
      if (values === undefined) byChunk.set(chunk, (values = []));
      values.unshift(value); // keys come oldest first within a chunk
    }
    return byChunk;
  }

  /** Write the state and the intervals' summaries in one synced batch (with any other operations). */
  async commit(state: LifecycleState, changes: { add: readonly IntervalInfo[]; remove: readonly IntervalInfo[] }, more: IndexBatch = []): Promise<void> {
    const batch: IndexBatch = [...more];
    for (const interval of changes.remove) batch.push({ type: 'del', key: intervalKey(interval.lastSequence) });
    for (const interval of changes.add) batch.push({ type: 'put', key: intervalKey(interval.lastSequence), value: Buffer.from(JSON.stringify(interval)) });
    batch.push({ type: 'put', key: lifecycleKey, value: Buffer.from(JSON.stringify(state)) });
    await this.store.batchSynced(batch);
    const removed = new Set(changes.remove.map((interval) => interval.lastSequence));
    const list = this.list.filter((interval) => !removed.has(interval.lastSequence) || changes.add.some((added) => added.lastSequence === interval.lastSequence));
    for (const interval of changes.add) {
      const existing = list.findIndex((candidate) => candidate.lastSequence === interval.lastSequence);
      if (existing >= 0) list[existing] = interval;
      else list.push(interval);
    }
    list.sort((left, right) => left.lastSequence - right.lastSequence);
    this.list = list;
    this.state = state;
    this.assertTiling();
  }

  /** The intervals tile (horizon, packed through] without gaps or overlaps. */
  private assertTiling(): void {
    let expectedFirst = this.state.horizonSequence + 1;
    for (const interval of this.list) {
      assert(interval.firstSequence === expectedFirst, `intervals tile the packed region (${interval.firstSequence} where ${expectedFirst} was due)`);
      expectedFirst = interval.lastSequence + 1;
    }
    assert(expectedFirst === this.state.fineStartSequence, `the packed region ends where the fine region starts (${expectedFirst} and ${this.state.fineStartSequence})`);
  }
}

/** The key of an interval's extents within one chunk. */
export { intervalExtentsKey };
