// Time and the index: which record an instant (microseconds) names, when a record was written,
// and the windows' summaries along a span of time (the timeline the API draws). Windows are found
// by their last sequence (`L` keys) and by their last time (`T` keys): one seek each.

import { decodeWindowByTimeKey, windowByTimeEnd, windowByTimeKey, type MapInfo, type WindowRecord } from './map-keys.js';
import type { MapStore } from './map-store.js';
import type { Tail } from './tail.js';

/** The last data-changing record written at or before `micros` (0 if none). */
export async function sequenceAt(store: MapStore, tail: Tail, micros: number): Promise<number> {
  const tailRecords = tail.records;
  if (tailRecords.length > 0 && tailRecords[0]!.micros <= micros) return lastAtOrBefore(tailRecords, micros)!.source.sequence;
  // The first window ending at or after `micros` holds the instant, or starts after it.
  const entries = await store.db.iterator({ gte: windowByTimeKey(micros, 0), lt: windowByTimeEnd, limit: 1 }).all();
  if (entries.length === 0) return store.checkpoint.mappedThroughSequence;
  const { index } = decodeWindowByTimeKey(entries[0]![0]);
  const record = lastAtOrBefore(await store.windowRecords(index), micros);
  if (record !== undefined) return record.source.sequence;
  return index === 0 ? 0 : (await store.mapInfo({ level: 0, index: index - 1 })).lastSequence;
}

/** Time of the last data-changing record at or before `sequence` (0 if none). */
export async function microsOf(store: MapStore, tail: Tail, sequence: number): Promise<number> {
  const window = await store.windowOf(sequence);
  const records = window === null ? tail.records : await store.windowRecords(window);
  let micros = 0;
  for (const record of records) {
    if (record.source.sequence > sequence) break;
    micros = record.micros;
  }
  if (micros > 0 || window === null || window === 0) return micros;
  return (await store.mapInfo({ level: 0, index: window - 1 })).lastMicros;
}

/** Summaries of the windows that end within [fromMicros, toMicros], plus the tail's. */
export async function windowsBetween(store: MapStore, tail: Tail, fromMicros: number, toMicros: number, limit: number): Promise<MapInfo[]> {
  const infos: MapInfo[] = [];
  for await (const [key] of store.db.iterator({ gte: windowByTimeKey(fromMicros, 0), lt: windowByTimeEnd, limit })) {
    const { lastMicros, index } = decodeWindowByTimeKey(key);
    infos.push(await store.mapInfo({ level: 0, index }));
    if (lastMicros > toMicros) break; // it may start within the range
  }
  if (tail.records.length > 0 && tail.firstMicros <= toMicros) infos.push(tail.summary(store.checkpoint.mappedThroughSequence));
  return infos;
}

/** The oldest record's time (0 if none). */
export async function firstMicros(store: MapStore, tail: Tail): Promise<number> {
  if (store.checkpoint.windowCount === 0) return tail.firstMicros;
  return (await store.mapInfo({ level: 0, index: 0 })).firstMicros;
}

function lastAtOrBefore(records: readonly WindowRecord[], micros: number): WindowRecord | undefined {
  let found: WindowRecord | undefined;
  for (const record of records) {
    if (record.micros > micros) break;
    found = record;
  }
  return found;
}
