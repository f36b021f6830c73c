// Time and the index: which record an instant (microseconds) names, when a record was written,
// and the windows' summaries along a span of time (the timeline the API draws). Windows are found
// by their last sequence (`L` keys) and by their last time (`T` keys): one seek each.

import type { IntervalStore } from './intervals.js';
import { decodeWindowByTimeKey, windowByTimeEnd, windowByTimeKey, type MapInfo, type WindowRecord } from './map-keys.js';
import type { MapStore } from './map-store.js';
import type { Tail } from './tail.js';

/**
 * The last data-changing record written at or before `micros` (0 if none). In the packed region
 * only the ends of intervals are kept: a time inside an interval gives a record inside it, which
 * the history refuses as expired.
 */
export async function sequenceAt(store: MapStore, intervals: IntervalStore, tail: Tail, micros: number): Promise<number> {
  const tailRecords = tail.records;
  if (tailRecords.length > 0 && tailRecords[0]!.micros <= micros) return lastAtOrBefore(tailRecords, micros)!.source.sequence;
  const { fineStartWindow } = intervals.state;
  // The first fine window ending at or after `micros` holds the instant, or starts after it.
  let window: number | null = null;
  for await (const [key] of store.db.iterator({ gte: windowByTimeKey(micros, 0), lt: windowByTimeEnd })) {
    const { index } = decodeWindowByTimeKey(key);
    if (index < fineStartWindow) continue; // a packed window whose keys are not cleared yet
    window = index;
    break;
  }
  // A window's end may be a mark (a snapshot, recovery's note): the last data-changing record before it.
  if (window === null) return lastDataSequence(store, intervals, tail, store.checkpoint.mappedThroughSequence);
  const record = lastAtOrBefore(await store.windowRecords(window), micros);
  if (record !== undefined) return record.source.sequence;
  if (window > fineStartWindow) return lastDataSequence(store, intervals, tail, (await store.mapInfo({ level: 0, index: window - 1 })).lastSequence);
  return packedSequenceAt(intervals, micros);
}

/** sequenceAt for a time before the fine region: an interval's end, the horizon, or a record inside an interval. */
function packedSequenceAt(intervals: IntervalStore, micros: number): number {
  const list = intervals.intervals;
  for (let position = list.length - 1; position >= 0; position--) {
    const interval = list[position]!;
    if (interval.firstMicros === 0 || interval.firstMicros > micros) continue;
    return micros >= interval.lastMicros ? interval.lastSequence : interval.firstDataSequence; // inside it: gone
  }
  // Before the first interval: the horizon, if the time is not before it (then it is gone: a record before the horizon).
  const { horizonSequence, horizonMicros } = intervals.state;
  return horizonSequence > 0 && micros < horizonMicros ? horizonSequence - 1 : horizonSequence;
}

/**
 * The last data-changing record at or before `sequence` (0 if none): the volume looks the same
 * just after both, so kept instants are compared by it. In the packed region: the kept end that
 * shows the same, or `sequence` itself when it lies inside an interval.
 */
export async function lastDataSequence(store: MapStore, intervals: IntervalStore, tail: Tail, sequence: number): Promise<number> {
  if (sequence <= intervals.packedThroughSequence) {
    return intervals.canonicalShowing(sequence) ?? sequence; // null: inside an interval, gone
  }
  for (let window = await store.windowOf(sequence); ; window--) {
    const records = window === null ? tail.records : window < intervals.state.fineStartWindow ? null : await store.windowRecords(window);
    if (records === null) return lastDataSequence(store, intervals, tail, intervals.packedThroughSequence);
    let found = 0;
    for (const record of records) {
      if (record.source.sequence > sequence) break;
      found = record.source.sequence;
    }
    if (found > 0) return found;
    if (window === null) window = store.checkpoint.windowCount; // the tail had none: look in the cut windows
    if (window === 0) return 0;
  }
}

/** Time of the last data-changing record at or before `sequence` (0 if none). */
export async function microsOf(store: MapStore, intervals: IntervalStore, tail: Tail, sequence: number): Promise<number> {
  if (sequence <= intervals.packedThroughSequence) return packedMicrosOf(intervals, sequence);
  const window = await store.windowOf(sequence);
  const records = window === null ? tail.records : await store.windowRecords(window);
  let micros = 0;
  for (const record of records) {
    if (record.source.sequence > sequence) break;
    micros = record.micros;
  }
  if (micros > 0 || window === null || window === 0) return micros;
  if (window > intervals.state.fineStartWindow) return (await store.mapInfo({ level: 0, index: window - 1 })).lastMicros;
  return packedMicrosOf(intervals, intervals.packedThroughSequence);
}

function packedMicrosOf(intervals: IntervalStore, sequence: number): number {
  // The time of the last data record `sequence` shows: the end's interval's (or an earlier one's), or the horizon's.
  const end = intervals.keptEndShowing(sequence);
  const list = intervals.intervals;
  for (let position = list.findIndex((interval) => interval.lastSequence === end); position >= 0; position--) {
    if (list[position]!.lastMicros > 0) return list[position]!.lastMicros;
  }
  return intervals.state.horizonSequence > 0 ? intervals.state.horizonMicros : 0;
}

/** A stretch of history on the timeline: a window, the tail, or a packed interval (records: the extents it kept). */
export interface TimelineSpan extends MapInfo {
  packed: boolean;
}

/** Summaries of the intervals and windows that end within [fromMicros, toMicros], plus the tail's. */
export async function windowsBetween(store: MapStore, intervals: IntervalStore, tail: Tail, fromMicros: number, toMicros: number, limit: number): Promise<TimelineSpan[]> {
  const infos: TimelineSpan[] = [];
  for (const interval of intervals.intervals) {
    if (infos.length >= limit) return infos;
    if (interval.lastMicros < fromMicros || interval.firstMicros > toMicros || interval.firstMicros === 0) continue;
    const { firstSequence, lastSequence, firstMicros, lastMicros, recordCount, dataBytes } = interval;
    infos.push({ firstSequence, lastSequence, firstMicros, lastMicros, recordCount, dataBytes, extentCount: recordCount, packed: true });
  }
  const { fineStartWindow } = intervals.state;
  for await (const [key] of store.db.iterator({ gte: windowByTimeKey(fromMicros, 0), lt: windowByTimeEnd })) {
    if (infos.length >= limit) break;
    const { lastMicros, index } = decodeWindowByTimeKey(key);
    if (index < fineStartWindow) continue;
    infos.push({ ...(await store.mapInfo({ level: 0, index })), packed: false });
    if (lastMicros > toMicros) break; // it may start within the range
  }
  if (tail.records.length > 0 && tail.firstMicros <= toMicros) infos.push({ ...tail.summary(store.checkpoint.mappedThroughSequence), packed: false });
  return infos;
}

/** The oldest kept instant's time (the horizon's, once history has expired; else the oldest record's; 0 if none). */
export async function firstMicros(store: MapStore, intervals: IntervalStore, tail: Tail): Promise<number> {
  const { horizonSequence, horizonMicros, fineStartWindow } = intervals.state;
  if (horizonSequence > 0) return horizonMicros;
  const first = intervals.intervals[0];
  if (first !== undefined) return first.firstMicros;
  if (store.checkpoint.windowCount <= fineStartWindow) return tail.firstMicros;
  return (await store.mapInfo({ level: 0, index: fineStartWindow })).firstMicros;
}

function lastAtOrBefore(records: readonly WindowRecord[], micros: number): WindowRecord | undefined {
  let found: WindowRecord | undefined;
  for (const record of records) {
    if (record.micros > micros) break;
    found = record;
  }
  return found;
}
