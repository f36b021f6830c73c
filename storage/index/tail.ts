// The tail of the index: the records appended since the last cut, in memory and in log order,
// and the rule that decides when they are cut into a window (docs/formats/delta-map.md, "What a
// map is"). Bounded: a window is due at windowRecordsMax records, so the history cuts it soon.

import { assert } from '../errors.js';
import { indexLimits } from '../limits.js';
import type { LogPosition } from '../write-log/batch.js';
import { flattenRecords, type Extent } from './extents.js';
import type { MapInfo, SnapshotRecord, WindowRecord } from './map-keys.js';

/** One record as the index is told of it, in log order. */
export interface IndexedRecord {
  sequence: number;
  timestampMicros: number;
  /** 'data' and 'zeroes' (zeroes and trims) change data; 'mark' and 'other' do not. */
  change: 'data' | 'zeroes' | 'mark' | 'other';
  offsetBytes: number;
  lengthBytes: number;
  position: LogPosition;
  encodedBytes: number;
  /** Data records: the log holds the payload compressed. */
  compressed: boolean;
  /** Marks: their JSON payload (snapshots are registered from it). */
  markPayload?: Buffer;
}

/** Where a window must end besides its size and age: the first boundary strictly after a time (a tier point), or null. */
export type WindowBoundary = (micros: number) => number | null;

export class Tail {
  /** The data-changing records, in log order. */
  readonly records: WindowRecord[] = [];
  /** Where the log continues after each record of the tail, and its time, for cuts before its end. */
  private readonly ends: Array<{ sequence: number; nextPosition: LogPosition; micros: number }> = [];
  firstMicros = 0;
  lastMicros = 0;
  lastSequence: number;
  nextPosition: LogPosition;
  /** Snapshots made (or deleted) in the tail, written with the next cut. */
  readonly snapshots = new Map<string, SnapshotRecord | null>();
  /** Updates (pin, expiry) of snapshots already cut, applied to the database with the next cut. */
  readonly pendingUpdates = new Map<string, SnapshotMark>();
  private cutRequestedThrough = 0;

  constructor(lastSequence: number, nextPosition: LogPosition) {
    this.lastSequence = lastSequence;
    this.nextPosition = nextPosition;
  }

  /** Records of every kind held (marks too): what the tail's memory grows with. */
  get heldRecordCount(): number {
    return this.ends.length;
  }

  /** Take one record, in log order. */
  note(record: IndexedRecord): void {
    assert(record.sequence === this.lastSequence + 1, `records reach the index in order (${record.sequence} after ${this.lastSequence})`);
    this.lastSequence = record.sequence;
    this.nextPosition = { segmentNumber: record.position.segmentNumber, offsetBytes: record.position.offsetBytes + record.encodedBytes };
    this.ends.push({ sequence: record.sequence, nextPosition: this.nextPosition, micros: record.timestampMicros });
    if (this.firstMicros === 0) this.firstMicros = record.timestampMicros;
    this.lastMicros = record.timestampMicros;
    if (record.change === 'data' || record.change === 'zeroes') {
      this.records.push({
        micros: record.timestampMicros,
        startBytes: record.offsetBytes,
        lengthBytes: record.lengthBytes,
        source: {
          sequence: record.sequence,
          hasData: record.change === 'data',
          compressed: record.compressed,
          segmentNumber: record.position.segmentNumber,
          recordOffsetBytes: record.position.offsetBytes,
          volumeOffsetBytes: record.offsetBytes,
        },
      });
    } else if (record.change === 'mark' && record.markPayload !== undefined) {
      this.noteMark(record, record.markPayload);
    }
  }

  private noteMark(record: IndexedRecord, payload: Buffer): void {
    let event: { event?: string; name?: string; note?: string; pinned?: boolean; expiresMicros?: number };
    try {
      event = JSON.parse(payload.toString('utf8')) as typeof event;
    } catch {
      return;
    }
    if (typeof event.name !== 'string') return;
    if (event.event === 'snapshot') {
      this.snapshots.set(event.name, snapshotOfMark(event as SnapshotMark, record.sequence, record.timestampMicros));
      this.cutRequestedThrough = record.sequence; // a snapshot's instant is the end of a window
    } else if (event.event === 'snapshot-deleted') {
      this.snapshots.set(event.name, null);
    } else if (event.event === 'snapshot-updated') {
      // Known to the tail, or to the database (then the history passes it on: updateSnapshot).
      const existing = this.snapshots.get(event.name);
      if (existing !== undefined && existing !== null) this.snapshots.set(event.name, applySnapshotUpdate(existing, event as SnapshotMark));
      else this.pendingUpdates.set(event.name, event as SnapshotMark);
    }
  }

  /**
   * Should a window be cut now? Returns the last sequence to cut through, or 0. A window takes at
   * most windowRecordsMax records however far the tail has grown, ends at a snapshot mark, and
   * ends before the first record past a boundary (a tier point), so every tier point is a window's end.
   */
  cutDue(nowMicros: number, mappedThroughSequence: number, boundary: WindowBoundary | null): number {
    if (this.lastSequence <= mappedThroughSequence) return 0;
    const full = this.records.length >= indexLimits.windowRecordsMax;
    let capped = full ? this.records[indexLimits.windowRecordsMax - 1]!.source.sequence : this.lastSequence;
    const boundaryMicros = boundary === null || this.firstMicros === 0 ? null : boundary(this.firstMicros);
    if (boundaryMicros !== null) {
      const past = this.records.findIndex((record) => record.micros >= boundaryMicros);
      if (past >= 0) {
        capped = Math.min(capped, this.records[past]!.source.sequence - 1);
        if (capped > mappedThroughSequence) return capped;
      } else if (nowMicros >= boundaryMicros) {
        return capped; // the boundary has passed: the window ends at it
      }
    }
    if (this.cutRequestedThrough > mappedThroughSequence) return Math.min(this.cutRequestedThrough, capped);
    if (full) return capped;
    if (this.firstMicros > 0 && nowMicros - this.firstMicros >= indexLimits.windowAgeMicrosMax) return capped;
    return 0;
  }

  /**
   * The data-changing records through `throughSequence`, where the log continues after it, and
   * the times of the first and last record taken of any kind (a window of marks only is dated by them).
   */
  takeThrough(throughSequence: number): { records: WindowRecord[]; nextPosition: LogPosition; firstMicros: number; lastMicros: number } {
    assert(throughSequence <= this.lastSequence, 'a cut takes records the index has seen');
    const end = this.ends.find((candidate) => candidate.sequence === throughSequence);
    assert(end !== undefined, `the tail knows where record ${throughSequence} ends`);
    return { records: this.records.slice(0, countThrough(this.records, throughSequence)), nextPosition: end.nextPosition, firstMicros: this.ends[0]!.micros, lastMicros: end.micros };
  }

  /** Forget what a cut through `throughSequence` wrote to the database. */
  dropThrough(throughSequence: number, snapshotsCut: readonly string[]): void {
    this.records.splice(0, countThrough(this.records, throughSequence));
    this.ends.splice(0, this.ends.findIndex((end) => end.sequence === throughSequence) + 1);
    for (const name of snapshotsCut) this.snapshots.delete(name);
    this.firstMicros = this.records[0]?.micros ?? 0;
  }

  /** The extents of the tail's records up to `sequence`, newest winning. */
  extentsUpTo(sequence: number): Extent[] {
    return flattenRecords(this.records.filter((record) => record.source.sequence <= sequence));
  }

  /** The tail as one more window would summarise it (for the timeline). */
  summary(mappedThroughSequence: number): MapInfo {
    return {
      firstSequence: mappedThroughSequence + 1,
      lastSequence: this.lastSequence,
      firstMicros: this.firstMicros,
      lastMicros: this.lastMicros,
      recordCount: this.records.length,
      dataBytes: this.records.reduce((sum, record) => sum + (record.source.hasData ? record.lengthBytes : 0), 0),
      extentCount: 0,
    };
  }
}

/** How many of the records (in log order) have a sequence at or before `throughSequence`. */
export function countThrough(records: readonly WindowRecord[], throughSequence: number): number {
  let count = 0;
  while (count < records.length && records[count]!.source.sequence <= throughSequence) count++;
  return count;
}

/** A snapshot mark's JSON payload (docs/formats/write-log.md, kind 4). */
export interface SnapshotMark {
  event: 'snapshot' | 'snapshot-updated' | 'snapshot-deleted';
  name: string;
  note?: string;
  pinned?: boolean;
  expiresMicros?: number;
}

export function snapshotOfMark(mark: SnapshotMark, sequence: number, micros: number): SnapshotRecord {
  return { name: mark.name, sequence, micros, note: mark.note ?? '', pinned: mark.pinned === true, expiresMicros: mark.expiresMicros ?? 0 };
}

/** A snapshot with the pin and expiry an update mark sets (what it leaves out stays). */
export function applySnapshotUpdate(snapshot: SnapshotRecord, mark: SnapshotMark): SnapshotRecord {
  return { ...snapshot, ...(mark.pinned === undefined ? {} : { pinned: mark.pinned }), ...(mark.expiresMicros === undefined ? {} : { expiresMicros: mark.expiresMicros }) };
}
