// The planner: how to read the volume as of record S (docs/formats/delta-map.md, "What a map
// is" and "History lifecycle"). A plan is the partial window up to S, then the maps covering
// every window of the fine region before it, newest first (the largest aligned merged maps that
// exist, so O(log history) maps), then the packed intervals ending at or before S, newest first,
// then the base image (the volume at the horizon). Resolving a chunk fills its range from each in
// turn, where still a gap.

import { StorageError } from '../errors.js';
import { indexLimits } from '../limits.js';
import { clip, fileNumbers, gapsOf, intersect, mergeSorted, flattenRecords, type Extent, type ExtentSource } from './extents.js';
import type { IntervalStore } from './intervals.js';
import { decodeChunkExtents, type MapReference } from './map-keys.js';
import type { MapStore } from './map-store.js';
import type { Tail } from './tail.js';

/** Where "as of record S" stands: the partial window, the maps, the intervals, the base image. */
export interface InstantPlan {
  sequence: number;
  /** Extents of the records after the last whole window, up to S (sorted, non-overlapping). */
  partial: Extent[];
  mapsNewestFirst: MapReference[];
  /** Intervals ending at or before this record are consulted after the maps (0: none). */
  intervalsThroughSequence: number;
  /** What is still a gap then reads from the base image (null: no base yet, gaps are holes). */
  base: ExtentSource | null;
}

/** The plan to read the volume as of record `sequence`. */
export async function planAt(store: MapStore, intervals: IntervalStore, tail: Tail, sequence: number): Promise<InstantPlan> {
  const { horizonSequence, fineStartWindow } = intervals.state;
  const packedThrough = intervals.packedThroughSequence;
  const base: ExtentSource | null =
    horizonSequence === 0 ? null : { sequence: horizonSequence, hasData: true, compressed: false, segmentNumber: fileNumbers.baseImage, recordOffsetBytes: 0, volumeOffsetBytes: 0 };
  if (sequence < horizonSequence) throw new StorageError('EEXPIRED', `record ${sequence} is before the oldest kept instant (record ${horizonSequence})`);
  if (sequence <= packedThrough) {
    const keptEnd = intervals.keptEndShowing(sequence);
    if (keptEnd === null) throw new StorageError('EEXPIRED', `record ${sequence} lies inside a packed interval: only its ends are kept`);
    return { sequence, partial: [], mapsNewestFirst: [], intervalsThroughSequence: keptEnd, base };
  }
  const fine = { intervalsThroughSequence: packedThrough, base };
  const window = await store.windowOf(sequence);
  if (window === null) return { sequence, partial: tail.extentsUpTo(sequence), mapsNewestFirst: fineMaps(store, fineStartWindow, store.checkpoint.windowCount), ...fine };
  const info = await store.mapInfo({ level: 0, index: window });
  if (sequence >= info.lastSequence) return { sequence, partial: [], mapsNewestFirst: fineMaps(store, fineStartWindow, window + 1), ...fine };
  const upTo = (await store.windowRecords(window)).filter((record) => record.source.sequence <= sequence);
  return { sequence, partial: flattenRecords(upTo), mapsNewestFirst: fineMaps(store, fineStartWindow, window), ...fine };
}

/** Maps covering fine windows [fineStartWindow, windowEnd), newest first. */
function fineMaps(store: MapStore, fineStartWindow: number, windowEnd: number): MapReference[] {
  return rangeMaps(store, fineStartWindow, windowEnd).reverse();
}

/** Maps covering windows [from, to) exactly, oldest first. */
export function rangeMaps(store: MapStore, from: number, to: number): MapReference[] {
  const maps: MapReference[] = [];
  const { fanout } = indexLimits;
  let position = from;
  while (position < to) {
    let level = 0;
    let span = 1;
    // Grow while the next level's map is aligned here, fits, and has been built.
    while (position % (span * fanout) === 0 && position + span * fanout <= to && store.builtCount(level + 1) > position / (span * fanout)) {
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
export async function resolve(
  store: MapStore,
  intervals: IntervalStore,
  chunkBytes: number,
  plan: InstantPlan,
  startBytes: number,
  endBytes: number,
): Promise<{ extents: Extent[]; mapsConsulted: number }> {
  const found: Extent[] = [];
  let mapsConsulted = 0;
  const firstChunk = Math.floor(startBytes / chunkBytes);
  const lastChunk = Math.floor((endBytes - 1) / chunkBytes);
  for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
    const chunkStart = Math.max(startBytes, chunk * chunkBytes);
    const chunkEnd = Math.min(endBytes, (chunk + 1) * chunkBytes);
    // Every map's extents of the chunk in one call (unless the partial window fills it); then newest first.
    const needed = gapsOf(clip(plan.partial, chunkStart, chunkEnd), chunkStart, chunkEnd).length > 0;
    const values = needed ? await store.chunkValues(plan.mapsNewestFirst, chunk) : [];
    const filled = fillNewestFirst(plan, chunkStart, chunkEnd, values);
    // Then the intervals that wrote the chunk, newest first, in one range scan; then the base.
    if (filled.gaps.length > 0 && plan.intervalsThroughSequence > 0) {
      fillFromValues(filled, await intervals.valuesForChunk(chunk, plan.intervalsThroughSequence));
    }
    for (const extent of fillFromBase(plan, filled).extents) found.push(extent);
    mapsConsulted = Math.max(mapsConsulted, filled.mapsConsulted);
  }
  return { extents: found, mapsConsulted };
}

/**
 * The extents of whole chunks [firstChunk, endChunk) as of the plan's instant, per chunk: one
 * range scan per map instead of one lookup of every map per chunk. For reading a large part of
 * a view soon (a transfer): 1,894 chunks looked up one by one cost about 230 ms of LevelDB work.
 */
export async function resolveChunks(
  store: MapStore,
  intervals: IntervalStore,
  chunkBytes: number,
  plan: InstantPlan,
  firstChunk: number,
  endChunk: number,
  volumeSizeBytes: number,
): Promise<Map<number, Extent[]>> {
  const valuesByChunk = new Map<number, Array<Buffer | undefined>>();
  for (let chunk = firstChunk; chunk < endChunk; chunk++) valuesByChunk.set(chunk, new Array<Buffer | undefined>(plan.mapsNewestFirst.length));
  for (const [mapIndex, map] of plan.mapsNewestFirst.entries()) {
    for await (const [chunk, value] of store.chunkValuesBetween(map, firstChunk, endChunk)) valuesByChunk.get(chunk)![mapIndex] = value;
  }
  const intervalValues = plan.intervalsThroughSequence > 0 ? await intervals.valuesForChunks(firstChunk, endChunk, plan.intervalsThroughSequence) : new Map<number, Buffer[]>();
  const resolved = new Map<number, Extent[]>();
  for (const [chunk, values] of valuesByChunk) {
    const startBytes = chunk * chunkBytes;
    const filled = fillNewestFirst(plan, startBytes, Math.min(startBytes + chunkBytes, volumeSizeBytes), values);
    fillFromValues(filled, intervalValues.get(chunk) ?? []);
    resolved.set(chunk, fillFromBase(plan, filled).extents);
  }
  return resolved;
}

/**
 * The extents of [startBytes, endBytes) (within one chunk) as of the plan's instant: the partial
 * window first, then the maps' values for the chunk, newest first, each filling what is still a
 * gap. `valuesNewestFirst[i]` is map i's value for the chunk (undefined: no extents there).
 */
function fillNewestFirst(plan: InstantPlan, startBytes: number, endBytes: number, valuesNewestFirst: ReadonlyArray<Buffer | undefined>): Filling {
  const extents = clip(plan.partial, startBytes, endBytes);
  const filling: Filling = { startBytes, endBytes, extents, gaps: gapsOf(extents, startBytes, endBytes), mapsConsulted: 0 };
  fillFromValues(filling, valuesNewestFirst);
  return filling;
}

/** A chunk being resolved: what is found so far, and the gaps left. */
interface Filling {
  startBytes: number;
  endBytes: number;
  extents: Extent[];
  gaps: Array<[number, number]>;
  mapsConsulted: number;
}

/** Fill the gaps from encoded extent lists, newest first. */
function fillFromValues(filling: Filling, valuesNewestFirst: ReadonlyArray<Buffer | undefined>): void {
  for (const value of valuesNewestFirst) {
    if (filling.gaps.length === 0) break;
    filling.mapsConsulted++;
    if (value === undefined) continue;
    const found = intersect(decodeChunkExtents(value), filling.gaps);
    if (found.length === 0) continue;
    filling.extents = mergeSorted(filling.extents, found);
    filling.gaps = gapsOf(filling.extents, filling.startBytes, filling.endBytes);
  }
}

/** What no map or interval wrote reads from the base image, when there is one (else it is a hole). */
function fillFromBase(plan: InstantPlan, filling: Filling): Filling {
  if (plan.base === null || filling.gaps.length === 0) return filling;
  const fromBase = filling.gaps.map(([startBytes, endBytes]) => ({ startBytes, endBytes, source: plan.base! }));
  filling.extents = mergeSorted(filling.extents, fromBase);
  filling.gaps = [];
  return filling;
}
