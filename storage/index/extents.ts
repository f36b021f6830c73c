// Extents: byte ranges of the volume, each saying which log record holds its newest data.
// A delta map is a sorted list of non-overlapping extents (docs/formats/delta-map.md). This file
// builds them (newest record wins where writes overlap) and merges them (newer maps win).

import { assert } from '../errors.js';
import type { WindowRecord } from './map-keys.js';

/**
 * Extents name the file holding their data by a number (`segmentNumber`): write-log segments are
 * 1 to 2^31 - 1, packs are 2^31 + their pack number, and the base image is 2^32 - 1.
 */
export const fileNumbers = { packFirst: 0x8000_0000, baseImage: 0xffff_ffff } as const;

/** Where the data of an extent lies: a record in the log or in a pack, the base image, or nothing (zeroes, trim). */
export interface ExtentSource {
  sequence: number;
  /** True for data records; false for zeroes and trims (the range reads as zeroes). */
  hasData: boolean;
  /** The record's payload is compressed (flag snappy): its data is read through its frame table. */
  compressed: boolean;
  /** The file: a segment, a pack or the base image (fileNumbers). */
  segmentNumber: number;
  /** Offset of the record's header in its segment. */
  recordOffsetBytes: number;
  /** The volume offset the record starts at: the extent's data is at payload + (start - this). */
  volumeOffsetBytes: number;
}

export interface Extent {
  startBytes: number;
  endBytes: number;
  source: ExtentSource;
}

/** A record written in a window, as the map engine keeps it (no payload). */
export interface RecordExtent {
  startBytes: number;
  endBytes: number;
  source: ExtentSource;
}

/**
 * The newest-wins segmentation of records given in log order: for every byte, the last record
 * that wrote it. Sweep over the boundaries with a max-heap of the records covering the point.
 * O(n log n).
 */
export function flattenNewestWins(records: readonly RecordExtent[]): Extent[] {
  if (records.length === 0) return [];
  const boundaries: Array<{ positionBytes: number; recordIndex: number; opens: boolean }> = [];
  records.forEach((record, recordIndex) => {
    assert(record.startBytes < record.endBytes, 'records cover at least one byte');
    boundaries.push({ positionBytes: record.startBytes, recordIndex, opens: true });
    boundaries.push({ positionBytes: record.endBytes, recordIndex, opens: false });
  });
  boundaries.sort((left, right) => left.positionBytes - right.positionBytes);
  const heap = new MaxHeap();
  const closed = new Uint8Array(records.length);
  const result: Extent[] = [];
  let index = 0;
  while (index < boundaries.length) {
    const positionBytes = boundaries[index]!.positionBytes;
    for (; index < boundaries.length && boundaries[index]!.positionBytes === positionBytes; index++) {
      const boundary = boundaries[index]!;
      if (boundary.opens) heap.push(boundary.recordIndex);
      else closed[boundary.recordIndex] = 1;
    }
    while (heap.size > 0 && closed[heap.top()] === 1) heap.pop();
    if (heap.size === 0 || index === boundaries.length) continue;
    const winner = records[heap.top()]!;
    const endBytes = boundaries[index]!.positionBytes;
    const last = result[result.length - 1];
    if (last !== undefined && last.source === winner.source && last.endBytes === positionBytes) last.endBytes = endBytes;
    else result.push({ startBytes: positionBytes, endBytes, source: winner.source });
  }
  return result;
}

/** A max-heap of record indexes (later records are newer). */
class MaxHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  top(): number {
    return this.items[0]!;
  }

  push(item: number): void {
    const items = this.items;
    items.push(item);
    let child = items.length - 1;
    while (child > 0) {
      const parent = (child - 1) >> 1;
      if (items[parent]! >= items[child]!) break;
      [items[parent], items[child]] = [items[child]!, items[parent]!];
      child = parent;
    }
  }

  pop(): void {
    const items = this.items;
    const last = items.pop()!;
    if (items.length === 0) return;
    items[0] = last;
    let parent = 0;
    for (;;) {
      const left = 2 * parent + 1;
      const right = left + 1;
      let largest = parent;
      if (left < items.length && items[left]! > items[largest]!) largest = left;
      if (right < items.length && items[right]! > items[largest]!) largest = right;
      if (largest === parent) break;
      [items[parent], items[largest]] = [items[largest]!, items[parent]!];
      parent = largest;
    }
  }
}

/**
 * Merge sorted, non-overlapping extent streams, newest first: where several cover a byte, the
 * first stream's extent wins. Streams are consumed as they are read (bounded memory), so maps
 * larger than memory merge too.
 */
export async function* mergeNewestWins(streamsNewestFirst: ReadonlyArray<AsyncIterator<Extent>>): AsyncGenerator<Extent> {
  const current: Array<Extent | null> = [];
  for (const stream of streamsNewestFirst) current.push(await nextOf(stream));
  let positionBytes = -1;
  let pending: Extent | null = null;
  for (;;) {
    // Drop what lies before the position.
    for (let index = 0; index < current.length; index++) {
      while (current[index] !== null && current[index]!.endBytes <= positionBytes) current[index] = await nextOf(streamsNewestFirst[index]!);
    }
    let nextStart = Number.POSITIVE_INFINITY;
    for (const extent of current) if (extent !== null) nextStart = Math.min(nextStart, Math.max(extent.startBytes, positionBytes));
    if (nextStart === Number.POSITIVE_INFINITY) break;
    positionBytes = nextStart;
    // The newest stream covering the position wins, up to where it ends or a newer one begins.
    let winner = -1;
    for (let index = 0; index < current.length; index++) {
      const extent = current[index] ?? null;
      if (extent !== null && extent.startBytes <= positionBytes && positionBytes < extent.endBytes) {
        winner = index;
        break;
      }
    }
    assert(winner >= 0, 'some stream covers the next start');
    let endBytes = current[winner]!.endBytes;
    for (let index = 0; index < winner; index++) {
      const extent = current[index] ?? null;
      if (extent !== null && extent.startBytes > positionBytes) endBytes = Math.min(endBytes, extent.startBytes);
    }
    const source = current[winner]!.source;
    if (pending !== null && pending.source === source && pending.endBytes === positionBytes) {
      pending.endBytes = endBytes;
    } else {
      if (pending !== null) yield pending;
      pending = { startBytes: positionBytes, endBytes, source };
    }
    positionBytes = endBytes;
  }
  if (pending !== null) yield pending;
}

async function nextOf(stream: AsyncIterator<Extent>): Promise<Extent | null> {
  const result = await stream.next();
  return result.done === true ? null : result.value;
}

/** An async iterator over an array (for merges of maps already in memory). */
export function streamOf(extents: readonly Extent[]): AsyncIterator<Extent> {
  let index = 0;
  return {
    next: async () => (index < extents.length ? { done: false, value: extents[index++]! } : { done: true, value: undefined }),
  };
}

/** The parts of [startBytes, endBytes) not covered by the sorted extents. */
export function gapsOf(extents: readonly Extent[], startBytes: number, endBytes: number): Array<[number, number]> {
  const gaps: Array<[number, number]> = [];
  let cursor = startBytes;
  for (const extent of extents) {
    if (extent.endBytes <= cursor) continue;
    if (extent.startBytes >= endBytes) break;
    if (extent.startBytes > cursor) gaps.push([cursor, Math.min(extent.startBytes, endBytes)]);
    cursor = Math.max(cursor, extent.endBytes);
    if (cursor >= endBytes) break;
  }
  if (cursor < endBytes) gaps.push([cursor, endBytes]);
  return gaps;
}

/** The newest-wins extents of window records given in log order. */
export function flattenRecords(records: readonly WindowRecord[]): Extent[] {
  return flattenNewestWins(records.map((record) => ({ startBytes: record.startBytes, endBytes: record.startBytes + record.lengthBytes, source: record.source })));
}

/** Extents grouped by chunk, split at chunk boundaries. */
export function splitByChunk(extents: readonly Extent[], chunkBytes: number): Map<number, Extent[]> {
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

/** The sorted extents overlapping [startBytes, endBytes), clipped to it (binary search to the first). */
export function clip(extents: readonly Extent[], startBytes: number, endBytes: number): Extent[] {
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
export function intersect(extents: readonly Extent[], gaps: ReadonlyArray<[number, number]>): Extent[] {
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
export function mergeSorted(left: readonly Extent[], right: readonly Extent[]): Extent[] {
  const merged: Extent[] = [];
  let leftIndex = 0;
  let rightIndex = 0;
  while (leftIndex < left.length || rightIndex < right.length) {
    if (rightIndex >= right.length || (leftIndex < left.length && left[leftIndex]!.startBytes <= right[rightIndex]!.startBytes)) merged.push(left[leftIndex++]!);
    else merged.push(right[rightIndex++]!);
  }
  return merged;
}

/** The union of byte ranges, sorted and joined where they touch. */
export function unionOf(ranges: Array<[number, number]>): Array<[number, number]> {
  ranges.sort((left, right) => left[0] - right[0]);
  const union: Array<[number, number]> = [];
  for (const [start, end] of ranges) {
    const last = union[union.length - 1];
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
    else union.push([start, end]);
  }
  return union;
}
