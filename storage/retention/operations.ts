// The operations of the history lifecycle (docs/decisions/0007-history-lifecycle.md): pack fine
// windows into intervals, merge intervals whose inner points expired, fold the oldest history into
// the base image. Each runs in two phases, both recorded in the index's lifecycle state:
//
//   1. writing: the new packs are written and synced. A crash here abandons them (open deletes
//      packs the index does not name); nothing readers use has changed.
//   2. switching: the packs are whole. A fold writes its data into the base image and syncs it;
//      the new intervals' extents are put, the replaced ones' deleted; one synced batch commits
//      the new intervals and state. A crash here redoes the whole phase: the same bytes, the same
//      keys (finishPending, at open).
//
// Readers are never shown a mix that differs from a kept instant: new keys are invisible until
// the commit (they lie past the packed region, or replace an interval by one that covers it), and
// instants an operation makes unreachable are refused from before its switch begins.

import { StorageError, assert } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import { lifecycleLimits } from '../limits.js';
import type { Extent } from '../index/extents.js';
import type { IntervalInfo, IntervalStore, LifecycleState, LifecycleTarget, PendingOperation } from '../index/intervals.js';
import { encodeChunkExtents, intervalExtentsKey } from '../index/map-keys.js';
import type { IndexBatch, MapStore } from '../index/map-store.js';
import { forEachSpanChunk, type Span } from '../index/spans.js';
import type { LogDataReader } from '../point-in-time/log-data-reader.js';
import type { VolumePaths } from '../volume-config.js';
import { BaseImage } from './base-image.js';
import { PackWriter, packFileName, packFileNumber, readPackChunks, readPackRecords, type PackRecord } from './pack-file.js';

export interface OperationParts {
  fileSystem: FileSystem;
  paths: VolumePaths;
  volumeId: Buffer;
  volumeSizeBytes: number;
  store: MapStore;
  intervals: IntervalStore;
  chunkBytes: number;
  reader: LogDataReader;
  /** Wait until moving this many bytes keeps the lifecycle's I/O under its rate (unless space is short). */
  throttle(bytes: number): Promise<void>;
  /** Is the operation still wanted now that its packs are written (no view opened since holds what it would drop)? */
  stillWanted(pending: PendingOperation): Promise<boolean>;
  /** Instants the operation makes unreachable are refused from now; resolves once reads begun before are done. */
  beforeSwitch(): Promise<void>;
  /** The index now names the new intervals: views plan again. */
  afterSwitch(): void;
  nowMicros(): number;
}

/** One interval to pack from fine windows: its records (fromSequence, toSequence]. */
export interface PackSpan extends Span {
  firstMicros: number;
  lastMicros: number;
  firstDataSequence: number;
  lastDataSequence: number;
  endGrade: number;
}

// ---- the three operations ----

/** Pack spans of the fine region (consecutive, from its start) into intervals; the fine region then starts at `target`. */
export async function packWindows(parts: OperationParts, spans: readonly PackSpan[], target: LifecycleTarget): Promise<void> {
  assert(spans.length > 0 && spans[0]!.fromSequence === parts.intervals.packedThroughSequence, 'packing starts where the packed region ends');
  await runOperation(parts, { kind: 'pack', remove: [], foldWindows: null, target }, spans.length, async (packNumbers) => {
    const added: IntervalInfo[] = [];
    for (const [position, span] of spans.entries()) added.push(await writePackFromSpan(parts, span, packNumbers[position]!));
    return added;
  });
}

/** Merge consecutive intervals (oldest first) into one: newer data wins. */
export async function mergeIntervals(parts: OperationParts, run: readonly IntervalInfo[]): Promise<void> {
  assert(run.length >= 2, 'a merge takes two intervals or more');
  const first = run[0]!;
  const last = run[run.length - 1]!;
  const state = parts.intervals.state;
  const target: LifecycleTarget = pickTarget(state);
  await runOperation(parts, { kind: 'merge', remove: [...run], foldWindows: null, target }, 1, async ([packNumber]) => {
    const merged = await writeMergedPack(parts, run, packNumber!);
    return [{ ...merged, firstSequence: first.firstSequence, lastSequence: last.lastSequence, firstMicros: firstNonZero(run), lastMicros: lastNonZero(run), firstDataSequence: firstDataOf(run), lastDataSequence: lastDataOf(run), endGrade: last.endGrade }];
  });
}

/** Fold the oldest intervals into the base image: the horizon moves to the last one's end. */
export async function foldIntervals(parts: OperationParts, oldest: readonly IntervalInfo[]): Promise<void> {
  const last = oldest[oldest.length - 1]!;
  assert(oldest[0]!.firstSequence === parts.intervals.state.horizonSequence + 1, 'folding starts at the horizon');
  const state = parts.intervals.state;
  const withData = [...oldest].reverse().find((interval) => interval.lastDataSequence >= interval.firstSequence);
  const target: LifecycleTarget = {
    ...pickTarget(state),
    horizonSequence: last.lastSequence,
    horizonMicros: withData?.lastMicros ?? state.horizonMicros,
    horizonDataSequence: withData?.lastDataSequence ?? state.horizonDataSequence,
  };
  await runOperation(parts, { kind: 'fold', remove: [...oldest], foldWindows: null, target }, 0, () => prepareBase(parts));
}

/** Fold fine windows [fineStartWindow, toWindow) into the base image (no interval may be left before them). */
export async function foldWindows(parts: OperationParts, toWindow: number, target: LifecycleTarget): Promise<void> {
  const state = parts.intervals.state;
  assert(parts.intervals.intervals.length === 0 && toWindow > state.fineStartWindow, 'windows fold only once every interval has');
  await runOperation(parts, { kind: 'fold', remove: [], foldWindows: { from: state.fineStartWindow, to: toWindow }, target }, 0, () => prepareBase(parts));
}

/**
 * A fold's writing phase: make sure the base image exists, allocated to the volume's size. A full
 * disk then fails the fold cleanly (abandoned, retried later); in the switching phase it would
 * leave the switch pending, and open, which redoes it, would fail.
 */
async function prepareBase(parts: OperationParts): Promise<IntervalInfo[]> {
  (await BaseImage.openOrCreate(parts.fileSystem, parts.paths.base, parts.paths.directory, parts.volumeSizeBytes)).close();
  return [];
}

/** At open: finish an operation a crash interrupted (abandon its writing, or redo its switch). */
export async function finishPending(parts: OperationParts): Promise<void> {
  const pending = parts.intervals.state.pending;
  if (pending === null) return;
  if (pending.phase === 'writing') {
    for (const interval of pending.add) removePackFile(parts, interval.pack);
    await parts.intervals.commit({ ...parts.intervals.state, pending: null }, { add: [], remove: [] });
    return;
  }
  await switchOperation(parts, pending);
}

// ---- the two phases ----

async function runOperation(
  parts: OperationParts,
  operation: Omit<PendingOperation, 'phase' | 'add'>,
  packCount: number,
  writePacks: (packNumbers: number[]) => Promise<IntervalInfo[]>,
): Promise<void> {
  const state = parts.intervals.state;
  assert(state.pending === null, 'one lifecycle operation at a time');
  const packNumbers = Array.from({ length: packCount }, (_, position) => state.nextPackNumber + position);
  const placeholders = packNumbers.map((pack) => ({ pack }) as IntervalInfo);
  await parts.intervals.commit({ ...state, nextPackNumber: state.nextPackNumber + packCount, pending: { ...operation, phase: 'writing', add: placeholders } }, { add: [], remove: [] });
  let added: IntervalInfo[];
  try {
    added = await writePacks(packNumbers);
    await parts.fileSystem.syncDirectory(parts.paths.packs);
  } catch (error) {
    for (const pack of packNumbers) removePackFile(parts, pack);
    await parts.intervals.commit({ ...parts.intervals.state, pending: null }, { add: [], remove: [] });
    throw error;
  }
  const pending: PendingOperation = { ...operation, phase: 'switching', add: added };
  if (!(await parts.stillWanted(pending))) {
    for (const pack of packNumbers) removePackFile(parts, pack);
    await parts.intervals.commit({ ...parts.intervals.state, pending: null }, { add: [], remove: [] });
    return;
  }
  await parts.intervals.commit({ ...parts.intervals.state, pending }, { add: [], remove: [] });
  await switchOperation(parts, pending);
}

/** Phase 2, redone whole after a crash. */
async function switchOperation(parts: OperationParts, pending: PendingOperation): Promise<void> {
  await parts.beforeSwitch();
  if (pending.kind === 'fold') await foldIntoBase(parts, pending);
  for (const interval of pending.add) await putIntervalKeys(parts, interval);
  const replacedInPlace = new Set(pending.add.map((interval) => interval.lastSequence));
  for (const interval of pending.remove) if (!replacedInPlace.has(interval.lastSequence)) await deleteIntervalKeys(parts, interval);
  const state = parts.intervals.state;
  const obsoletePacks = [...state.obsoletePacks, ...pending.remove.map((interval) => interval.pack).filter((pack) => pack !== 0)];
  const next: LifecycleState = { ...state, ...pending.target, pending: null, obsoletePacks };
  await parts.intervals.commit(next, { add: pending.add, remove: pending.remove });
  parts.afterSwitch();
}

async function foldIntoBase(parts: OperationParts, pending: PendingOperation): Promise<void> {
  const base = await BaseImage.openOrCreate(parts.fileSystem, parts.paths.base, parts.paths.directory, parts.volumeSizeBytes);
  try {
    if (pending.foldWindows !== null) {
      const { store, intervals, chunkBytes } = parts;
      const fromSequence = intervals.state.fineStartSequence - 1;
      const toSequence = pending.target.fineStartSequence - 1;
      await forEachSpanChunk(store, chunkBytes, parts.volumeSizeBytes, { fromSequence, toSequence }, async (_chunk, extents) => {
        for (const extent of extents) await writeExtentToBase(parts, base, extent, null);
      });
    }
    for (const interval of pending.remove) {
      if (interval.pack === 0) continue;
      for await (const record of readPackRecords(parts.fileSystem, packPath(parts, interval.pack), packReading(parts, interval, true))) {
        await writeExtentToBase(parts, base, record, record.data);
      }
    }
    await base.sync();
  } finally {
    base.close();
  }
}

async function writeExtentToBase(parts: OperationParts, base: BaseImage, extent: Extent, data: Buffer | null): Promise<void> {
  const lengthBytes = extent.endBytes - extent.startBytes;
  if (!extent.source.hasData) {
    base.zero(extent.startBytes, lengthBytes);
    return;
  }
  await parts.throttle(2 * lengthBytes);
  const bytes = data ?? (await readExtent(parts, extent));
  await base.write(extent.startBytes, bytes);
}

// ---- writing packs ----

async function writePackFromSpan(parts: OperationParts, span: PackSpan, packNumber: number): Promise<IntervalInfo> {
  const writer = PackWriter.create(parts.fileSystem, packPath(parts, packNumber));
  let dataBytes = 0;
  try {
    await forEachSpanChunk(parts.store, parts.chunkBytes, parts.volumeSizeBytes, span, async (_chunk, extents) => {
      for (const extent of extents) {
        const data = extent.source.hasData ? await readExtentThrottled(parts, extent) : null;
        dataBytes += data?.length ?? 0;
        await writer.append({ startBytes: extent.startBytes, endBytes: extent.endBytes, sequence: extent.source.sequence, timestampMicros: span.lastMicros, data });
      }
    });
    const written = await writer.finish(packHeaderOf(parts, packNumber, span));
    return {
      firstSequence: span.fromSequence + 1,
      lastSequence: span.toSequence,
      firstMicros: span.firstMicros,
      lastMicros: span.lastMicros,
      firstDataSequence: span.firstDataSequence,
      lastDataSequence: span.lastDataSequence,
      endGrade: span.endGrade,
      pack: packNumber,
      packBytes: written.packBytes,
      recordCount: written.recordCount,
      dataBytes,
    };
  } catch (error) {
    writer.abandon();
    throw error;
  }
}

/** Newer data wins: one pass over every pack of the run, in volume order, a chunk at a time. */
async function writeMergedPack(parts: OperationParts, run: readonly IntervalInfo[], packNumber: number): Promise<Omit<IntervalInfo, 'firstSequence' | 'lastSequence' | 'firstMicros' | 'lastMicros' | 'firstDataSequence' | 'lastDataSequence' | 'endGrade'>> {
  // One reader per pack, newest pack first; each yields its records chunk by chunk.
  const readers = [...run]
    .reverse()
    .filter((interval) => interval.pack !== 0)
    .map((interval) => readPackChunks(parts.fileSystem, packPath(parts, interval.pack), { ...packReading(parts, interval, false), chunkBytes: parts.chunkBytes }));
  const heads = await Promise.all(readers.map(async (reader) => (await reader.next()).value ?? null));
  const last = run[run.length - 1]!;
  const writer = PackWriter.create(parts.fileSystem, packPath(parts, packNumber));
  let dataBytes = 0;
  try {
    for (;;) {
      let chunk = Number.POSITIVE_INFINITY;
      for (const head of heads) if (head !== null) chunk = Math.min(chunk, head.chunk);
      if (chunk === Number.POSITIVE_INFINITY) break;
      let found: Extent[] = [];
      for (const [position, head] of heads.entries()) {
        if (head === null || head.chunk !== chunk) continue;
        found = newestWins(found, head.records.map(extentOf));
        heads[position] = (await readers[position]!.next()).value ?? null;
      }
      for (const extent of found) {
        const data = extent.source.hasData ? await readExtentThrottled(parts, extent) : null;
        dataBytes += data?.length ?? 0;
        await writer.append({ startBytes: extent.startBytes, endBytes: extent.endBytes, sequence: extent.source.sequence, timestampMicros: last.lastMicros, data });
      }
    }
    const written = await writer.finish(
      packHeaderOf(parts, packNumber, { fromSequence: run[0]!.firstSequence - 1, toSequence: last.lastSequence, firstMicros: firstNonZero(run), lastMicros: lastNonZero(run) }),
    );
    return { pack: packNumber, packBytes: written.packBytes, recordCount: written.recordCount, dataBytes };
  } catch (error) {
    writer.abandon();
    await Promise.all(readers.map((reader) => reader.return(undefined)));
    throw error;
  }
}

function extentOf(record: PackRecord): Extent {
  return { startBytes: record.startBytes, endBytes: record.endBytes, source: record.source };
}

function packReading(parts: OperationParts, interval: IntervalInfo, withData: boolean): { fileNumber: number; volumeId: Buffer; withData: boolean } {
  return { fileNumber: packFileNumber(interval.pack), volumeId: parts.volumeId, withData };
}

/** Add older extents where the newer ones leave gaps (both sorted). */
function newestWins(newer: Extent[], older: readonly Extent[]): Extent[] {
  if (older.length === 0) return newer;
  const result: Extent[] = [];
  let newerIndex = 0;
  for (const extent of older) {
    let start = extent.startBytes;
    while (start < extent.endBytes) {
      while (newerIndex < newer.length && newer[newerIndex]!.endBytes <= start) result.push(newer[newerIndex++]!);
      const next = newer[newerIndex];
      if (next === undefined || next.startBytes >= extent.endBytes) {
        result.push({ startBytes: start, endBytes: extent.endBytes, source: extent.source });
        break;
      }
      if (next.startBytes > start) result.push({ startBytes: start, endBytes: next.startBytes, source: extent.source });
      start = Math.max(start, next.endBytes);
    }
  }
  while (newerIndex < newer.length) result.push(newer[newerIndex++]!);
  return result.sort((left, right) => left.startBytes - right.startBytes);
}

function packHeaderOf(parts: OperationParts, packNumber: number, span: { fromSequence: number; toSequence: number; firstMicros: number; lastMicros: number }) {
  return { packNumber, volumeId: parts.volumeId, firstSequence: span.fromSequence + 1, lastSequence: span.toSequence, firstMicros: span.firstMicros, lastMicros: span.lastMicros, createdMicros: parts.nowMicros() };
}

async function readExtentThrottled(parts: OperationParts, extent: Extent): Promise<Buffer> {
  await parts.throttle(2 * (extent.endBytes - extent.startBytes)); // read once, written once
  return readExtent(parts, extent);
}

async function readExtent(parts: OperationParts, extent: Extent): Promise<Buffer> {
  const target = Buffer.alloc(extent.endBytes - extent.startBytes);
  await parts.reader.read(extent.source, extent.startBytes, target);
  return target;
}

// ---- the index's keys of an interval ----

/** Put an interval's extents (chunk-major keys) from its pack. */
async function putIntervalKeys(parts: OperationParts, interval: IntervalInfo): Promise<void> {
  await forEachPackChunk(parts, interval, (chunk, records) => ({ type: 'put', key: intervalExtentsKey(chunk, interval.lastSequence), value: encodeChunkExtents(records.map(extentOf)) }));
}

/** Delete an interval's extents: its chunks are the chunks of its pack's records. */
async function deleteIntervalKeys(parts: OperationParts, interval: IntervalInfo): Promise<void> {
  await forEachPackChunk(parts, interval, (chunk) => ({ type: 'del', key: intervalExtentsKey(chunk, interval.lastSequence) }));
}

async function forEachPackChunk(parts: OperationParts, interval: IntervalInfo, operation: (chunk: number, records: PackRecord[]) => IndexBatch[number]): Promise<void> {
  if (interval.pack === 0) return;
  let batch: IndexBatch = [];
  for await (const { chunk, records } of readPackChunks(parts.fileSystem, packPath(parts, interval.pack), { ...packReading(parts, interval, false), chunkBytes: parts.chunkBytes })) {
    batch.push(operation(chunk, records));
    if (batch.length >= lifecycleLimits.indexBatchKeys) batch = await flush(parts.store, batch);
  }
  await flush(parts.store, batch);
}

async function flush(store: MapStore, batch: IndexBatch): Promise<IndexBatch> {
  if (batch.length > 0) await store.batch(batch);
  return [];
}

// ---- files ----

export function packPath(parts: { paths: VolumePaths }, packNumber: number): string {
  return `${parts.paths.packs}/${packFileName(packNumber)}`;
}

function removePackFile(parts: OperationParts, packNumber: number): void {
  if (packNumber > 0 && parts.fileSystem.exists(packPath(parts, packNumber))) parts.fileSystem.remove(packPath(parts, packNumber));
}

function pickTarget(state: LifecycleState): LifecycleTarget {
  const { horizonSequence, horizonMicros, horizonDataSequence, fineStartWindow, fineStartSequence, fineStartPosition } = state;
  return { horizonSequence, horizonMicros, horizonDataSequence, fineStartWindow, fineStartSequence, fineStartPosition };
}

function firstNonZero(run: readonly IntervalInfo[]): number {
  return run.find((interval) => interval.firstMicros > 0)?.firstMicros ?? 0;
}

function lastNonZero(run: readonly IntervalInfo[]): number {
  return [...run].reverse().find((interval) => interval.lastMicros > 0)?.lastMicros ?? 0;
}

function firstDataOf(run: readonly IntervalInfo[]): number {
  const withData = run.find((interval) => interval.lastDataSequence >= interval.firstSequence);
  return withData?.firstDataSequence ?? run[run.length - 1]!.lastSequence + 1;
}

function lastDataOf(run: readonly IntervalInfo[]): number {
  const withData = [...run].reverse().find((interval) => interval.lastDataSequence >= interval.firstSequence);
  return withData?.lastDataSequence ?? run[0]!.firstSequence - 1;
}

export { StorageError };
