// Building delta maps (docs/formats/delta-map.md, "Cutting and merging, crash safety"): a cut
// turns the tail's records into a level-0 map (a window) in one LevelDB batch; a merge builds a
// level-L map from its four children, newer data winning where they overlap.

import { indexLimits } from '../limits.js';
import { flattenNewestWins, flattenRecords, splitByChunk, type Extent } from './extents.js';
import type { LastWriteTable } from './last-writes.js';
import {
  builtCountKey,
  checkpointKey,
  chunkExtentsKey,
  chunkExtentsRange,
  encodeChunkExtents,
  encodeMapInfo,
  encodeWindowEnd,
  encodeWindowIndex,
  encodeWindowRecords,
  mapInfoKey,
  snapshotKey,
  windowBySequenceKey,
  windowByTimeKey,
  windowRecordsKey,
  type IndexCheckpoint,
  type MapInfo,
  type MapReference,
  type SnapshotRecord,
} from './map-keys.js';
import type { IndexBatch, MapStore } from './map-store.js';
import { applySnapshotUpdate, type Tail } from './tail.js';

/** Cut the tail through record `throughSequence` (durable in the log) into the next window. */
export async function cutWindow(store: MapStore, tail: Tail, lastWrites: LastWriteTable, throughSequence: number): Promise<void> {
  const taken = tail.takeThrough(throughSequence);
  const { records, nextPosition } = taken;
  const windowIndex = store.checkpoint.windowCount;
  const window: MapReference = { level: 0, index: windowIndex };
  const extents = flattenRecords(records);
  // A window of marks only is dated by them, not by the tail's newest record (a later window's time).
  const lastMicros = records.length > 0 ? records[records.length - 1]!.micros : taken.lastMicros;
  const info: MapInfo = {
    firstSequence: store.checkpoint.mappedThroughSequence + 1,
    lastSequence: throughSequence,
    firstMicros: records[0]?.micros ?? taken.firstMicros,
    lastMicros,
    recordCount: records.length,
    dataBytes: records.reduce((sum, record) => sum + (record.source.hasData ? record.lengthBytes : 0), 0),
    extentCount: extents.length,
  };
  const checkpoint: IndexCheckpoint = { windowCount: windowIndex + 1, mappedThroughSequence: throughSequence, nextPosition };
  const batch: IndexBatch = [
    { type: 'put', key: mapInfoKey(window), value: encodeMapInfo(info) },
    { type: 'put', key: windowRecordsKey(windowIndex), value: encodeWindowRecords(records) },
    { type: 'put', key: windowBySequenceKey(throughSequence), value: encodeWindowEnd(windowIndex, nextPosition) },
    { type: 'put', key: windowByTimeKey(lastMicros, windowIndex), value: Buffer.alloc(0) },
  ];
  for (const [chunk, chunkExtents] of splitByChunk(extents, lastWrites.chunkBytes)) {
    batch.push({ type: 'put', key: chunkExtentsKey(window, chunk), value: encodeChunkExtents(chunkExtents) });
  }
  // Reads first: a cut that fails before its batch must leave everything as it was, to be tried again.
  const updatesCut = [...tail.pendingUpdates.entries()];
  for (const [name, mark] of updatesCut) {
    const stored = await store.db.get(snapshotKey(name));
    if (stored !== undefined) batch.push({ type: 'put', key: snapshotKey(name), value: Buffer.from(JSON.stringify(applySnapshotUpdate(JSON.parse(stored.toString('utf8')) as SnapshotRecord, mark))) });
  }
  const snapshotsCut: string[] = [];
  for (const [name, snapshot] of tail.snapshots) {
    if (snapshot !== null && snapshot.sequence > throughSequence) continue;
    batch.push(snapshot === null ? { type: 'del', key: snapshotKey(name) } : { type: 'put', key: snapshotKey(name), value: Buffer.from(JSON.stringify(snapshot)) });
    snapshotsCut.push(name);
  }
  const restoreChanged = lastWrites.takeChanged(batch);
  batch.push({ type: 'put', key: checkpointKey, value: Buffer.from(JSON.stringify(checkpoint)) });
  try {
    await store.batch(batch);
  } catch (error) {
    restoreChanged();
    throw error;
  }
  store.checkpoint = checkpoint;
  for (const [name] of updatesCut) tail.pendingUpdates.delete(name);
  tail.dropThrough(throughSequence, snapshotsCut);
}

/**
 * Build every merged map whose children all exist, lowest level first. Maps that would start
 * before the fine region are skipped (their windows are packed): the level's count moves past them.
 */
export async function mergeDue(store: MapStore, fineStartWindow: number): Promise<number> {
  let merges = 0;
  for (let level = 1; ; level++) {
    const childCount = store.builtCount(level - 1);
    const span = indexLimits.fanout ** level;
    const due = Math.floor(childCount / indexLimits.fanout);
    if (due === 0) return merges;
    const firstInFineRegion = Math.ceil(fineStartWindow / span);
    for (let index = Math.max(store.builtCount(level), firstInFineRegion); index < due; index++) {
      await mergeMap(store, { level, index });
      merges++;
    }
  }
}

/**
 * Merge the four children of `map` chunk by chunk. Its extents are written in batches, its summary
 * and its level's count last: a merge cut short by a crash is redone (stale chunks cleared first).
 */
async function mergeMap(store: MapStore, map: MapReference): Promise<void> {
  const { fanout } = indexLimits;
  const childrenOldestFirst: MapReference[] = [];
  for (let child = fanout * map.index; child < fanout * map.index + fanout; child++) childrenOldestFirst.push({ level: map.level - 1, index: child });
  await store.db.clear(chunkExtentsRange(map));
  const infos = await Promise.all(childrenOldestFirst.map((child) => store.mapInfo(child)));
  const streams = childrenOldestFirst.map((child) => store.chunkStream(child));
  const heads = await Promise.all(streams.map((stream) => stream.next()));
  let batch: IndexBatch = [];
  let extentCount = 0;
  for (;;) {
    let chunk = Number.POSITIVE_INFINITY;
    for (const head of heads) if (head !== null) chunk = Math.min(chunk, head.chunk);
    if (chunk === Number.POSITIVE_INFINITY) break;
    // Oldest child first, so that flattening lets the newest win where they overlap.
    const together: Extent[] = [];
    for (let child = 0; child < heads.length; child++) {
      const head = heads[child];
      if (head === null || head === undefined || head.chunk !== chunk) continue;
      together.push(...head.extents);
      heads[child] = await streams[child]!.next();
    }
    const merged = flattenNewestWins(together);
    extentCount += merged.length;
    batch.push({ type: 'put', key: chunkExtentsKey(map, chunk), value: encodeChunkExtents(merged) });
    if (batch.length >= indexLimits.mergeBatchChunks) {
      await store.batch(batch);
      batch = [];
    }
  }
  const info: MapInfo = {
    firstSequence: infos[0]!.firstSequence,
    lastSequence: infos[infos.length - 1]!.lastSequence,
    firstMicros: infos[0]!.firstMicros,
    lastMicros: infos[infos.length - 1]!.lastMicros,
    recordCount: infos.reduce((sum, child) => sum + child.recordCount, 0),
    dataBytes: infos.reduce((sum, child) => sum + child.dataBytes, 0),
    extentCount,
  };
  batch.push({ type: 'put', key: mapInfoKey(map), value: encodeMapInfo(info) });
  batch.push({ type: 'put', key: builtCountKey(map.level), value: encodeWindowIndex(map.index + 1) });
  await store.batch(batch);
  store.noteMerged(map);
}
