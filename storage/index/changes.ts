// Changed-block tracking from the index: the byte ranges written between two records, for the
// dirty bitmaps of snapshots and for restores that copy only what changed. The windows holding
// the two ends are read record by record; the windows between them through their merged maps.

import { StorageError } from '../errors.js';
import { decodeChunkExtents, decodeIntervalExtentsKey, intervalExtentsKey, type WindowRecord } from './map-keys.js';
import { unionOf } from './extents.js';
import type { IntervalStore } from './intervals.js';
import type { MapStore } from './map-store.js';
import { rangeMaps } from './planner.js';
import type { Tail } from './tail.js';

/** Byte ranges of [startBytes, endBytes) written by records in (fromSequence, toSequence]. */
export async function changedBetween(
  store: MapStore,
  intervals: IntervalStore,
  tail: Tail,
  chunkBytes: number,
  range: { fromSequence: number; toSequence: number; startBytes: number; endBytes: number },
): Promise<Array<[number, number]>> {
  const { toSequence, startBytes, endBytes } = range;
  let { fromSequence } = range;
  if (toSequence <= fromSequence) return [];
  const ranges: Array<[number, number]> = [];
  const packedThrough = intervals.packedThroughSequence;
  if (fromSequence < packedThrough) {
    await addIntervals(store, intervals, chunkBytes, { fromSequence, toSequence: Math.min(toSequence, packedThrough), startBytes, endBytes }, ranges);
    if (toSequence <= packedThrough) return unionOf(ranges);
    fromSequence = packedThrough;
  }
  const addRecords = (records: readonly WindowRecord[]): void => {
    for (const record of records) {
      if (record.source.sequence <= fromSequence || record.source.sequence > toSequence) continue;
      const start = Math.max(record.startBytes, startBytes);
      const end = Math.min(record.startBytes + record.lengthBytes, endBytes);
      if (start < end) ranges.push([start, end]);
    }
  };
  const fromWindow = await store.windowOf(fromSequence + 1);
  const toWindow = await store.windowOf(toSequence);
  const windowEnd = toWindow ?? store.checkpoint.windowCount;
  if (fromWindow !== null) {
    addRecords(await store.windowRecords(fromWindow));
    for (const map of rangeMaps(store, fromWindow + 1, windowEnd)) {
      for (const extent of await store.queryMap(map, startBytes, endBytes, chunkBytes)) ranges.push([extent.startBytes, extent.endBytes]);
    }
    if (toWindow !== null && toWindow !== fromWindow) addRecords(await store.windowRecords(toWindow));
  }
  if (toWindow === null) addRecords(tail.records);
  return unionOf(ranges);
}

/** The ranges the intervals in (fromSequence, toSequence] wrote; both ends must be kept points. */
async function addIntervals(
  store: MapStore,
  intervals: IntervalStore,
  chunkBytes: number,
  range: { fromSequence: number; toSequence: number; startBytes: number; endBytes: number },
  ranges: Array<[number, number]>,
): Promise<void> {
  const { fromSequence, toSequence, startBytes, endBytes } = range;
  const kept = (sequence: number): boolean => sequence === intervals.state.horizonSequence || intervals.intervalEndingAt(sequence) !== null;
  if (!kept(fromSequence) || !kept(toSequence)) throw new StorageError('EEXPIRED', `changes between records ${fromSequence} and ${toSequence} are no longer kept exactly`);
  const firstChunk = Math.floor(startBytes / chunkBytes);
  const endChunk = Math.floor((endBytes - 1) / chunkBytes) + 1;
  for await (const [key, value] of store.db.iterator({ gte: intervalExtentsKey(firstChunk, 0), lt: intervalExtentsKey(endChunk, 0) })) {
    const { lastSequence } = decodeIntervalExtentsKey(key);
    if (lastSequence <= fromSequence || lastSequence > toSequence) continue;
    for (const extent of decodeChunkExtents(value)) {
      const start = Math.max(extent.startBytes, startBytes);
      const end = Math.min(extent.endBytes, endBytes);
      if (start < end) ranges.push([start, end]);
    }
  }
}
