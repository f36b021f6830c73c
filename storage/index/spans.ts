// The newest-wins extents of a span of the fine region, the records (fromSequence, toSequence],
// chunk by chunk in volume order: what packing writes into a pack and what folding writes into the
// base image. Whole windows inside the span are read through their maps (the largest aligned
// merged maps, one range scan each per batch of chunks); the windows at its two ends, when the
// span starts or ends inside them, through their records. Memory stays bounded by one batch of
// chunks and two windows' records.

import { assert } from '../errors.js';
import { clip, flattenRecords, gapsOf, intersect, mergeSorted, splitByChunk, type Extent } from './extents.js';
import { decodeChunkExtents, type MapReference, type WindowRecord } from './map-keys.js';
import type { MapStore } from './map-store.js';
import { rangeMaps } from './planner.js';

const chunksPerBatch = 256;

export interface Span {
  fromSequence: number;
  toSequence: number;
}

/** Call onChunk for every chunk the span wrote, in order, with its extents (sorted, newest data). */
export async function forEachSpanChunk(
  store: MapStore,
  chunkBytes: number,
  volumeSizeBytes: number,
  span: Span,
  onChunk: (chunk: number, extents: Extent[]) => Promise<void>,
): Promise<void> {
  assert(span.fromSequence < span.toSequence && span.toSequence <= store.checkpoint.mappedThroughSequence, 'a span lies in cut windows');
  const firstWindow = (await store.windowOf(span.fromSequence + 1))!;
  const lastWindow = (await store.windowOf(span.toSequence))!;
  const firstInfo = await store.mapInfo({ level: 0, index: firstWindow });
  const lastInfo = await store.mapInfo({ level: 0, index: lastWindow });
  // Windows wholly inside the span go through maps; a window cut by an end goes through its records.
  let wholeFrom = firstInfo.firstSequence === span.fromSequence + 1 ? firstWindow : firstWindow + 1;
  let wholeTo = lastInfo.lastSequence === span.toSequence ? lastWindow + 1 : lastWindow;
  const inSpan = (sequence: number): boolean => sequence > span.fromSequence && sequence <= span.toSequence;
  let newestPartial: WindowRecord[] = [];
  let oldestPartial: WindowRecord[] = [];
  if (firstWindow === lastWindow && wholeFrom >= wholeTo) {
    newestPartial = (await store.windowRecords(lastWindow)).filter((record) => inSpan(record.source.sequence));
    wholeFrom = wholeTo = firstWindow;
  } else {
    if (wholeTo <= lastWindow) newestPartial = (await store.windowRecords(lastWindow)).filter((record) => inSpan(record.source.sequence));
    if (wholeFrom > firstWindow) oldestPartial = (await store.windowRecords(firstWindow)).filter((record) => inSpan(record.source.sequence));
  }
  const newestByChunk = splitByChunk(flattenRecords(newestPartial), chunkBytes);
  const oldestByChunk = splitByChunk(flattenRecords(oldestPartial), chunkBytes);
  const mapsNewestFirst: MapReference[] = wholeFrom < wholeTo ? rangeMaps(store, wholeFrom, wholeTo).reverse() : [];
  const chunkCount = Math.ceil(volumeSizeBytes / chunkBytes);
  for (let batchStart = 0; batchStart < chunkCount; batchStart += chunksPerBatch) {
    const batchEnd = Math.min(chunkCount, batchStart + chunksPerBatch);
    const valuesByChunk = new Map<number, Buffer[]>();
    for (const map of mapsNewestFirst) {
      for await (const [chunk, value] of store.chunkValuesBetween(map, batchStart, batchEnd)) {
        let values = valuesByChunk.get(chunk);
        if (values === undefined) valuesByChunk.set(chunk, (values = []));
        values.push(value);
      }
    }
    for (let chunk = batchStart; chunk < batchEnd; chunk++) {
      const values = valuesByChunk.get(chunk);
      const newest = newestByChunk.get(chunk);
      const oldest = oldestByChunk.get(chunk);
      if (values === undefined && newest === undefined && oldest === undefined) continue;
      const startBytes = chunk * chunkBytes;
      const endBytes = Math.min(startBytes + chunkBytes, volumeSizeBytes);
      let found = newest ?? [];
      for (const extents of [...(values ?? []).map(decodeChunkExtents), oldest ?? []]) {
        const gaps = gapsOf(found, startBytes, endBytes);
        if (gaps.length === 0) break;
        found = mergeSorted(found, intersect(clip(extents, startBytes, endBytes), gaps));
      }
      if (found.length > 0) await onChunk(chunk, found);
    }
  }
}
