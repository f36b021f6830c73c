// A volume's history: its delta-map index kept up to date as records are appended, its
// snapshots (named marks in the log), and the point-in-time views and clones opened on it.
//
// Instants are given as a snapshot name, a sequence number, or a time in microseconds; each is
// turned into a sequence number S, and the view shows the volume just after record S.

import { StorageError, messageWithCauses } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import { DeltaMapIndex, type IndexDatabaseFactory, type IndexedRecord, type SnapshotRecord } from '../index/delta-map-index.js';
import { applySnapshotUpdate, snapshotOfMark, type SnapshotMark } from '../index/tail.js';
import { indexLimits, lifecycleLimits } from '../limits.js';
import type { TimelineSpan } from '../index/timeline.js';
import type { Extent } from '../index/extents.js';
import type { VolumePaths } from '../volume-config.js';
import type { AppendedRecord, LogPosition } from '../write-log/batch.js';
import { logStart, scanLog } from '../write-log/log-reader.js';
import { RecordFlag, RecordKind, type RecordKind as RecordKindValue } from '../write-log/record.js';
import { formatMicros } from '../clock.js';
import { HistoryLifecycle, type LifecycleHost } from '../retention/lifecycle.js';
import type { RetentionPolicy } from '../retention/policy.js';
import { LogDataReader } from './log-data-reader.js';
import { PointInTimeView, type ViewLifecycle, type ViewSource } from './view.js';
import { dirtyBitmapStatus, type SnapshotInstant } from './dirty-bitmap.js';
import type { ContextExtent } from '../block-device.js';

/** An instant of a volume's history, as people give it. */
export type InstantSpecification = { snapshot: string } | { sequence: number } | { micros: number };

/** What the history needs of its volume. */
export interface HistoryVolume extends ViewSource {
  readonly name: string;
  readonly createdMicros: number;
  readonly volumeId: Buffer;
  readonly segmentSizeBytes: number;
  retentionPolicy(): RetentionPolicy;
  /** The oldest log segment the volume itself still needs (checkpoints, unapplied records, appends). */
  oldestSegmentNeeded(): number;
  /** Expiry deleted the log segments before `firstRemaining`. */
  segmentsDeleted(firstRemaining: number): void;
  appendMark(payload: Buffer): Promise<AppendedRecord>;
  /** Make records durable through `sequence` (for cuts) and everything (before a view opens). */
  syncThrough(sequence: number): Promise<void>;
  flush(): Promise<void>;
  readonly appendedSequence: number;
  readonly durableSequence: number;
  /** Bytes of log appended since the volume was made (the log's position; only grows). */
  readonly appendedLogBytes: number;
  /** The last append found no room for the log (ENOSPC), and none has been taken since. */
  readonly refusingWritesForSpace: boolean;
}

const snapshotNamePattern = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** What the index holds, for the API and the metrics. */
export interface HistoryStatistics {
  windows: number;
  mapsPerLevel: number[];
  mappedThroughSequence: number;
  oldestMicros: number;
  newestMicros: number;
  indexBytes: number;
  /** Records appended but not yet cut into a window, held in memory (at most tailRecordCountMax). */
  tailRecordCount: number;
  tailRecordCountMax: number;
  /** Cuts failed in a row (0: the last one succeeded), the last error, when cutting began to fail and is tried next (Unix µs). */
  cutsFailedInARow: number;
  cutFailuresTotal: number;
  lastCutError: string | null;
  cutsFailingSinceMicros: number | null;
  nextCutAttemptMicros: number | null;
  /** Writes are refused (ENOSPC): the tail is full and cuts fail. */
  refusingWritesForIndex: boolean;
  lastMergeError: string | null;
}

/** Cuts failing in a row: the last error, since when, and when the next try may start. */
interface CutFailure {
  error: unknown;
  failedInARow: number;
  sinceMs: number;
  nextAttemptMs: number;
}

export function validateSnapshotName(name: string): string | null {
  return snapshotNamePattern.test(name) ? null : 'a snapshot name has 1 to 64 characters a-z, 0-9, ".", "_" and "-", starting with a letter or digit';
}

export class VolumeHistory {
  /** Private to storage: other layers ask the history, never the index. */
  private readonly index: DeltaMapIndex;
  private readonly volume: HistoryVolume;
  private readonly logReader: LogDataReader;
  /** Snapshots by name, in memory (for metadata contexts, which are listed synchronously). */
  private readonly snapshotsByName = new Map<string, SnapshotRecord>();
  private cutting: Promise<void> | null = null;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  /**
   * Cuts failing (LevelDB out of space, an I/O error): tried again with backoff; meanwhile views
   * work from what is cut and the tail, and writes are refused once the tail is full.
   */
  private cutFailure: CutFailure | null = null;
  private cutFailuresTotal = 0;
  /** Retention: what is kept, expiry and reclaim (storage/retention/lifecycle.ts). */
  readonly lifecycle: HistoryLifecycle;

  private constructor(volume: HistoryVolume, index: DeltaMapIndex, logReader: LogDataReader, files: { fileSystem: FileSystem; paths: VolumePaths; sizeBytes: number }) {
    this.volume = volume;
    this.index = index;
    this.logReader = logReader;
    const host: LifecycleHost = {
      name: volume.name,
      sizeBytes: files.sizeBytes,
      segmentSizeBytes: volume.segmentSizeBytes,
      volumeId: volume.volumeId,
      createdMicros: volume.createdMicros,
      retentionPolicy: () => volume.retentionPolicy(),
      oldestSegmentNeeded: () => volume.oldestSegmentNeeded(),
      segmentsDeleted: (firstRemaining) => volume.segmentsDeleted(firstRemaining),
      appendedLogBytes: () => volume.appendedLogBytes,
      refusingWritesForSpace: () => volume.refusingWritesForSpace,
      snapshots: () => this.snapshots().map((snapshot) => ({ ...snapshot, pinned: snapshot.pinned ?? false, expiresMicros: snapshot.expiresMicros ?? 0 })),
      expireSnapshot: async (name) => {
        if (this.snapshotsByName.has(name)) await this.deleteSnapshot(name);
      },
    };
    this.lifecycle = new HistoryLifecycle({ host, fileSystem: files.fileSystem, paths: files.paths, index, reader: logReader });
    this.timer = setInterval(() => this.cutIfDue(), indexLimits.cutCheckIntervalMs);
    this.timer.unref();
  }

  /**
   * Open the index and bring it up to the end of the log: the records after its checkpoint are
   * replayed into its tail. Call after recovery, before the volume appends anything.
   */
  static async open(parts: { volume: HistoryVolume; paths: VolumePaths; fileSystem: FileSystem; sizeBytes: number; indexDatabase?: IndexDatabaseFactory }): Promise<VolumeHistory> {
    const { paths, fileSystem } = parts;
    const firstPosition: LogPosition = logStart(fileSystem, paths.log) ?? { segmentNumber: 1, offsetBytes: 4096 };
    const index = await DeltaMapIndex.open(paths.index, { sizeBytes: parts.sizeBytes, createdMicros: parts.volume.createdMicros }, firstPosition, parts.indexDatabase);
    try {
      const { position, sequence } = index.resumeFrom;
      scanLog(fileSystem, paths.log, { from: position, expectedSequence: sequence, withPayload: true }, ({ header, position: recordPosition, payload }) => {
        index.noteRecord(indexedRecord(header.kind, header, recordPosition, 48 + header.payloadBytes, header.kind === RecordKind.mark ? payload : null));
      });
    } catch (error) {
      await index.close();
      throw error;
    }
    const history = new VolumeHistory(parts.volume, index, new LogDataReader(fileSystem, paths), { fileSystem, paths, sizeBytes: parts.sizeBytes });
    for (const snapshot of await index.snapshots()) history.snapshotsByName.set(snapshot.name, snapshot);
    try {
      await history.lifecycle.recover();
    } catch (error) {
      await history.close();
      throw error;
    }
    history.lifecycle.start();
    return history;
  }

  /** Tell the index of a record just appended (in log order). */
  noteRecord(record: AppendedRecord, payload: Buffer | null): void {
    this.index.noteRecord(indexedRecord(record.kind, record, record.position, record.encodedBytes, record.kind === RecordKind.mark ? payload : null));
    if (record.kind === RecordKind.mark && payload !== null) this.noteSnapshotMark(record, payload);
    else if (this.cutting === null && this.index.tailRecordCount >= indexLimits.windowRecordsMax) this.cutIfDue();
  }

  private noteSnapshotMark(record: AppendedRecord, payload: Buffer): void {
    try {
      const event = JSON.parse(payload.toString('utf8')) as SnapshotMark;
      if (typeof event.name !== 'string') return;
      if (event.event === 'snapshot') {
        this.snapshotsByName.set(event.name, snapshotOfMark(event, record.sequence, record.timestampMicros));
        this.cutIfDue();
      } else if (event.event === 'snapshot-deleted') {
        this.snapshotsByName.delete(event.name);
      } else if (event.event === 'snapshot-updated') {
        const snapshot = this.snapshotsByName.get(event.name);
        if (snapshot !== undefined) this.snapshotsByName.set(event.name, applySnapshotUpdate(snapshot, event));
      }
    } catch {
      // Not a JSON mark of ours: nothing to index.
    }
  }

  /**
   * Cut windows while one is due (after making its records durable), one cut at a time. A failed
   * cut is tried again after a delay that doubles with every failure in a row (up to 30 s).
   */
  cutIfDue(): void {
    if (this.cutting !== null || this.closed) return;
    if (this.cutFailure !== null && Date.now() < this.cutFailure.nextAttemptMs) return;
    const through = this.index.cutDue(Date.now() * 1000);
    if (through === 0) return;
    this.cutting = (async () => {
      try {
        await this.volume.syncThrough(through);
        await this.index.cut(through);
        this.cutFailure = null;
      } catch (error) {
        this.noteCutFailure(error);
      } finally {
        this.cutting = null;
      }
      if (this.cutFailure === null) this.cutIfDue(); // records kept coming: the next window may be full already
    })();
  }

  private noteCutFailure(error: unknown): void {
    this.cutFailuresTotal++;
    const nowMs = Date.now();
    const failedInARow = (this.cutFailure?.failedInARow ?? 0) + 1;
    const delayMs = Math.min(indexLimits.cutRetryDelayMsMax, indexLimits.cutRetryDelayMsMin * 2 ** Math.min(failedInARow - 1, 20));
    this.cutFailure = { error, failedInARow, sinceMs: this.cutFailure?.sinceMs ?? nowMs, nextAttemptMs: nowMs + delayMs };
  }

  /**
   * Admission of one more record (the write path, step 2): null when the tail has room; while it
   * is full, a wait for the cut in progress, or ENOSPC when cuts fail, so that memory stays
   * bounded (docs/decisions/0012-index-cut-failures.md).
   */
  admit(): Promise<void> | null {
    if (this.index.tailHeldRecordCount < indexLimits.tailRecordCountMax) return null;
    if (this.cutFailure !== null) {
      throw new StorageError(
        'ENOSPC',
        `volume ${this.volume.name} refuses writes: its index holds ${this.index.tailHeldRecordCount} records in memory, the most it may, and cutting them into the index fails (${this.cutFailure.failedInARow} in a row, next try in ${Math.max(0, Math.ceil((this.cutFailure.nextAttemptMs - Date.now()) / 1000))} s): ${messageWithCauses(this.cutFailure.error)}`,
        { cause: this.cutFailure.error },
      );
    }
    this.cutIfDue();
    return this.cutting ?? new Promise((resolve) => setTimeout(resolve, 1));
  }

  /** Why the index is unhealthy, in words (for /health); empty when it is not. */
  degradedReasons(): string[] {
    const reasons: string[] = [];
    const failure = this.cutFailure;
    if (failure !== null) {
      reasons.push(`cutting records into the delta-map index fails (${failure.failedInARow} in a row since ${formatMicros(failure.sinceMs * 1000)}; retried with backoff): ${messageWithCauses(failure.error)}`);
      if (this.index.tailHeldRecordCount >= indexLimits.tailRecordCountMax) reasons.push(`writes are refused (ENOSPC): the index's in-memory tail is full (${this.index.tailHeldRecordCount} records)`);
    }
    if (this.index.mergeFailure !== null) reasons.push(`merging delta maps fails: ${messageWithCauses(this.index.mergeFailure)}`);
    return reasons;
  }

  // ---- snapshots ----

  /** Mark this instant with a name; pinned snapshots survive space pressure, and one with an expiry time is deleted then. */
  async createSnapshot(name: string, note = '', options: { pinned?: boolean; expiresMicros?: number } = {}): Promise<SnapshotRecord> {
    const problem = validateSnapshotName(name);
    if (problem !== null) throw new StorageError('EINVAL', problem);
    if (Buffer.byteLength(note) > indexLimits.snapshotNoteBytesMax) throw new StorageError('EINVAL', `a snapshot note has at most ${indexLimits.snapshotNoteBytesMax} bytes`);
    if (this.snapshotsByName.has(name)) throw new StorageError('EEXIST', `volume ${this.volume.name} already has a snapshot named ${name}`);
    if (this.snapshotsByName.size >= lifecycleLimits.snapshotCountMax) throw new StorageError('EINVAL', `volume ${this.volume.name} has ${lifecycleLimits.snapshotCountMax} snapshots, the most it keeps: delete some first`);
    this.validateExpiry(options.expiresMicros);
    const mark: SnapshotMark = { event: 'snapshot', name, note, pinned: options.pinned === true, expiresMicros: options.expiresMicros ?? 0 };
    const record = await this.volume.appendMark(Buffer.from(JSON.stringify(mark)));
    return this.snapshotsByName.get(name) ?? snapshotOfMark(mark, record.sequence, record.timestampMicros);
  }

  /** Pin or unpin a snapshot, or set its expiry time (0: kept until deleted). */
  async updateSnapshot(name: string, changes: { pinned?: boolean; expiresMicros?: number }): Promise<SnapshotRecord> {
    if (!this.snapshotsByName.has(name)) throw new StorageError('ENOENT', `volume ${this.volume.name} has no snapshot named ${name}`);
    this.validateExpiry(changes.expiresMicros);
    const mark: SnapshotMark = { event: 'snapshot-updated', name, ...changes };
    await this.volume.appendMark(Buffer.from(JSON.stringify(mark)));
    return this.snapshotsByName.get(name)!;
  }

  private validateExpiry(expiresMicros: number | undefined): void {
    if (expiresMicros === undefined || expiresMicros === 0) return;
    if (!Number.isSafeInteger(expiresMicros) || expiresMicros < 0) throw new StorageError('EINVAL', 'an expiry time is a whole number of microseconds');
    if (expiresMicros <= Date.now() * 1000) throw new StorageError('EINVAL', `the expiry time ${formatMicros(expiresMicros)} has already passed`);
  }

  async deleteSnapshot(name: string): Promise<void> {
    if (!this.snapshotsByName.has(name)) throw new StorageError('ENOENT', `volume ${this.volume.name} has no snapshot named ${name}`);
    await this.volume.appendMark(Buffer.from(JSON.stringify({ event: 'snapshot-deleted', name })));
  }

  snapshots(): SnapshotRecord[] {
    return [...this.snapshotsByName.values()].sort((left, right) => left.sequence - right.sequence);
  }

  snapshot(name: string): SnapshotRecord | null {
    return this.snapshotsByName.get(name) ?? null;
  }

  snapshotInstants(): SnapshotInstant[] {
    return this.snapshots();
  }

  // ---- instants and views ----

  /** The sequence number an instant names. Refuses instants outside the history. */
  async sequenceOf(instant: InstantSpecification): Promise<number> {
    if ('snapshot' in instant) {
      const snapshot = this.snapshotsByName.get(instant.snapshot);
      if (snapshot === undefined) throw new StorageError('ENOENT', `volume ${this.volume.name} has no snapshot named ${instant.snapshot}`);
      return snapshot.sequence;
    }
    if ('sequence' in instant) {
      if (!Number.isSafeInteger(instant.sequence) || instant.sequence < 0 || instant.sequence > this.volume.appendedSequence) {
        throw new StorageError('EINVAL', `sequence ${instant.sequence} is outside the log (0 to ${this.volume.appendedSequence})`);
      }
      await this.lifecycle.assertKept(instant.sequence);
      return instant.sequence;
    }
    if (!Number.isSafeInteger(instant.micros) || instant.micros < 0) throw new StorageError('EINVAL', 'an instant is a whole number of microseconds');
    if (instant.micros > Date.now() * 1000 + 60_000_000) throw new StorageError('EINVAL', `${formatMicros(instant.micros)} is in the future`);
    if (instant.micros < this.volume.createdMicros) {
      throw new StorageError('EINVAL', `${formatMicros(instant.micros)} is before volume ${this.volume.name} was created (${formatMicros(this.volume.createdMicros)})`);
    }
    const sequence = await this.index.sequenceAt(instant.micros);
    await this.lifecycle.assertKept(sequence);
    return sequence;
  }

  /** A read-only view of the volume just after record `sequence`. */
  async openView(sequence: number, description: string, options: { fromLogOnly?: boolean } = {}): Promise<PointInTimeView> {
    // The view reads records from the log files: everything up to its instant must be written.
    if (sequence > this.volume.durableSequence) await this.volume.flush();
    const lifecycle = this.lifecycle;
    await lifecycle.assertKept(sequence);
    const release = lifecycle.hold(sequence, description);
    const planGeneration = this.index.generation;
    let plan;
    try {
      plan = await this.index.planAt(sequence);
    } catch (error) {
      release();
      throw error;
    }
    const viewLifecycle: ViewLifecycle = {
      beginRead: () => lifecycle.beginRead(),
      endRead: (generation) => lifecycle.endRead(generation),
      replan: async (at) => {
        await lifecycle.assertKept(at);
        return this.index.planAt(at);
      },
      release,
    };
    const source: ViewSource = {
      sizeBytes: this.volume.sizeBytes,
      read: (offsetBytes, lengthBytes) => this.volume.read(offsetBytes, lengthBytes),
      allocation: (offsetBytes, lengthBytes, extentCountMax) => this.volume.allocation(offsetBytes, lengthBytes, extentCountMax),
      snapshotInstants: () => this.snapshotInstants(),
    };
    return new PointInTimeView({ source, index: this.index, plan, planGeneration, lifecycle: viewLifecycle, log: this.logReader, description, fromLogOnly: options.fromLogOnly ?? false });
  }

  /** When record `sequence` (or the last data record before it) was written; 0 if none. */
  async microsOf(sequence: number): Promise<number> {
    return this.index.microsOf(sequence);
  }

  /** Byte ranges of [startBytes, endBytes) written by records in (fromSequence, toSequence]. */
  changedBetween(fromSequence: number, toSequence: number, startBytes: number, endBytes: number): Promise<Array<[number, number]>> {
    return this.index.changedBetween(fromSequence, toSequence, startBytes, endBytes);
  }

  /** The changed-block context of a snapshot (qemu:dirty-bitmap:NAME) up to `uptoSequence`. */
  contextStatus(context: string, uptoSequence: number, offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<ContextExtent[]> {
    return dirtyBitmapStatus(this.index, this.snapshotInstants(), context, uptoSequence, offsetBytes, lengthBytes, extentCountMax);
  }

  /** The extents of ranges as of record `sequence` (verification compares them with a replay of the log). */
  async extentResolver(sequence: number): Promise<(startBytes: number, endBytes: number) => Promise<Extent[]>> {
    const plan = await this.index.planAt(sequence);
    return async (startBytes, endBytes) => (await this.index.resolve(plan, startBytes, endBytes)).extents;
  }

  /** How many maps a read at `sequence` may consult (the benchmark reports it). */
  async planDepth(sequence: number): Promise<number> {
    return (await this.index.planAt(sequence)).mapsNewestFirst.length;
  }

  // ---- the timeline ----

  async windows(fromMicros: number, toMicros: number, limit: number): Promise<TimelineSpan[]> {
    return this.index.windowsBetween(fromMicros, toMicros, limit);
  }

  /** The oldest record's time (0 if none). */
  oldestMicros(): Promise<number> {
    return this.index.firstMicros();
  }

  /** The newest record's time (0 if none). */
  get newestMicros(): number {
    return this.index.lastMicros;
  }

  /** The last record the index has cut into a window (it was durable then). */
  get mappedThroughSequence(): number {
    return this.index.mappedThroughSequence;
  }

  /** Maps built per level (level 0: windows). */
  get mapsPerLevel(): readonly number[] {
    return this.index.builtCounts;
  }

  async statistics(): Promise<HistoryStatistics> {
    return {
      windows: this.index.windowCount,
      mapsPerLevel: [...this.index.builtCounts],
      mappedThroughSequence: this.index.mappedThroughSequence,
      oldestMicros: await this.index.firstMicros(),
      newestMicros: this.index.lastMicros,
      indexBytes: this.index.sizeBytes(),
      ...this.cutStatistics(),
    };
  }

  /** The cut figures of statistics(), synchronously (for /metrics). */
  cutStatistics(): Pick<
    HistoryStatistics,
    'tailRecordCount' | 'tailRecordCountMax' | 'cutsFailedInARow' | 'cutFailuresTotal' | 'lastCutError' | 'cutsFailingSinceMicros' | 'nextCutAttemptMicros' | 'refusingWritesForIndex' | 'lastMergeError'
  > {
    const failure = this.cutFailure;
    const tailRecordCount = this.index.tailHeldRecordCount;
    return {
      tailRecordCount,
      tailRecordCountMax: indexLimits.tailRecordCountMax,
      cutsFailedInARow: failure?.failedInARow ?? 0,
      cutFailuresTotal: this.cutFailuresTotal,
      lastCutError: failure === null ? null : messageWithCauses(failure.error),
      cutsFailingSinceMicros: failure === null ? null : failure.sinceMs * 1000,
      nextCutAttemptMicros: failure === null ? null : failure.nextAttemptMs * 1000,
      refusingWritesForIndex: failure !== null && tailRecordCount >= indexLimits.tailRecordCountMax,
      lastMergeError: this.index.mergeFailure === null ? null : messageWithCauses(this.index.mergeFailure),
    };
  }

  /** Resolves when every cut and merge asked for so far is done. */
  settled(): Promise<void> {
    return this.index.settled();
  }

  /** Make the log durable and cut everything appended into windows now (tests and benchmarks). */
  async cutNow(): Promise<void> {
    await this.volume.flush();
    await this.cutEverything();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.lifecycle.close();
    await this.cutting;
    this.logReader.close();
    await this.index.close();
  }

  /** At close, after the log is durable: cut what is left, so the next open replays little. */
  async cutEverything(): Promise<void> {
    await this.cutting;
    const through = this.volume.appendedSequence;
    if (through > this.index.mappedThroughSequence) await this.index.cut(through).catch(() => undefined);
  }
}

function indexedRecord(
  kind: RecordKindValue,
  record: { sequence: number; timestampMicros: number; offsetBytes: number; lengthBytes: number; flags: number },
  position: LogPosition,
  encodedBytes: number,
  markPayload: Buffer | null,
): IndexedRecord {
  const change = kind === RecordKind.data ? 'data' : kind === RecordKind.zeroes || kind === RecordKind.trim ? 'zeroes' : kind === RecordKind.mark ? 'mark' : 'other';
  return {
    sequence: record.sequence,
    timestampMicros: record.timestampMicros,
    change,
    offsetBytes: record.offsetBytes,
    lengthBytes: record.lengthBytes,
    position,
    encodedBytes,
    compressed: (record.flags & RecordFlag.snappy) !== 0,
    ...(markPayload === null ? {} : { markPayload: Buffer.from(markPayload) }),
  };
}
