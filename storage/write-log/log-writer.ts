// The write-log buffer and the sequential log behind it (DESIGN.md "Write-log buffer").
//
// Records are appended to the filling batch in memory, in sequence order. A batch is written
// out with one write per segment it touches when it is big enough, a few milliseconds old, or
// when a FLUSH/FUA waits for it; one batch is on its way to the kernel while the next one fills
// (double buffering). Once a batch is in the kernel (and its regions are marked in the DRL) the
// owner applies it to the live image; until then the batch answers reads for what it wrote.
//
// Durability is separate: fdatasync runs only when someone waits for it (FLUSH, FUA, the region
// cleaner), and one sync covers everything written before it started (group commit).
//
// A failed log write or sync is sticky: the writer refuses every later append and sync, so
// nothing that may be missing from the log is ever acknowledged as durable.

import { StorageError, assert, storageErrorFromSystem } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import { storageLimits } from '../limits.js';
import type { MicrosecondClock } from '../clock.js';
import { Batch, type AppendedRecord, type LogPosition } from './batch.js';
import { RecordFlag, RecordKind, encodeRecordHeader, recordHeaderBytes } from './record.js';
import { PayloadEncoder, type EncodedPayload } from './payload-codec.js';
import { LogAppender } from './log-appender.js';
import { createSegment, logBlockBytes, segmentHeaderBytes, type OpenSegment } from './segment.js';
import { SegmentFiller } from './segment-filler.js';
import { SpareSegment } from './spare-segment.js';

export interface LogWriterHooks {
  /** A batch was sealed; the returned promise must settle before the batch may be applied. */
  onBatchSealed(batch: Batch): Promise<void>;
  /** A batch is in the log (in the kernel, not yet necessarily durable): apply it to the live image. */
  onBatchWritten(batch: Batch): Promise<void>;
  /** The writer failed for good (already recorded as its sticky failure). */
  onFailure(error: StorageError): void;
  /**
   * The next segment found no room: expire history to make some (the journal-full policy).
   * Resolves true when room may have been made (the segment is tried again), false when nothing
   * is left to expire (the write fails with ENOSPC). Absent: the write fails at once.
   */
  makeRoom?(): Promise<boolean>;
}

export interface LogWriterOptions {
  fileSystem: FileSystem;
  logDirectory: string;
  volumeId: Buffer;
  segmentSizeBytes: number;
  clock: MicrosecondClock;
  /** The segment appends continue in, and where in it. */
  currentSegment: OpenSegment;
  appendOffsetBytes: number;
  nextSequence: number;
  hooks: LogWriterHooks;
  /** Compresses data payloads (or, built without a codec, stores them as written). */
  encoder: PayloadEncoder;
}

interface SyncWaiter {
  sequence: number;
  resolve: () => void;
  reject: (error: StorageError) => void;
}

const spareRetryDelayMs = 1000;

export class LogWriter {
  private readonly options: LogWriterOptions;
  private readonly hooks: LogWriterHooks;
  private filling = new Batch();
  /** Full batches waiting for the one in flight, in order. */
  private readonly sealed: Batch[] = [];
  /** The batch being written to the kernel. */
  private inFlight: Batch | null = null;
  /** Batches written to the kernel, waiting (in order) for their DRL marks, then applied. */
  private readonly awaitingApply: Array<{ batch: Batch; marking: Promise<void> }> = [];
  private applying = false;
  /** Segments holding written records not yet synced. */
  private readonly unsyncedSegments = new Set<OpenSegment>();
  private syncing = false;
  private currentSegment: OpenSegment;
  private appendOffsetBytes: number;
  private nextSequence: number;
  private spare: SpareSegment | null = null;
  /** A request for room (makeRoom) in progress, shared by every writer waiting for the spare. */
  private roomMaking: Promise<void> | null = null;
  private readonly appender: LogAppender;
  /** Zero-fillers of the current segment and of the spare, by segment number. */
  private readonly fillers = new Map<number, SegmentFiller>();
  /** Segments appends have moved past, closed once their last record is durable. */
  private readonly retiring: Array<{ segment: OpenSegment; lastSequence: number }> = [];
  private readonly syncWaiters: SyncWaiter[] = [];
  private roomWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  private syncRequestedSequence = 0;
  private writtenSequenceValue: number;
  private durableSequenceValue: number;
  private unappliedBytesValue = 0;
  private batchTimer: NodeJS.Timeout | null = null;
  private failure: StorageError | null = null;
  private closing = false;

  constructor(options: LogWriterOptions) {
    assert(options.appendOffsetBytes >= segmentHeaderBytes, 'appends start after the segment header');
    this.options = options;
    this.hooks = options.hooks;
    this.currentSegment = options.currentSegment;
    this.appendOffsetBytes = options.appendOffsetBytes;
    this.nextSequence = options.nextSequence;
    this.writtenSequenceValue = options.nextSequence - 1;
    this.durableSequenceValue = options.nextSequence - 1;
    this.appender = LogAppender.resume(options.fileSystem, options.logDirectory, options.currentSegment, options.appendOffsetBytes);
    this.startFiller(options.currentSegment);
    this.prepareSpare();
  }

  /** Sequence number of the last record appended (0 before the first). */
  get appendedSequence(): number {
    return this.nextSequence - 1;
  }

  /** Where the next record goes. */
  get appendPosition(): LogPosition {
    return { segmentNumber: this.currentSegment.segmentNumber, offsetBytes: this.appendOffsetBytes };
  }

  /** Every record up to this sequence number has been handed to the kernel (and applied). */
  get writtenSequence(): number {
    return this.writtenSequenceValue;
  }

  /** Every record up to this sequence number is durable in the log. */
  get durableSequence(): number {
    return this.durableSequenceValue;
  }

  get unappliedBytes(): number {
    return this.unappliedBytesValue;
  }

  get failed(): StorageError | null {
    return this.failure;
  }

  /** Batches not yet applied to the live image, oldest first (for the read overlay). */
  unappliedBatches(): Batch[] {
    const batches: Batch[] = this.awaitingApply.map((entry) => entry.batch);
    if (this.inFlight !== null) batches.push(this.inFlight);
    batches.push(...this.sealed);
    if (!this.filling.isEmpty) batches.push(this.filling);
    return batches;
  }

  /**
   * Can a record of recordBytes be appended now? Returns null if so; otherwise a promise to wait
   * on before asking again. Throws when it never can (failed writer, no space for the log).
   */
  admit(recordBytes: number): Promise<void> | null {
    this.throwIfUnusable();
    const overBudget = this.unappliedBytesValue > 0 && this.unappliedBytesValue + recordBytes > storageLimits.unappliedBytesMax;
    if (overBudget) return this.waitForRoom();
    if (this.appendOffsetBytes + recordBytes <= this.currentSegment.sizeBytes) return null;
    return this.spareReadiness();
  }

  /**
   * Append one record to the filling batch. The caller has been admitted for its size. Returns
   * the record with its sequence number and position; the data stays readable through the
   * batch until it is applied.
   */
  append(kind: RecordKind, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null): AppendedRecord {
    this.throwIfUnusable();
    // The stored size must be known here: it fixes where the next record goes.
    const stored: EncodedPayload =
      kind === RecordKind.data && payload !== null
        ? this.options.encoder.encode(payload)
        : { flags: 0, pieces: payload === null ? [] : [payload], storedBytes: payload?.length ?? 0 };
    const compressed = stored.flags === RecordFlag.snappy;
    const recordBytes = recordHeaderBytes + stored.storedBytes;
    if (this.appendOffsetBytes + recordBytes > this.currentSegment.sizeBytes) this.switchSegment();
    const segment = this.currentSegment;
    const recordOffsetBytes = this.appendOffsetBytes;
    this.appendOffsetBytes += recordBytes;

    const header = {
      kind,
      flags: flags | stored.flags,
      sequence: this.nextSequence++,
      timestampMicros: this.options.clock.now(),
      offsetBytes,
      lengthBytes,
      payloadBytes: stored.storedBytes,
    };
    const batch = this.filling;
    let data: Buffer | null = null;
    if (stored.storedBytes <= storageLimits.slabCopyPayloadBytesMax) {
      const encoded = batch.allocate(recordBytes);
      encodeRecordHeader(encoded, 0, header, stored.pieces);
      let at = recordHeaderBytes;
      for (const piece of stored.pieces) at += piece.copy(encoded, at);
      batch.place(segment, recordOffsetBytes, encoded);
      data = payload === null ? null : compressed ? copyOf(payload, batch.allocateData(payload.length)) : encoded.subarray(recordHeaderBytes);
    } else {
      // Large payloads are referenced, not copied: the data as written, or the encoder's own buffers.
      const encodedHeader = batch.allocate(recordHeaderBytes);
      encodeRecordHeader(encodedHeader, 0, header, stored.pieces);
      batch.place(segment, recordOffsetBytes, encodedHeader);
      let at = recordOffsetBytes + recordHeaderBytes;
      for (const piece of stored.pieces) {
        batch.place(segment, at, piece);
        at += piece.length;
      }
      data = payload;
    }
    const record: AppendedRecord = {
      sequence: header.sequence,
      kind,
      flags: header.flags,
      timestampMicros: header.timestampMicros,
      offsetBytes,
      lengthBytes,
      data: kind === RecordKind.data ? data : null,
      position: { segmentNumber: segment.segmentNumber, offsetBytes: recordOffsetBytes },
      encodedBytes: recordBytes,
      heldBytes: recordBytes + (compressed ? lengthBytes : 0),
    };
    batch.addRecord(record);
    this.unappliedBytesValue += record.heldBytes;
    // A full batch is sealed even while another is in flight, so batches stay small enough to
    // be written, applied and released step by step.
    if (batch.accountedBytes >= storageLimits.batchMaxBytes) this.sealFilling();
    this.scheduleBatch();
    return record;
  }

  /** Resolves once every record up to sequence is durable; rejects if the log failed. */
  syncThrough(sequence: number): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (sequence <= this.durableSequenceValue) return Promise.resolve();
    assert(sequence <= this.appendedSequence, 'cannot wait for a record not yet appended');
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ sequence, resolve, reject });
      if (sequence > this.syncRequestedSequence) this.syncRequestedSequence = sequence;
      this.startBatchIfDue();
      this.startSyncIfWanted();
    });
  }

  /** Resolves once everything appended so far is durable. */
  syncAll(): Promise<void> {
    return this.syncThrough(this.appendedSequence);
  }

  /** Resolves when every record appended so far is written and applied (or the writer failed). */
  drained(): Promise<void> {
    if (this.isDrained()) return Promise.resolve();
    const waiting = new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    if (this.failure === null && this.appendedSequence > this.syncRequestedSequence) {
      this.syncRequestedSequence = this.appendedSequence;
      this.startBatchIfDue();
    }
    return waiting;
  }

  /** Write out, apply and sync everything, then close the segments. Appends are refused afterwards. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.drained();
    if (this.failure === null) await this.syncAll().catch(() => undefined);
    this.clearBatchTimer();
    for (const waiter of this.roomWaiters) waiter();
    this.roomWaiters = [];
    await this.spare?.ready;
    await Promise.all([...this.fillers.values()].map((filler) => filler.stop()));
    this.spare?.segment?.handle.close();
    for (const { segment } of this.retiring) segment.handle.close();
    this.currentSegment.handle.close();
  }

  private isDrained(): boolean {
    return (
      this.failure !== null ||
      (this.inFlight === null && this.sealed.length === 0 && this.awaitingApply.length === 0 && this.filling.isEmpty)
    );
  }

  private wakeDrainWaitersIfDrained(): void {
    if (!this.isDrained()) return;
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const wake of waiters) wake();
  }

  private throwIfUnusable(): void {
    if (this.failure !== null) throw this.failure;
    if (this.closing) throw new StorageError('ESHUTDOWN', 'the write log is closing');
  }

  private waitForRoom(): Promise<void> {
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  private wakeRoomWaiters(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const wake of waiters) wake();
  }

  private scheduleBatch(): void {
    if (this.inFlight !== null) return; // the batch in flight starts the next one when it lands
    if (this.sealed.length > 0 || this.filling.accountedBytes >= storageLimits.batchTargetBytes) {
      this.startBatchIfDue();
    } else if (this.batchTimer === null) {
      this.batchTimer = setTimeout(() => {
        this.batchTimer = null;
        this.startBatchIfDue();
      }, storageLimits.batchDelayMs);
    }
  }

  private clearBatchTimer(): void {
    if (this.batchTimer !== null) {
      clearTimeout(this.batchTimer);
      this.batchTimer = null;
    }
  }

  private isDue(batch: Batch): boolean {
    return (
      this.closing ||
      this.syncRequestedSequence >= batch.firstSequence ||
      batch.accountedBytes >= storageLimits.batchTargetBytes ||
      performance.now() - batch.createdAtMs >= storageLimits.batchDelayMs
    );
  }

  private startBatchIfDue(): void {
    if (this.inFlight !== null || this.failure !== null) return;
    if (this.sealed.length === 0) {
      if (this.filling.isEmpty) return;
      if (!this.isDue(this.filling)) {
        this.scheduleBatch();
        return;
      }
      this.sealFilling();
    }
    this.clearBatchTimer();
    const batch = this.sealed.shift()!;
    this.inFlight = batch;
    void this.writeBatch(batch);
  }

  private sealFilling(): void {
    const batch = this.filling;
    if (batch.isEmpty) return;
    this.filling = new Batch();
    batch.seal();
    this.sealed.push(batch);
  }

  /** One batch from memory to the kernel; then it queues to be applied to the live image. */
  private async writeBatch(batch: Batch): Promise<void> {
    const marking = this.hooks.onBatchSealed(batch);
    marking.catch(() => undefined); // observed in applyWrittenBatches
    // A FLUSH/FUA waiting for this batch, with nothing else unsynced: write it durably in one
    // step (RWF_DSYNC) instead of a write and then an fdatasync.
    const durable =
      this.unsyncedSegments.size === 0 &&
      !this.syncing &&
      batch.runs.length === 1 &&
      this.syncWaiters.some((waiter) => waiter.sequence >= batch.firstSequence && waiter.sequence <= batch.lastSequence);
    try {
      for (const run of batch.runs) {
        await this.fillers.get(run.segment.segmentNumber)?.clear(run.startOffsetBytes - logBlockBytes, run.startOffsetBytes + run.lengthBytes);
        await this.appender.write(run, durable);
      }
    } catch (error) {
      this.fail(storageErrorFromSystem(error, 'writing the write log'));
      return;
    }
    this.writtenSequenceValue = batch.lastSequence;
    if (durable) {
      this.durableSequenceValue = batch.lastSequence;
      this.resolveSyncWaiters();
      this.closeRetiredSegments();
    } else {
      for (const run of batch.runs) this.unsyncedSegments.add(run.segment);
    }
    this.inFlight = null;
    this.awaitingApply.push({ batch, marking });
    this.startSyncIfWanted();
    void this.applyWrittenBatches();
    this.startBatchIfDue();
  }

  /** Apply written batches in log order, each once its regions are durably marked. */
  private async applyWrittenBatches(): Promise<void> {
    if (this.applying) return;
    this.applying = true;
    while (this.awaitingApply.length > 0 && this.failure === null) {
      const { batch, marking } = this.awaitingApply[0]!;
      try {
        await marking;
      } catch (error) {
        this.fail(storageErrorFromSystem(error, 'marking dirty regions'));
        break;
      }
      await this.hooks.onBatchWritten(batch);
      this.awaitingApply.shift();
      this.unappliedBytesValue -= batch.accountedBytes;
      this.wakeRoomWaiters();
    }
    this.applying = false;
    this.wakeDrainWaitersIfDrained();
  }

  /** Group commit: one fdatasync per segment covers every record written before it started. */
  private startSyncIfWanted(): void {
    if (this.syncing || this.failure !== null) return;
    const wanted = this.syncWaiters[0];
    if (wanted === undefined || wanted.sequence > this.writtenSequenceValue) return;
    this.syncing = true;
    void this.syncWritten();
  }

  private async syncWritten(): Promise<void> {
    const throughSequence = this.writtenSequenceValue;
    const segments = [...this.unsyncedSegments];
    this.unsyncedSegments.clear();
    try {
      for (const segment of segments) await segment.handle.datasync();
    } catch (error) {
      this.syncing = false;
      this.fail(storageErrorFromSystem(error, 'syncing the write log'));
      return;
    }
    this.durableSequenceValue = Math.max(this.durableSequenceValue, throughSequence);
    this.resolveSyncWaiters();
    this.closeRetiredSegments();
    this.syncing = false;
    this.startSyncIfWanted();
  }

  private resolveSyncWaiters(): void {
    let resolved = 0;
    while (resolved < this.syncWaiters.length && this.syncWaiters[resolved]!.sequence <= this.durableSequenceValue) {
      this.syncWaiters[resolved]!.resolve();
      resolved++;
    }
    if (resolved > 0) this.syncWaiters.splice(0, resolved);
  }

  private fail(error: StorageError): void {
    if (this.failure !== null) return;
    this.failure = new StorageError('EIO', `the write log failed; the volume refuses writes until restart: ${error.message}`, {
      cause: error,
    });
    this.clearBatchTimer();
    for (const waiter of this.syncWaiters) waiter.reject(this.failure);
    this.syncWaiters.length = 0;
    this.wakeRoomWaiters();
    this.wakeDrainWaitersIfDrained();
    this.hooks.onFailure(this.failure);
  }

  private switchSegment(): void {
    const spare = this.spare;
    assert(spare !== null && spare.segment !== null, 'switching segments needs the spare to be ready (admit first)');
    this.retiring.push({ segment: this.currentSegment, lastSequence: this.appendedSequence });
    const retired = this.currentSegment;
    this.currentSegment = spare.segment;
    this.appendOffsetBytes = segmentHeaderBytes;
    this.spare = null;
    void this.fillers.get(retired.segmentNumber)?.stop();
    this.fillers.delete(retired.segmentNumber);
    this.prepareSpare();
  }

  private closeRetiredSegments(): void {
    while (this.retiring.length > 0 && this.retiring[0]!.lastSequence <= this.durableSequenceValue) {
      this.retiring.shift()!.segment.handle.close();
    }
  }

  private prepareSpare(): void {
    const { fileSystem, logDirectory, volumeId, segmentSizeBytes, clock } = this.options;
    const segmentNumber = this.currentSegment.segmentNumber + 1;
    this.spare = new SpareSegment(async () => {
      const segment = await createSegment(fileSystem, logDirectory, { segmentNumber, segmentSizeBytes, volumeId, createdMicros: clock.now() });
      if (this.closing) {
        segment.handle.close();
        throw new StorageError('ESHUTDOWN', 'the write log closed while its next segment was being prepared');
      }
      this.startFiller(segment);
      return segment;
    });
  }

  /** Zero-fill a segment ahead of the appends (segment-filler.ts). */
  private startFiller(segment: OpenSegment): void {
    const appendOffset = (): number | null => (segment === this.currentSegment ? this.appendOffsetBytes : null);
    const onFailure = (error: unknown): void => this.fail(storageErrorFromSystem(error, 'zero-filling a write-log segment'));
    this.fillers.set(segment.segmentNumber, new SegmentFiller(segment, appendOffset, storageLimits.segmentZeroFillBytesPerSecond, onFailure));
  }

  /** Null when the spare is ready; a promise while it is being prepared; throws if it cannot be. */
  private spareReadiness(): Promise<void> | null {
    const spare = this.spare;
    assert(spare !== null, 'a spare segment is always prepared or being prepared');
    if (spare.segment !== null) return null;
    if (spare.error === null) return spare.ready;
    if (spare.error.code === 'ENOSPC' && this.hooks.makeRoom !== undefined) return this.makeRoomForSpare(spare.error);
    if (performance.now() - spare.attemptedAtMs < spareRetryDelayMs) throw spare.error;
    this.prepareSpare();
    return this.spare!.ready;
  }

  /** Ask for room (once for every writer waiting), then prepare the spare again; ENOSPC when none can be made. */
  private makeRoomForSpare(error: StorageError): Promise<void> {
    this.roomMaking ??= (async () => {
      try {
        const attemptedAtMs = this.spare!.attemptedAtMs;
        // Nothing left to expire: the disk may still free up by itself (try again after the delay).
        if (!(await this.hooks.makeRoom!()) && performance.now() - attemptedAtMs < spareRetryDelayMs) throw error;
        this.prepareSpare();
        await this.spare!.ready;
      } finally {
        this.roomMaking = null;
      }
    })();
    return this.roomMaking;
  }
}

function copyOf(source: Buffer, target: Buffer): Buffer {
  source.copy(target);
  return target;
}
