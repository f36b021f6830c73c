// Changed-block tracking from the index: the byte ranges written between two records, for the
// dirty bitmaps of snapshots and for restores that copy only what changed. The windows holding
// the two ends are read record by record; the windows between them through their merged maps.

import { unionOf } from './extents.js';
import type { WindowRecord } from './map-keys.js';
import type { MapStore } from './map-store.js';
import { rangeMaps } from './planner.js';
import type { Tail } from './tail.js';

/** Byte ranges of [startBytes, endBytes) written by records in (fromSequence, toSequence]. */
export async function changedBetween(
  store: MapStore,
  tail: Tail,
  chunkBytes: number,
  range: { fromSequence: number; toSequence: number; startBytes: number; endBytes: number },
): Promise<Array<[number, number]>> {
  const { fromSequence, toSequence, startBytes, endBytes } = range;
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
