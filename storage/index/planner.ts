// The planner: how to read the volume as of record S (docs/formats/delta-map.md, "What a map
// is"). A plan is the partial window up to S, then the maps covering every window before it,
// newest first: the largest aligned merged maps that exist, so O(log history) maps. Resolving a
// chunk fills its range from the partial window, then from each map in turn, where still a gap.

import { indexLimits } from '../limits.js';
import { clip, gapsOf, intersect, mergeSorted, flattenRecords, type Extent } from './extents.js';
import { decodeChunkExtents, type MapReference } from './map-keys.js';
import type { MapStore } from './map-store.js';
import type { Tail } from './tail.js';

/** Where "as of record S" stands: the maps to consult, newest first, and the partial window. */
export interface InstantPlan {
  sequence: number;
  /** Extents of the records after the last whole window, up to S (sorted, non-overlapping). */
  partial: Extent[];
  mapsNewestFirst: MapReference[];
}

/** The plan to read the volume as of record `sequence`. */
export async function planAt(store: MapStore, tail: Tail, sequence: number): Promise<InstantPlan> {
  const window = await store.windowOf(sequence);
  if (window === null) return { sequence, partial: tail.extentsUpTo(sequence), mapsNewestFirst: prefixMaps(store, store.checkpoint.windowCount) };
  const info = await store.mapInfo({ level: 0, index: window });
  if (sequence >= info.lastSequence) return { sequence, partial: [], mapsNewestFirst: prefixMaps(store, window + 1) };
  const upTo = (await store.windowRecords(window)).filter((record) => record.source.sequence <= sequence);
  return { sequence, partial: flattenRecords(upTo), mapsNewestFirst: prefixMaps(store, window) };
}

/** Maps covering windows [0, windowEnd), newest first: the largest aligned merged maps that exist. */
export function prefixMaps(store: MapStore, windowEnd: number): MapReference[] {
  return rangeMaps(store, 0, windowEnd).reverse();
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
export async function resolve(store: MapStore, chunkBytes: number, plan: InstantPlan, startBytes: number, endBytes: number): Promise<{ extents: Extent[]; mapsConsulted: number }> {
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
    for (const extent of filled.extents) found.push(extent);
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
  const resolved = new Map<number, Extent[]>();
  for (const [chunk, values] of valuesByChunk) {
    const startBytes = chunk * chunkBytes;
    resolved.set(chunk, fillNewestFirst(plan, startBytes, Math.min(startBytes + chunkBytes, volumeSizeBytes), values).extents);
  }
  return resolved;
}

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
