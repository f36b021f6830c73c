// A volume's history: its delta-map index kept up to date as records are appended, its
// snapshots (named marks in the log), and the point-in-time views and clones opened on it.
//
// Instants are given as a snapshot name, a sequence number, or a time in microseconds; each is
// turned into a sequence number S, and the view shows the volume just after record S.

import { StorageError } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import { DeltaMapIndex, indexLimits, type IndexedRecord, type SnapshotRecord } from '../index/delta-map-index.js';
import type { MapInfo } from '../index/map-keys.js';
import type { VolumePaths } from '../volume-config.js';
import type { AppendedRecord, LogPosition } from '../write-log/batch.js';
import { logStart, scanLog } from '../write-log/log-reader.js';
import { RecordFlag, RecordKind, type RecordKind as RecordKindValue } from '../write-log/record.js';
import { formatMicros } from '../clock.js';
import { LogDataReader } from './log-data-reader.js';
import { PointInTimeView, type ViewSource } from './view.js';
import type { SnapshotInstant } from './dirty-bitmap.js';

/** An instant of a volume's history, as people give it. */
export type InstantSpecification = { snapshot: string } | { sequence: number } | { micros: number };

/** What the history needs of its volume. */
export interface HistoryVolume extends ViewSource {
  readonly name: string;
  readonly createdMicros: number;
  appendMark(payload: Buffer): Promise<AppendedRecord>;
  /** Make records durable through `sequence` (for cuts) and everything (before a view opens). */
  syncThrough(sequence: number): Promise<void>;
  flush(): Promise<void>;
  readonly appendedSequence: number;
  readonly durableSequence: number;
}

const snapshotNamePattern = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const noteBytesMax = 1024;
const cutCheckIntervalMs = 1000;

export function validateSnapshotName(name: string): string | null {
  return snapshotNamePattern.test(name) ? null : 'a snapshot name has 1 to 64 characters a-z, 0-9, ".", "_" and "-", starting with a letter or digit';
}

export class VolumeHistory {
  readonly index: DeltaMapIndex;
  private readonly volume: HistoryVolume;
  private readonly logReader: LogDataReader;
  /** Snapshots by name, in memory (for metadata contexts, which are listed synchronously). */
  private readonly snapshotsByName = new Map<string, SnapshotRecord>();
  private cutting: Promise<void> | null = null;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  /** The first failure of the index (cuts stop; views still work from what is cut and the tail). */
  failure: unknown = null;

  private constructor(volume: HistoryVolume, index: DeltaMapIndex, logReader: LogDataReader) {
    this.volume = volume;
    this.index = index;
    this.logReader = logReader;
    this.timer = setInterval(() => this.cutIfDue(), cutCheckIntervalMs);
    this.timer.unref();
  }

  /**
   * Open the index and bring it up to the end of the log: the records after its checkpoint are
   * replayed into its tail. Call after recovery, before the volume appends anything.
   */
  static async open(parts: { volume: HistoryVolume; paths: VolumePaths; fileSystem: FileSystem; sizeBytes: number }): Promise<VolumeHistory> {
    const { paths, fileSystem } = parts;
    const firstPosition: LogPosition = logStart(fileSystem, paths.log) ?? { segmentNumber: 1, offsetBytes: 4096 };
    const index = await DeltaMapIndex.open(paths.index, parts.sizeBytes, firstPosition);
    try {
      const { position, sequence } = index.resumeFrom;
      scanLog(fileSystem, paths.log, { from: position, expectedSequence: sequence, withPayload: true }, ({ header, position: recordPosition, payload }) => {
        index.noteRecord(indexedRecord(header.kind, header, recordPosition, 48 + header.payloadBytes, header.kind === RecordKind.mark ? payload : null));
      });
    } catch (error) {
      await index.close();
      throw error;
    }
    const history = new VolumeHistory(parts.volume, index, new LogDataReader(fileSystem, paths.log));
    for (const snapshot of await index.snapshots()) history.snapshotsByName.set(snapshot.name, snapshot);
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
      const event = JSON.parse(payload.toString('utf8')) as { event?: string; name?: string; note?: string };
      if (event.event === 'snapshot' && typeof event.name === 'string') {
        this.snapshotsByName.set(event.name, { name: event.name, sequence: record.sequence, micros: record.timestampMicros, note: event.note ?? '' });
        this.cutIfDue();
      } else if (event.event === 'snapshot-deleted' && typeof event.name === 'string') {
        this.snapshotsByName.delete(event.name);
      }
    } catch {
      // Not a JSON mark of ours: nothing to index.
    }
  }

  /** Cut windows while one is due (after making its records durable), one cut at a time. */
  cutIfDue(): void {
    if (this.cutting !== null || this.closed || this.failure !== null) return;
    const through = this.index.cutDue(Date.now() * 1000);
    if (through === 0) return;
    this.cutting = (async () => {
      try {
        await this.volume.syncThrough(through);
        await this.index.cut(through);
      } catch (error) {
        this.failure ??= error;
      } finally {
        this.cutting = null;
      }
      this.cutIfDue(); // records kept coming: the next window may be full already
    })();
  }

  // ---- snapshots ----

  async createSnapshot(name: string, note = ''): Promise<SnapshotRecord> {
    const problem = validateSnapshotName(name);
    if (problem !== null) throw new StorageError('EINVAL', problem);
    if (Buffer.byteLength(note) > noteBytesMax) throw new StorageError('EINVAL', `a snapshot note has at most ${noteBytesMax} bytes`);
    if (this.snapshotsByName.has(name)) throw new StorageError('EEXIST', `volume ${this.volume.name} already has a snapshot named ${name}`);
    const record = await this.volume.appendMark(Buffer.from(JSON.stringify({ event: 'snapshot', name, note })));
    return this.snapshotsByName.get(name) ?? { name, sequence: record.sequence, micros: record.timestampMicros, note };
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
      return instant.sequence;
    }
    if (!Number.isSafeInteger(instant.micros) || instant.micros < 0) throw new StorageError('EINVAL', 'an instant is a whole number of microseconds');
    if (instant.micros > Date.now() * 1000 + 60_000_000) throw new StorageError('EINVAL', `${formatMicros(instant.micros)} is in the future`);
    if (instant.micros < this.volume.createdMicros) {
      throw new StorageError('EINVAL', `${formatMicros(instant.micros)} is before volume ${this.volume.name} was created (${formatMicros(this.volume.createdMicros)})`);
    }
    return this.index.sequenceAt(instant.micros);
  }

  /** A read-only view of the volume just after record `sequence`. */
  async openView(sequence: number, description: string, options: { fromLogOnly?: boolean } = {}): Promise<PointInTimeView> {
    // The view reads records from the log files: everything up to its instant must be written.
    if (sequence > this.volume.durableSequence) await this.volume.flush();
    const plan = await this.index.planAt(sequence);
    const source: ViewSource = {
      sizeBytes: this.volume.sizeBytes,
      read: (offsetBytes, lengthBytes) => this.volume.read(offsetBytes, lengthBytes),
      allocation: (offsetBytes, lengthBytes, extentCountMax) => this.volume.allocation(offsetBytes, lengthBytes, extentCountMax),
      snapshotInstants: () => this.snapshotInstants(),
    };
    return new PointInTimeView({ source, index: this.index, plan, log: this.logReader, description, fromLogOnly: options.fromLogOnly ?? false });
  }

  /** When record `sequence` (or the last data record before it) was written; 0 if none. */
  async microsOf(sequence: number): Promise<number> {
    return this.index.microsOf(sequence);
  }

  // ---- the timeline ----

  async windows(fromMicros: number, toMicros: number, limit: number): Promise<MapInfo[]> {
    return this.index.windowsBetween(fromMicros, toMicros, limit);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.cutting;
    this.logReader.close();
    await this.index.close();
  }

  /** At close, after the log is durable: cut what is left, so the next open replays little. */
  async cutEverything(): Promise<void> {
    await this.cutting;
    const through = this.volume.appendedSequence;
    if (this.failure === null && through > this.index.mappedThroughSequence) await this.index.cut(through).catch(() => undefined);
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
