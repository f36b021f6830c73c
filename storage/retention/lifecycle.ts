// The history lifecycle of one volume (docs/decisions/0007-history-lifecycle.md): every few
// seconds, and at once when the log finds no room, it works out what the retention policy keeps
// (kept-points.ts) and does the next due operation (operations.ts), one at a time, in this order:
//
//   1. fold into the base image the intervals older than the oldest kept instant (or, with no
//      interval left, the fine windows older than it);
//   2. pack the fine windows older than the continuous region, split at the kept points in them;
//   3. merge runs of intervals whose inner points expired, once a coarser point closes the run
//      (all hours of a day at once) or the run grows long;
//   4. housekeeping: delete packs and log segments nothing names, clear packed windows' keys.
//
// Journal-full policy: when history exceeds its cap, or the file system's free space falls below
// the reserve, space pressure moves the start of what is kept forward (oldest first; pinned
// snapshots stay) until enough is freed; host writes go on. A write fails with ENOSPC only when
// nothing is left to expire.

import { StorageError } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import { lifecycleLimits } from '../limits.js';
import type { DeltaMapIndex } from '../index/delta-map-index.js';
import type { IntervalInfo, LifecycleTarget, PendingOperation } from '../index/intervals.js';
import type { LogDataReader } from '../point-in-time/log-data-reader.js';
import type { VolumePaths } from '../volume-config.js';
import { listSegments, segmentFileName } from '../write-log/segment.js';
import { computeKeptSet, isKept, nearestKept, oldestKept, type HoldForRetention, type KeptPoint, type KeptSet, type SnapshotForRetention } from './kept-points.js';
import { finishPending, foldIntervals, foldWindows, mergeIntervals, packPath, packWindows, type OperationParts, type PackSpan } from './operations.js';
import { packFileNumber, parsePackFileName, readPackChunks, readPackHeader } from './pack-file.js';
import { decodeIntervalExtentsKey, encodeChunkExtents, intervalExtentsKey, intervalExtentsRange } from '../index/map-keys.js';
import type { LogPosition } from '../write-log/batch.js';
import { boundaryAfter, boundaryAtOrBefore, reserveBytes, retainedTimes, type RetentionPolicy, type TierEvery } from './policy.js';
import { measureFileSystem, measureHistoryBytes, type HistoryBytes } from './space.js';

/** What the lifecycle needs of its volume and history. */
export interface LifecycleHost {
  readonly name: string;
  readonly sizeBytes: number;
  readonly segmentSizeBytes: number;
  readonly volumeId: Buffer;
  readonly createdMicros: number;
  retentionPolicy(): RetentionPolicy;
  /** The oldest log segment the volume itself still needs (its checkpoints, unapplied records, appends). */
  oldestSegmentNeeded(): number;
  /** The log segments before `firstRemaining` were deleted. */
  segmentsDeleted(firstRemaining: number): void;
  /** Bytes of log appended since the volume was made (only grows; the write rate comes from it). */
  appendedLogBytes(): number;
  /** Writes are refused with ENOSPC (the last append found no room; none taken since). */
  refusingWritesForSpace(): boolean;
  snapshots(): SnapshotForRetention[];
  /** Delete a snapshot whose own expiry time has passed. */
  expireSnapshot(name: string): Promise<void>;
}

export type LifecycleEvent =
  | { type: 'history-usage'; volume: string; percent: number; historyBytes: number; maxHistoryBytes: number; fileSystemUsedPercent: number }
  | { type: 'protection-window-short'; volume: string; windowSeconds: number; requiredSeconds: number }
  | { type: 'protection-window-restored'; volume: string; windowSeconds: number; requiredSeconds: number }
  | { type: 'history-expired'; volume: string; reason: 'policy' | 'space'; horizonMicros: number; reclaimedBytes: number }
  | { type: 'lifecycle-failed'; volume: string; message: string }
  | { type: 'snapshot-expired'; volume: string; name: string; expiresMicros: number };

export interface LifecycleStatistics {
  reclaimedBytes: number;
  packs: number;
  merges: number;
  folds: number;
  segmentsDeleted: number;
  /** Seconds spent in each kind of operation (sums) and how many. */
  expirySeconds: number;
  compactionSeconds: number;
  operationFailures: number;
  /** Passes that failed since the last one that did not (0: the last pass went through). */
  failedPassesInARow: number;
  lastFailure: string | null;
}

const usageAlertPercents = [80, 90, 95];

export class HistoryLifecycle {
  private readonly host: LifecycleHost;
  private readonly fileSystem: FileSystem;
  private readonly paths: VolumePaths;
  private readonly index: DeltaMapIndex;
  private readonly reader: LogDataReader;
  private keptSetValue: KeptSet | null = null;
  /** When the oldest kept instant's state began (its record's time): older instants are refused even before the horizon moves. */
  private oldestKeptMicros = 0;
  private readonly holds = new Map<number, { sequence: number; description: string; count: number }>();
  private nextHoldId = 1;
  /** Reads of views in flight, by the index generation they planned at. */
  private readonly readsInFlight = new Map<number, number>();
  private drainWaiters: Array<{ beforeGeneration: number; resolve: () => void }> = [];
  /** Space pressure: kept points (unpinned) and the continuous region start no earlier than this. */
  private pressureFloorSequence = 0;
  private underPressure = false;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private ioTokens = 0;
  private ioRefilledAtMs = performance.now();
  private usageAlertPercent = 0;
  private windowShort = false;
  private readonly listeners: Array<(event: LifecycleEvent) => void> = [];
  readonly statistics: LifecycleStatistics = { reclaimedBytes: 0, packs: 0, merges: 0, folds: 0, segmentsDeleted: 0, expirySeconds: 0, compactionSeconds: 0, operationFailures: 0, failedPassesInARow: 0, lastFailure: null };
  /** Log bytes appended per second, smoothed (for the projection); sampled at every pass and status. */
  private logRate: { bytes: number; atMs: number; bytesPerSecond: number };

  constructor(parts: { host: LifecycleHost; fileSystem: FileSystem; paths: VolumePaths; index: DeltaMapIndex; reader: LogDataReader }) {
    this.host = parts.host;
    this.fileSystem = parts.fileSystem;
    this.paths = parts.paths;
    this.index = parts.index;
    this.reader = parts.reader;
    this.logRate = { bytes: this.host.appendedLogBytes(), atMs: performance.now(), bytesPerSecond: 0 };
    this.index.windowBoundary = (micros) => this.windowBoundary(micros);
  }

  /** At open, before the volume serves: finish an interrupted operation, delete what nothing names. */
  async recover(): Promise<void> {
    // The packs folder's own entry must be durable before a pack in it is named by the index
    // (syncing the folder makes its files' entries durable, not its own): a power loss would take
    // the folder and every pack in it. Synced at every open, as an earlier one may have made it.
    this.fileSystem.mkdirp(this.paths.packs);
    await this.fileSystem.syncDirectory(this.paths.directory);
    await finishPending(this.operationParts(true));
    await this.deleteOrphanPacks();
    await this.housekeeping();
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), lifecycleLimits.checkIntervalMs);
    this.timer.unref();
  }

  onEvent(listener: (event: LifecycleEvent) => void): void {
    this.listeners.push(listener);
  }

  // ---- what is kept ----

  /** The intervals as [first, lastData, last] (tests print them when something is off). */
  debugIntervals(): number[][] {
    return this.index.intervals.intervals.map((interval) => [interval.firstSequence, interval.firstDataSequence, interval.lastDataSequence, interval.lastSequence, interval.firstMicros, interval.lastMicros]);
  }

  get keptSet(): KeptSet | null {
    return this.keptSetValue;
  }

  /** Refuse an instant the policy no longer keeps (EEXPIRED, with the kept instants around it). */
  async assertKept(sequence: number): Promise<number> {
    const set = await this.refreshKeptSet();
    const canonical = await this.canonical(sequence);
    if (canonical !== null && isKept(set, canonical)) return canonical;
    if (canonical !== null && this.holds.has(canonical)) return canonical;
    const { before, after } = nearestKept(set, sequence);
    // The nearest kept instants, each at the earliest time that shows it: the time of the last
    // data record it shows (a tier point's boundary, a snapshot's mark may come later).
    const earliestMicros = async (point: { sequence: number }): Promise<number> => {
      if (point.sequence === 0) return this.host.createdMicros;
      if (point.sequence === this.index.intervals.state.horizonSequence) return this.index.intervals.state.horizonMicros;
      return (await this.index.microsOf(point.sequence)) || this.host.createdMicros;
    };
    const nearestBefore = before === null ? null : { sequence: before.sequence, micros: await earliestMicros(before) };
    const nearestAfter = after === null ? null : { sequence: after.sequence, micros: await earliestMicros(after) };
    throw new StorageError('EEXPIRED', `record ${sequence} of volume ${this.host.name} is no longer kept by its retention policy`, {
      details: {
        nearest: { before: nearestBefore, after: nearestAfter },
        oldestSequence: this.index.intervals.state.horizonSequence,
      },
    });
  }

  /** Keep `sequence` while a view reads it; returns the release. */
  hold(sequence: number, description: string): () => void {
    const existing = this.holds.get(sequence);
    if (existing !== undefined) existing.count++;
    else this.holds.set(sequence, { sequence, description, count: 1 });
    let released = false;
    void this.nextHoldId++;
    return () => {
      if (released) return;
      released = true;
      const hold = this.holds.get(sequence);
      if (hold !== undefined && --hold.count === 0) this.holds.delete(sequence);
    };
  }

  private async refreshKeptSet(): Promise<KeptSet> {
    const intervals = this.index.intervals;
    const holds: HoldForRetention[] = [...this.holds.values()].map(({ sequence, description }) => ({ sequence, description }));
    this.keptSetValue = await computeKeptSet({
      policy: this.host.retentionPolicy(),
      nowMicros: Date.now() * 1000,
      createdMicros: this.host.createdMicros,
      horizonSequence: intervals.state.horizonSequence,
      pressureFloorSequence: this.pressureFloorSequence,
      snapshots: this.host.snapshots(),
      holds,
      sequenceAt: (micros) => this.index.sequenceAt(micros),
      canonical: (sequence) => this.canonical(sequence),
    });
    this.oldestKeptMicros = await this.index.microsOf(oldestKept(this.keptSetValue));
    return this.keptSetValue;
  }

  /**
   * The canonical form of an instant (its last data record), or null when it is gone. Whatever
   * shows the volume the base image holds is the horizon itself, the oldest kept instant.
   */
  private async canonical(sequence: number): Promise<number | null> {
    const { state, packedThroughSequence } = this.index.intervals;
    const effectiveHorizon = this.effectiveHorizon();
    let canonical: number | null;
    if (sequence <= packedThroughSequence) canonical = this.index.intervals.canonicalShowing(sequence);
    else canonical = await this.index.lastDataSequence(sequence);
    if (canonical === null) return null;
    if (canonical >= state.horizonDataSequence && canonical <= state.horizonSequence) return state.horizonSequence;
    return canonical < effectiveHorizon ? null : canonical;
  }

  /** The horizon, or where a fold in progress moves it (the instants before are being overwritten in the base image). */
  private effectiveHorizon(): number {
    const { state } = this.index.intervals;
    const pending = state.pending;
    return pending !== null && pending.kind === 'fold' && pending.phase === 'switching' ? Math.max(state.horizonSequence, pending.target.horizonDataSequence) : state.horizonSequence;
  }

  /** Windows end at the finest tier's boundaries, so every tier point is a window's end. */
  private windowBoundary(micros: number): number | null {
    const every: TierEvery | undefined = this.host.retentionPolicy().tiers[0]?.every;
    return every === undefined ? null : boundaryAfter(every, boundaryAtOrBefore(every, micros));
  }

  // ---- reads of views, and switching under them ----

  /** A view's read starts: returns the index generation it must plan at. */
  beginRead(): number {
    const generation = this.index.generation;
    this.readsInFlight.set(generation, (this.readsInFlight.get(generation) ?? 0) + 1);
    return generation;
  }

  endRead(generation: number): void {
    const left = (this.readsInFlight.get(generation) ?? 1) - 1;
    if (left === 0) this.readsInFlight.delete(generation);
    else this.readsInFlight.set(generation, left);
    this.wakeDrainWaiters();
  }

  /** Resolves once no read that began before generation `beforeGeneration` is in flight. */
  private drain(beforeGeneration: number): Promise<void> {
    return new Promise((resolve) => {
      this.drainWaiters.push({ beforeGeneration, resolve });
      this.wakeDrainWaiters();
    });
  }

  private wakeDrainWaiters(): void {
    const oldest = Math.min(...this.readsInFlight.keys());
    this.drainWaiters = this.drainWaiters.filter((waiter) => {
      if (!(oldest < waiter.beforeGeneration)) {
        waiter.resolve();
        return false;
      }
      return true;
    });
  }

  /** No view holds an instant the operation makes unreachable (a view opened since it was decided). */
  private async holdsAllow(pending: PendingOperation): Promise<boolean> {
    for (const { sequence } of this.holds.values()) {
      const canonical = (await this.canonical(sequence)) ?? sequence;
      if (pending.kind === 'fold' && canonical < pending.target.horizonSequence) return false;
      for (const interval of pending.add) {
        if (canonical >= interval.firstSequence && canonical < interval.lastDataSequence) return false;
      }
    }
    return true;
  }

  // ---- the loop ----

  /** One pass: do what is due, until nothing is. Never throws (failures are counted and reported). */
  tick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.running ??= this.runDue().finally(() => (this.running = null));
    return this.running;
  }

  /** Settle: wait for the pass in progress (tests). */
  async settled(): Promise<void> {
    await this.running;
  }

  /** Hold expiry off while `task` runs (verification reads the index and the files as they are). */
  async withoutExpiry<T>(task: () => Promise<T>): Promise<T> {
    this.pausedCount++;
    try {
      await this.running;
      return await task();
    } finally {
      this.pausedCount--;
    }
  }

  private pausedCount = 0;

  /** The packed region as the index has it now (verification checks it). */
  packedRegion(): { horizonSequence: number; fineStartSequence: number; fineStartPosition: LogPosition | null; intervals: readonly IntervalInfo[] } {
    const state = this.index.intervals.state;
    return { horizonSequence: state.horizonSequence, fineStartSequence: state.fineStartSequence, fineStartPosition: state.fineStartPosition, intervals: this.index.intervals.intervals };
  }

  /**
   * Check every pack: each record's CRC, the header's interval, and that the index's extents of
   * the interval, chunk by chunk, are exactly the pack's records. Returns what differs, in words.
   */
  async verifyPacks(): Promise<{ packs: number; records: number; problems: string[] }> {
    const { store, intervals, chunkBytes } = this.index.lifecycleAccess();
    const problems: string[] = [];
    let records = 0;
    let packs = 0;
    const indexedChunks = new Map<number, Set<number>>();
    for await (const [key] of store.db.iterator(intervalExtentsRange)) {
      const { chunk, lastSequence } = decodeIntervalExtentsKey(key);
      if (!indexedChunks.has(lastSequence)) indexedChunks.set(lastSequence, new Set());
      indexedChunks.get(lastSequence)!.add(chunk);
    }
    for (const lastSequence of indexedChunks.keys()) {
      if (intervals.intervalEndingAt(lastSequence) === null) problems.push(`the index has extents of an interval ending at ${lastSequence}, which it does not list`);
    }
    for (const interval of intervals.intervals) {
      if (interval.pack === 0) continue;
      packs++;
      const path = packPath({ paths: this.paths }, interval.pack);
      try {
        const header = readPackHeader(this.fileSystem, path, this.host.volumeId);
        if (header.firstSequence !== interval.firstSequence || header.lastSequence !== interval.lastSequence) problems.push(`pack ${interval.pack} holds records ${header.firstSequence}-${header.lastSequence}, the index says ${interval.firstSequence}-${interval.lastSequence}`);
        const chunksSeen = new Set<number>();
        for await (const { chunk, records: chunkRecords } of readPackChunks(this.fileSystem, path, { fileNumber: packFileNumber(interval.pack), volumeId: this.host.volumeId, withData: false, chunkBytes })) {
          records += chunkRecords.length;
          chunksSeen.add(chunk);
          const indexed = await store.db.get(intervalExtentsKey(chunk, interval.lastSequence));
          const expected = encodeChunkExtents(chunkRecords.map((record) => ({ startBytes: record.startBytes, endBytes: record.endBytes, source: record.source })));
          if (indexed === undefined || !indexed.equals(expected)) problems.push(`pack ${interval.pack}, chunk ${chunk}: the index's extents differ from the pack's records`);
        }
        for (const chunk of indexedChunks.get(interval.lastSequence) ?? []) {
          if (!chunksSeen.has(chunk)) problems.push(`interval ending at ${interval.lastSequence}: the index has extents in chunk ${chunk}, its pack has none`);
        }
      } catch (error) {
        problems.push(`pack ${interval.pack}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    return { packs, records, problems };
  }

  private async runDue(): Promise<void> {
    if (this.pausedCount > 0) return;
    let failuresInARow = 0;
    try {
      // An operation that failed in its switch (an I/O error) is finished before anything else.
      if (this.index.intervals.state.pending !== null) await finishPending(this.operationParts());
      await this.expireSnapshots();
    } catch (error) {
      this.noteFailure(error);
      this.statistics.failedPassesInARow++;
      this.failuresThisPass = 0;
      return;
    }
    this.updatePressure();
    for (let step = 0; step < 64 && !this.closed && this.pausedCount === 0; step++) {
      try {
        await this.refreshKeptSet();
        // Under space pressure, folding frees the most and needs no new space: give up the oldest
        // kept history first when nothing can be folded yet, before packing or merging.
        if (this.underPressure && !(await this.foldIsDue()) && (await this.relievePressureStep())) await this.refreshKeptSet();
        const operation = await this.nextOperation();
        if (operation === null) {
          if (this.underPressure && (await this.relievePressureStep())) continue;
          break;
        }
        await this.runOperation(operation);
        failuresInARow = 0;
      } catch (error) {
        this.noteFailure(error);
        // The next pass tries again; but space pressure must not wait for it (a few more tries now).
        if (!this.underPressure || ++failuresInARow >= 3) break;
      }
      this.updatePressure();
    }
    try {
      this.checkAlerts();
      this.noteLogRate();
    } catch (error) {
      this.noteFailure(error);
    }
    // A pass that failed anywhere counts; one without failures clears the count (and the reason).
    this.statistics.failedPassesInARow = this.failuresThisPass > 0 ? this.statistics.failedPassesInARow + 1 : 0;
    if (this.failuresThisPass === 0) this.statistics.lastFailure = null;
    this.failuresThisPass = 0;
  }

  private failuresThisPass = 0;

  private async runOperation(operation: { kind: 'fold' | 'pack' | 'merge'; run: () => Promise<void> }): Promise<void> {
    const before = measureHistoryBytes(this.fileSystem, this.paths).totalBytes;
    const startedMs = performance.now();
    await operation.run();
    await this.housekeeping();
    const seconds = (performance.now() - startedMs) / 1000;
    if (operation.kind === 'fold') this.statistics.expirySeconds += seconds;
    else this.statistics.compactionSeconds += seconds;
    this.statistics[operation.kind === 'fold' ? 'folds' : operation.kind === 'pack' ? 'packs' : 'merges']++;
    const reclaimed = Math.max(0, before - measureHistoryBytes(this.fileSystem, this.paths).totalBytes);
    this.statistics.reclaimedBytes += reclaimed;
    if (operation.kind === 'fold') {
      this.emit({ type: 'history-expired', volume: this.host.name, reason: this.underPressure ? 'space' : 'policy', horizonMicros: this.index.intervals.state.horizonMicros, reclaimedBytes: reclaimed });
    }
  }

  private noteFailure(error: unknown): void {
    this.statistics.operationFailures++;
    this.failuresThisPass++;
    this.statistics.lastFailure = error instanceof Error ? error.message : String(error);
    this.emit({ type: 'lifecycle-failed', volume: this.host.name, message: this.statistics.lastFailure });
  }

  /** Is there something older than the oldest kept instant to fold now? */
  private async foldIsDue(): Promise<boolean> {
    const horizonTarget = oldestKept(this.keptSetValue!);
    const intervals = this.index.intervals.intervals;
    if (intervals.length > 0) return intervals[0]!.lastSequence <= horizonTarget || intervals[0]!.lastDataSequence <= horizonTarget;
    return (await this.windowsToFold(horizonTarget)) !== null;
  }

  /**
   * The log found no room for its next segment: expire history now, oldest first, until a segment
   * fits. Resolves true if room may have been made, false if nothing is left to expire.
   */
  async makeRoom(): Promise<boolean> {
    this.underPressure = true; // a pass in progress stops throttling itself at once
    await this.running;
    const before = measureHistoryBytes(this.fileSystem, this.paths).totalBytes;
    await this.tick();
    const after = measureHistoryBytes(this.fileSystem, this.paths).totalBytes;
    if (after < before) return true;
    // Nothing ran: push the floor forward and try again, a few times.
    for (let attempt = 0; attempt < 4; attempt++) {
      if (!(await this.relievePressureStep())) return false;
      await this.tick();
      if (measureHistoryBytes(this.fileSystem, this.paths).totalBytes < before) return true;
    }
    return false;
  }

  private async nextOperation(): Promise<{ kind: 'fold' | 'pack' | 'merge'; run: () => Promise<void> } | null> {
    const set = this.keptSetValue!;
    const intervals = this.index.intervals;
    const horizonTarget = oldestKept(set);
    // 1. Fold what is older than the oldest kept instant: every interval whose end shows an
    //    instant at or before it (its last data record is the kept point's, or older).
    const foldable: IntervalInfo[] = [];
    for (const interval of intervals.intervals) {
      if (foldable.length >= lifecycleLimits.mergeRunIntervalsMax || (interval.lastSequence > horizonTarget && interval.lastDataSequence > horizonTarget)) break;
      foldable.push(interval);
    }
    if (foldable.length > 0) return { kind: 'fold', run: () => foldIntervals(this.operationParts(), foldable) };
    if (intervals.intervals.length === 0) {
      const fold = await this.windowsToFold(horizonTarget);
      if (fold !== null) return { kind: 'fold', run: () => foldWindows(this.operationParts(), fold.toWindow, fold.target) };
    }
    // 2. Pack fine windows older than the continuous region.
    const pack = await this.spansToPack(set);
    if (pack !== null) return { kind: 'pack', run: () => packWindows(this.operationParts(), pack.spans, pack.target) };
    // 3. Merge runs of intervals whose inner points expired.
    const run = this.runToMerge(set);
    if (run !== null) return { kind: 'merge', run: () => mergeIntervals(this.operationParts(), run) };
    return null;
  }

  /** Fine windows wholly at or before the horizon target, when worth folding (or under pressure). */
  private async windowsToFold(horizonTarget: number): Promise<{ toWindow: number; target: LifecycleTarget } | null> {
    const { fineStartWindow } = this.index.intervals.state;
    const windowCount = this.index.windowCount;
    if (fineStartWindow >= windowCount) return null;
    let toWindow = await this.firstWindowEndingAfter(horizonTarget);
    if (toWindow <= fineStartWindow) return null;
    const first = await this.index.mapInfo({ level: 0, index: fineStartWindow });
    const last = await this.index.mapInfo({ level: 0, index: toWindow - 1 });
    const worthIt = this.underPressure || last.lastMicros - first.firstMicros >= foldSpanMicrosMin || toWindow - fineStartWindow >= foldWindowCountMin;
    if (!worthIt) return null;
    toWindow = Math.min(toWindow, fineStartWindow + foldWindowCountMax);
    const end = await this.index.mapInfo({ level: 0, index: toWindow - 1 });
    const target = await this.fineStartAfter(toWindow, end.lastSequence);
    const state = this.index.intervals.state;
    const lastData = await this.index.lastDataSequence(end.lastSequence);
    const folded = lastData > state.horizonSequence;
    return {
      toWindow,
      target: {
        ...target,
        horizonSequence: end.lastSequence,
        horizonMicros: folded ? await this.index.microsOf(end.lastSequence) : state.horizonMicros,
        horizonDataSequence: folded ? lastData : state.horizonDataSequence,
      },
    };
  }

  /** The spans to pack: from the fine start to the newest kept point older than the continuous region. */
  private async spansToPack(set: KeptSet): Promise<{ spans: PackSpan[]; target: LifecycleTarget } | null> {
    const intervals = this.index.intervals;
    const { fineStartWindow } = intervals.state;
    const packedThrough = intervals.packedThroughSequence;
    const endWindow = await this.firstWindowEndingAfter(set.continuousFromSequence - 1); // windows before it lie wholly before the continuous region
    if (endWindow <= fineStartWindow) return null;
    const lastWholeSequence = (await this.index.mapInfo({ level: 0, index: endWindow - 1 })).lastSequence;
    const points = set.points.filter((point) => point.sequence > packedThrough && point.sequence <= lastWholeSequence);
    let packEnd: number;
    let toWindow: number;
    if (points.length > 0) {
      toWindow = (await this.index.windowHolding(points[points.length - 1]!.sequence))! + 1;
      packEnd = (await this.index.mapInfo({ level: 0, index: toWindow - 1 })).lastSequence;
    } else {
      // No kept point: the windows are expired but the continuous region still needs their data;
      // with intervals before them they cannot fold, so pack them once they are worth it.
      if (intervals.intervals.length === 0) return null;
      const first = await this.index.mapInfo({ level: 0, index: fineStartWindow });
      const last = await this.index.mapInfo({ level: 0, index: endWindow - 1 });
      if (!this.underPressure && last.lastMicros - first.firstMicros < foldSpanMicrosMin && endWindow - fineStartWindow < foldWindowCountMin) return null;
      toWindow = endWindow;
      packEnd = last.lastSequence;
    }
    toWindow = Math.min(toWindow, fineStartWindow + foldWindowCountMax);
    packEnd = (await this.index.mapInfo({ level: 0, index: toWindow - 1 })).lastSequence;
    const cuts: Array<{ sequence: number; grade: number }> = [];
    for (const point of points) {
      if (point.sequence > packEnd) break;
      const snapped = await this.snapToWindowEnd(point.sequence);
      const existing = cuts.find((cut) => cut.sequence === snapped);
      if (existing !== undefined) existing.grade = Math.max(existing.grade, point.grade);
      else if (snapped > packedThrough && snapped <= packEnd) cuts.push({ sequence: snapped, grade: point.grade });
    }
    if (cuts[cuts.length - 1]?.sequence !== packEnd) cuts.push({ sequence: packEnd, grade: -2 });
    const spans: PackSpan[] = [];
    let from = packedThrough;
    for (const cut of cuts) {
      spans.push(await this.packSpan(from, cut.sequence, cut.grade));
      from = cut.sequence;
    }
    const { horizonSequence, horizonMicros, horizonDataSequence } = intervals.state;
    return { spans, target: { ...(await this.fineStartAfter(toWindow, packEnd)), horizonSequence, horizonMicros, horizonDataSequence } };
  }

  /** A run of intervals to merge: inner points all expired, and closed by a coarser kept point, long, or under pressure. */
  private runToMerge(set: KeptSet): IntervalInfo[] | null {
    const list = this.index.intervals.intervals;
    const kept = new Set(set.points.map((point) => point.sequence));
    const gradeOf = new Map(set.points.map((point) => [point.sequence, point.grade] as const));
    let run: IntervalInfo[] = [];
    for (const interval of list) {
      run.push(interval);
      const endKept = kept.has(interval.lastDataSequence) || kept.has(interval.lastSequence);
      if (!endKept) continue;
      if (run.length >= 2) {
        const endGrade = gradeOf.get(interval.lastDataSequence) ?? gradeOf.get(interval.lastSequence) ?? -1;
        const innerGrade = Math.max(...run.slice(0, -1).map((inner) => inner.endGrade));
        const tooMany = list.length > lifecycleLimits.intervalCountMax; // bound the index: merge any run whose inner points expired
        // A snapshot or hold (grade -1) closes its run until it is deleted: the points inside will not come back.
        const closed = endGrade > innerGrade || endGrade === -1;
        if (closed || run.length >= lifecycleLimits.mergeRunIntervalsDue || this.underPressure || tooMany) return run.slice(-lifecycleLimits.mergeRunIntervalsMax);
      }
      run = [];
    }
    // The youngest run (its end not kept yet) merges when long, size-tiered, so bytes are not rewritten again and again.
    if (run.length >= lifecycleLimits.mergeRunIntervalsDue || (this.underPressure && run.length >= 2)) return sizeTieredSuffix(run);
    return null;
  }

  // ---- the fine region ----

  /** The first fine window whose last record is after `sequence` (windowCount if none). */
  private async firstWindowEndingAfter(sequence: number): Promise<number> {
    if (this.index.windowCount === 0) return 0; // nothing cut yet (a new volume): no window to ask the index for
    const window = await this.index.windowHolding(sequence + 1);
    return window ?? this.index.windowCount;
  }

  /** A kept point inside a window becomes the window's end when only marks follow it there. */
  private async snapToWindowEnd(sequence: number): Promise<number> {
    const window = await this.index.windowHolding(sequence);
    if (window === null) return sequence;
    const info = await this.index.mapInfo({ level: 0, index: window });
    const lastData = await this.index.lastDataSequence(info.lastSequence);
    return lastData === sequence ? info.lastSequence : sequence;
  }

  private async packSpan(fromSequence: number, toSequence: number, endGrade: number): Promise<PackSpan> {
    const lastData = await this.index.lastDataSequence(toSequence);
    const hasData = lastData > fromSequence;
    const first = hasData ? await this.firstDataAfter(fromSequence, toSequence) : null;
    return {
      fromSequence,
      toSequence,
      firstDataSequence: first?.sequence ?? toSequence + 1,
      lastDataSequence: hasData ? lastData : fromSequence,
      firstMicros: first?.micros ?? 0,
      lastMicros: hasData ? await this.index.microsOf(toSequence) : 0,
      endGrade,
    };
  }

  /** The first data-changing record in (fromSequence, toSequence], and its time. */
  private async firstDataAfter(fromSequence: number, toSequence: number): Promise<{ sequence: number; micros: number } | null> {
    const { store } = this.index.lifecycleAccess();
    for (let window = (await this.index.windowHolding(fromSequence + 1))!; window < this.index.windowCount; window++) {
      const info = await this.index.mapInfo({ level: 0, index: window });
      if (info.firstSequence > toSequence) break;
      if (info.recordCount === 0) continue;
      const first = (await store.windowRecords(window)).find((record) => record.source.sequence > fromSequence);
      if (first !== undefined) return first.source.sequence <= toSequence ? { sequence: first.source.sequence, micros: first.micros } : null;
    }
    return null;
  }

  /** The fine region's new start once windows before `toWindow` (ending at `lastSequence`) are packed or folded. */
  private async fineStartAfter(toWindow: number, lastSequence: number): Promise<Omit<LifecycleTarget, 'horizonSequence' | 'horizonMicros' | 'horizonDataSequence'>> {
    const { store } = this.index.lifecycleAccess();
    return { fineStartWindow: toWindow, fineStartSequence: lastSequence + 1, fineStartPosition: await store.windowEndPosition(toWindow - 1) };
  }

  // ---- space ----

  private measure(): { history: HistoryBytes; capBytes: number; fileSystemSizeBytes: number; freeBytes: number; reserveBytes: number } {
    const policy = this.host.retentionPolicy();
    const history = measureHistoryBytes(this.fileSystem, this.paths);
    const space = measureFileSystem(this.fileSystem, this.paths.directory);
    return { history, capBytes: policy.maxHistoryBytes, fileSystemSizeBytes: space.sizeBytes, freeBytes: space.freeBytes, reserveBytes: reserveBytes(policy, space.sizeBytes) };
  }

  /** Measure and decide whether space is short (a measurement that fails changes nothing: the next one decides). */
  /** Decide whether space is short; returns whether the cap or the reserve would be broken now. */
  private updatePressure(): boolean {
    try {
      return this.decidePressure();
    } catch (error) {
      this.noteFailure(error);
      return false;
    }
  }

  private decidePressure(): boolean {
    const { history, capBytes, freeBytes, reserveBytes: reserve } = this.measure();
    // What is about to be taken: the base image at the first fold (allocated whole, so a fold
    // never runs out of room halfway), and the log's next segment.
    const comingBytes = (this.fileSystem.exists(this.paths.base) ? 0 : this.host.sizeBytes) + this.host.segmentSizeBytes;
    const over = history.totalBytes + comingBytes > capBytes || freeBytes - comingBytes < reserve;
    // Hysteresis: pressure ends with one more segment of room.
    const slackBytes = this.host.segmentSizeBytes;
    const relieved = history.totalBytes + comingBytes + slackBytes <= capBytes && freeBytes - comingBytes - slackBytes >= reserve;
    if (over) this.underPressure = true;
    else if (relieved && this.underPressure) {
      this.underPressure = false;
      this.pressureFloorSequence = 0;
      this.pressureWindowStep = 1;
    }
    return over;
  }

  /**
   * The log is about to take a new segment: while that would break the cap or the reserve, expire
   * first (a bounded number of passes: the write path waits for them, and a pass that could not
   * free anything gives up the oldest kept history before the next).
   */
  async beforeNewSegment(): Promise<void> {
    for (let attempt = 0; attempt < lifecycleLimits.segmentRoomPassesMax; attempt++) {
      if (this.closed || !this.updatePressure()) return;
      const before = measureHistoryBytes(this.fileSystem, this.paths).totalBytes;
      await this.running;
      await this.tick();
      if (measureHistoryBytes(this.fileSystem, this.paths).totalBytes < before) continue;
      // Nothing freed: if the segment still does not fit, give up the oldest kept history.
      if (!this.updatePressure() || !(await this.relievePressureStep())) return;
    }
  }

  /** Under pressure with nothing due: give up the oldest kept history not yet given up. Returns false if nothing is left. */
  private async relievePressureStep(): Promise<boolean> {
    const set = this.keptSetValue;
    if (set === null) return false;
    const unpinned = set.points.find((point) => !point.pinned);
    if (unpinned !== undefined) {
      this.pressureFloorSequence = Math.max(this.pressureFloorSequence, unpinned.sequence + 1);
      return true;
    }
    // Only pinned points are left before the continuous region: shrink it, a few windows more each time.
    const { fineStartWindow } = this.index.intervals.state;
    const target = Math.min(this.index.windowCount - 1, Math.max(fineStartWindow, (await this.firstWindowEndingAfter(this.pressureFloorSequence)) + this.pressureWindowStep));
    if (target <= fineStartWindow) return false;
    const info = await this.index.mapInfo({ level: 0, index: target });
    if (info.firstSequence <= this.pressureFloorSequence) return false;
    this.pressureFloorSequence = info.firstSequence;
    this.pressureWindowStep = Math.min(this.pressureWindowStep * 2, foldWindowCountMax);
    return true;
  }

  private pressureWindowStep = 1;

  // ---- housekeeping ----

  private async housekeeping(): Promise<void> {
    const { store, intervals } = this.index.lifecycleAccess();
    const state = intervals.state;
    if (state.obsoletePacks.length > 0) {
      await this.drain(this.index.generation);
      for (const pack of state.obsoletePacks) {
        const path = packPath({ paths: this.paths }, pack);
        if (this.fileSystem.exists(path)) this.fileSystem.remove(path);
        this.reader.forget(packFileNumber(pack));
      }
      await intervals.commit({ ...intervals.state, obsoletePacks: [] }, { add: [], remove: [] });
    }
    await this.drain(this.index.generation);
    await this.index.betweenMerges(() => store.clearWindowsBefore(state.fineStartWindow, state.fineStartSequence));
    this.deleteSegments();
  }

  /** Delete log segments whose every record is packed or folded, and which the volume no longer needs. */
  private deleteSegments(): void {
    const { fineStartPosition } = this.index.intervals.state;
    if (fineStartPosition === null) return;
    const keepFrom = Math.min(fineStartPosition.segmentNumber, this.host.oldestSegmentNeeded(), this.index.resumeFrom.position.segmentNumber);
    let deleted = false;
    for (const segmentNumber of listSegments(this.fileSystem, this.paths.log)) {
      if (segmentNumber >= keepFrom) break;
      this.fileSystem.remove(`${this.paths.log}/${segmentFileName(segmentNumber)}`);
      this.reader.forget(segmentNumber);
      this.statistics.segmentsDeleted++;
      deleted = true;
    }
    if (deleted) this.host.segmentsDeleted(keepFrom);
  }

  private async deleteOrphanPacks(): Promise<void> {
    const named = new Set(this.index.intervals.intervals.map((interval) => interval.pack));
    for (const interval of this.index.intervals.state.pending?.add ?? []) named.add(interval.pack);
    for (const name of this.fileSystem.list(this.paths.packs)) {
      const pack = parsePackFileName(name);
      if (pack !== undefined && !named.has(pack)) this.fileSystem.remove(`${this.paths.packs}/${name}`);
    }
  }

  private async expireSnapshots(): Promise<void> {
    const nowMicros = Date.now() * 1000;
    for (const snapshot of this.host.snapshots()) {
      if (snapshot.expiresMicros === 0 || snapshot.expiresMicros > nowMicros) continue;
      await this.host.expireSnapshot(snapshot.name);
      this.emit({ type: 'snapshot-expired', volume: this.host.name, name: snapshot.name, expiresMicros: snapshot.expiresMicros });
    }
  }

  // ---- alerts and status ----

  private checkAlerts(): void {
    const { history, capBytes, fileSystemSizeBytes, freeBytes } = this.measure();
    const fileSystemUsedPercent = fileSystemSizeBytes === 0 ? 0 : (100 * (fileSystemSizeBytes - freeBytes)) / fileSystemSizeBytes;
    const percent = Math.max((100 * history.totalBytes) / capBytes, fileSystemUsedPercent);
    const level = [...usageAlertPercents].reverse().find((threshold) => percent >= threshold) ?? 0;
    if (level > this.usageAlertPercent) {
      this.emit({ type: 'history-usage', volume: this.host.name, percent: level, historyBytes: history.totalBytes, maxHistoryBytes: capBytes, fileSystemUsedPercent: Math.round(fileSystemUsedPercent) });
    }
    this.usageAlertPercent = level;
    const required = this.host.retentionPolicy().requiredWindowSeconds;
    const windowSeconds = this.protectionWindowSeconds();
    const short = required > 0 && this.index.intervals.state.horizonSequence > 0 && windowSeconds < required;
    if (short !== this.windowShort) {
      this.emit({ type: short ? 'protection-window-short' : 'protection-window-restored', volume: this.host.name, windowSeconds: Math.floor(windowSeconds), requiredSeconds: required });
    }
    this.windowShort = short;
  }

  /** Seconds from the oldest recoverable instant to now. */
  protectionWindowSeconds(): number {
    return Math.max(0, (Date.now() * 1000 - this.oldestRecoverableMicros()) / 1_000_000);
  }

  /** The oldest instant a view can open: the horizon, or later when what lies after it expired already and waits to be folded. */
  oldestRecoverableMicros(): number {
    const state = this.index.intervals.state;
    return Math.max(state.horizonSequence > 0 ? state.horizonMicros : this.host.createdMicros, this.oldestKeptMicros);
  }

  /** The figures the API reports about retention. */
  status(): RetentionStatus {
    const policy = this.host.retentionPolicy();
    const nowMicros = Date.now() * 1000;
    const { history, capBytes, fileSystemSizeBytes, freeBytes, reserveBytes: reserve } = this.measure();
    const times = retainedTimes(policy, nowMicros);
    this.noteLogRate();
    const reasons: string[] = [];
    if (this.windowShort) reasons.push(`the protected window (${Math.floor(this.protectionWindowSeconds())} s) is shorter than required (${policy.requiredWindowSeconds} s)`);
    if (this.underPressure) reasons.push('history is being expired early to stay under its cap and the free-space reserve');
    const neededBytes = this.host.sizeBytes + 3 * this.host.segmentSizeBytes;
    if (capBytes < neededBytes) reasons.push(`the history cap (${capBytes} bytes) is below what history needs at least: the base image (the volume's size) and three log segments, ${neededBytes} bytes`);
    if (this.host.refusingWritesForSpace()) reasons.push('writes are refused: the log has no room and no history is left to expire');
    if (this.statistics.failedPassesInARow > 0) reasons.push(`the last ${this.statistics.failedPassesInARow} lifecycle pass(es) failed: ${this.statistics.lastFailure}`);
    return {
      oldestRecoverableMicros: this.oldestRecoverableMicros(),
      protectionWindowSeconds: Math.floor(this.protectionWindowSeconds()),
      continuousFromMicros: Math.max(times.continuousFromMicros, this.oldestRecoverableMicros()),
      tierStartsMicros: times.tierStartsMicros.map((micros) => Math.max(micros, this.oldestRecoverableMicros())),
      keptPointCount: this.keptSetValue?.points.length ?? 0,
      intervalCount: this.index.intervals.intervals.length,
      historyBytes: history,
      maxHistoryBytes: capBytes,
      fileSystem: { sizeBytes: fileSystemSizeBytes, freeBytes, reserveBytes: reserve },
      projectedHistoryBytes: this.projectedHistoryBytes(policy),
      logBytesPerSecond: Math.round(this.logRate.bytesPerSecond),
      underPressure: this.underPressure,
      degradedReasons: reasons,
      statistics: { ...this.statistics },
    };
  }

  private noteLogRate(): void {
    const logBytes = this.host.appendedLogBytes();
    const nowMs = performance.now();
    const elapsedSeconds = (nowMs - this.logRate.atMs) / 1000;
    if (elapsedSeconds < 1) return;
    const grown = Math.max(0, logBytes - this.logRate.bytes);
    this.logRate = { bytes: logBytes, atMs: nowMs, bytesPerSecond: this.logRate.bytesPerSecond * 0.5 + (grown / elapsedSeconds) * 0.5 };
  }

  /** What the policy would keep at the current write rate: every byte of the continuous region, at most the volume per coarser point, the base. */
  private projectedHistoryBytes(policy: RetentionPolicy): number {
    const rate = this.logRate.bytesPerSecond;
    let bytes = rate * policy.keepAllSeconds + this.host.sizeBytes;
    let coveredSeconds = policy.keepAllSeconds;
    for (const tier of policy.tiers) {
      const periodSeconds = typeof tier.every === 'number' ? tier.every : { hourly: 3600, daily: 86_400, weekly: 604_800, monthly: 2_592_000, yearly: 31_536_000 }[tier.every];
      const points = Math.max(0, (tier.keepSeconds - coveredSeconds) / periodSeconds);
      bytes += points * Math.min(this.host.sizeBytes, rate * periodSeconds);
      coveredSeconds = tier.keepSeconds;
    }
    return Math.round(bytes);
  }

  private emit(event: LifecycleEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  // ---- parts ----

  private operationParts(atOpen = false): OperationParts {
    const { store, intervals, chunkBytes } = this.index.lifecycleAccess();
    return {
      fileSystem: this.fileSystem,
      paths: this.paths,
      volumeId: this.host.volumeId,
      volumeSizeBytes: this.host.sizeBytes,
      store,
      intervals,
      chunkBytes,
      reader: this.reader,
      throttle: (bytes) => (atOpen || (this.underPressure && !this.closed) ? Promise.resolve() : this.throttle(bytes)),
      stillWanted: async (pending) => this.holdsAllow(pending),
      beforeSwitch: async () => {
        this.index.noteSwitch();
        await this.drain(this.index.generation);
      },
      afterSwitch: () => this.index.noteSwitch(),
      nowMicros: () => Date.now() * 1000,
    };
  }

  /** A token bucket: the lifecycle's reads and writes at most ioBytesPerSecond, in bursts of a second's worth. */
  private async throttle(bytes: number): Promise<void> {
    const rate = lifecycleLimits.ioBytesPerSecond;
    for (;;) {
      // Closing: stop here; the operation is abandoned (writing) or redone at open (switching).
      if (this.closed) throw new StorageError('ESHUTDOWN', `volume ${this.host.name} is closing`);
      const nowMs = performance.now();
      this.ioTokens = Math.min(rate, this.ioTokens + ((nowMs - this.ioRefilledAtMs) / 1000) * rate);
      this.ioRefilledAtMs = nowMs;
      if (this.ioTokens >= Math.min(bytes, rate)) {
        this.ioTokens -= bytes;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(1, ((Math.min(bytes, rate) - this.ioTokens) / rate) * 1000)));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    await this.running;
  }
}

export interface RetentionStatus {
  oldestRecoverableMicros: number;
  protectionWindowSeconds: number;
  continuousFromMicros: number;
  tierStartsMicros: number[];
  keptPointCount: number;
  intervalCount: number;
  historyBytes: HistoryBytes;
  maxHistoryBytes: number;
  fileSystem: { sizeBytes: number; freeBytes: number; reserveBytes: number };
  projectedHistoryBytes: number;
  logBytesPerSecond: number;
  underPressure: boolean;
  degradedReasons: string[];
  statistics: LifecycleStatistics;
}

const { foldSpanMicrosMin, foldWindowCountMin, foldWindowCountMax } = lifecycleLimits;


/** The youngest intervals of a run, as many as keep the merge size-tiered (the oldest is at most twice the rest). */
function sizeTieredSuffix(run: IntervalInfo[]): IntervalInfo[] {
  let start = run.length - 2;
  let youngerBytes = run[run.length - 1]!.packBytes;
  while (start > 0 && run[start]!.packBytes <= 2 * youngerBytes) {
    youngerBytes += run[start]!.packBytes;
    start--;
  }
  if (run[start]!.packBytes > 2 * youngerBytes && start < run.length - 2) start++;
  return run.slice(start).slice(-lifecycleLimits.mergeRunIntervalsMax);
}

export type { KeptPoint };
