// A protected volume: the live image plus the write log, the write-log buffer and the dirty
// region log around it (DESIGN.md "One volume on disk", the seed patent's Figures 5-6).
//
// The write path, front half (per request, in `logWrite`):
//   1. admission: wait for room in the write-log buffer and a ready log segment;
//   2. append the record (sequence number, time, CRC32C) to the write-log buffer; from this
//      moment reads see it, through the buffer;
//   3. FUA: wait until the record is durable in the log (group commit), then reply.
// The back half, per batch of records (in the log writer, `markRegions` / `applyBatch`):
//   4. the batch is written to the log, while the dirty region log durably marks the regions
//      it touches (in parallel);
//   5. then the records are applied to the live image, in log order.
// So the live image never holds a write the log has not been given first. A process crash
// (kill -9) keeps both in the page cache: replaying the log after the DRL checkpoint makes them
// equal. A machine crash may lose unsynced pages of either, but only in dirty regions: recovery
// then also logs what those regions hold (recovery.ts).

import { MicrosecondClock } from './clock.js';
import { DirtyRegionLog, defaultRegionSizeBytes } from './dirty-region-log.js';
import { StorageError, assert, storageErrorFromSystem } from './errors.js';
import type { FileSystem } from './io/file-system.js';
import { nodeFileSystem } from './io/node-file-system.js';
import { storageLimits } from './limits.js';
import { PrimaryImage } from './primary-image.js';
import { recoverVolume, type RecoveryReport } from './recovery.js';
import { describeQuarantine, markQuarantineAsDamage, readQuarantineReports, type QuarantineReport } from './quarantine.js';
import type { AllocationStatus, BlockDevice, BlockDeviceCapabilities, ContextExtent, WriteOptions, ZeroOptions } from './block-device.js';
import { VolumeHistory, type HistoryVolume } from './point-in-time/history.js';
import type { IndexDatabaseFactory } from './index/map-store.js';
import { dirtyBitmapContext } from './point-in-time/dirty-bitmap.js';
import {
  newVolumeId,
  readVolumeConfig,
  upgradeVolumeConfig,
  volumeFormatVersion,
  volumePaths,
  writeVolumeConfig,
  type VolumeConfig,
  type VolumePaths,
} from './volume-config.js';
import { applyRecordToRange, type AppendedRecord, type Batch, type LogPosition } from './write-log/batch.js';
import { LogWriter } from './write-log/log-writer.js';
import { PayloadEncoder, isAllZero } from './write-log/payload-codec.js';
import { snappyCodec } from './write-log/snappy.js';
import { RecordFlag, RecordKind, changesData, recordHeaderBytes } from './write-log/record.js';
import { createSegment, listSegments, openSegment, segmentHeaderBytes } from './write-log/segment.js';
import { defaultRetentionPolicy, type RetentionPolicy } from './retention/policy.js';
import { changeRetentionPolicy, type RetentionPolicyChanges } from './retention/policy-changes.js';
import { RetentionPolicyFile, type RetentionPolicyListener } from './retention/policy-file.js';

export interface CreateVolumeOptions {
  name: string;
  sizeBytes: number;
  regionSizeBytes?: number;
  segmentSizeBytes?: number;
  /** Changes to the default retention policy (defaultRetentionPolicy) the volume starts with. */
  retention?: RetentionPolicyChanges;
}

export interface OpenVolumeOptions {
  /**
   * Keep the delta-map index (points in time, snapshots, changed-block tracking). On by default
   * on the real file system, or when indexDatabase is given; the index lives in LevelDB, which a
   * simulated file system cannot host.
   */
  history?: boolean;
  /** The index's database (default: LevelDB in the volume's index folder); tests give another abstract-level one. */
  indexDatabase?: IndexDatabaseFactory;
  /** How data records are stored in the log: Snappy-compressed where it pays (the default), or as written. */
  logCompression?: LogCompression;
}

export type LogCompression = 'snappy' | 'off';

export interface VolumeStatistics {
  writeCount: number;
  writeBytes: number;
  zeroCount: number;
  trimCount: number;
  readCount: number;
  readBytes: number;
  flushCount: number;
  appendedSequence: number;
  durableSequence: number;
  appliedSequence: number;
  unappliedBytes: number;
  dirtyRegionCount: number;
  /** Bytes of log up to the append position (segments are preallocated: disk use is whole segments). */
  logBytes: number;
  failed: string | null;
}

/** Upper bounds (seconds) of the flush latency histogram's buckets. */
const flushLatencyBucketsSeconds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];


export class Volume implements BlockDevice {
  readonly config: VolumeConfig;
  readonly paths: VolumePaths;
  /** The file system the volume's files live on (verification reads its log through it). */
  readonly fileSystem: FileSystem;
  readonly readOnly = false;
  readonly capabilities: BlockDeviceCapabilities = {
    flush: true,
    fua: true,
    trim: true,
    writeZeroes: true,
    fastZero: true,
    cache: true,
    multiConnection: true,
  };
  /** What recovery found and did when this volume was opened. */
  readonly recovery: RecoveryReport;

  /** Points in time, snapshots and changed-block tracking; null when opened without them. */
  history: VolumeHistory | null = null;
  private readonly retention: RetentionPolicyFile;
  private readonly primary: PrimaryImage;
  private readonly drl: DirtyRegionLog;
  private readonly log: LogWriter;
  /** The oldest log segment on disk (expiry deletes older ones: segmentsDeleted). */
  private firstSegmentNumber: number;
  private appliedSequence: number;
  private appliedPosition: LogPosition;
  private appliedTimestampMicros: number;
  /** Checkpoint of the previous cleaning: regions idle since then are cleaned next time. */
  private previousCheckpointSequence: number;
  /** Durable records the live image failed to take; reads still see them (volume is failed). */
  private readonly strandedRecords: AppendedRecord[] = [];
  private failure: StorageError | null = null;
  /** What recoveries (this one and earlier ones) kept in quarantine/ (storage/quarantine.ts). */
  private quarantineReports: QuarantineReport[] = [];
  /** Set while a quarantine holds damage: writes and marks are refused. */
  private quarantineDamage: StorageError | null = null;
  /** The index holds records the log lost to damage: the volume must append nothing. */
  private indexAheadOfLog = false;
  /** Regions to log from the live image before the next write (recovery step 5). */
  private pendingResyncRegions: readonly number[];
  private resyncAttempt: Promise<number> | null = null;
  private cleaningTimer: NodeJS.Timeout | null = null;
  private cleaning: Promise<void> | null = null;
  private closed: Promise<void> | null = null;
  /** The last append found no room for the log (ENOSPC), and none has been taken since. */
  private refusingWritesForSpace = false;
  private readonly statistics = { writeCount: 0, writeBytes: 0, zeroCount: 0, trimCount: 0, readCount: 0, readBytes: 0, flushCount: 0 };
  private readonly flushLatencyCounts = new Array<number>(flushLatencyBucketsSeconds.length + 1).fill(0);
  private flushLatencySumSeconds = 0;

  private constructor(parts: {
    config: VolumeConfig;
    paths: VolumePaths;
    primary: PrimaryImage;
    drl: DirtyRegionLog;
    recovery: RecoveryReport;
    clock: MicrosecondClock;
    fileSystem: FileSystem;
    retention: RetentionPolicyFile;
    logCompression: LogCompression;
  }) {
    this.config = parts.config;
    this.retention = parts.retention;
    this.paths = parts.paths;
    this.fileSystem = parts.fileSystem;
    this.primary = parts.primary;
    this.drl = parts.drl;
    this.recovery = parts.recovery;
    this.pendingResyncRegions = parts.recovery.resyncRegions;
    const checkpoint = parts.drl.checkpoint;
    this.firstSegmentNumber = listSegments(parts.fileSystem, parts.paths.log)[0] ?? checkpoint.position.segmentNumber;
    this.appliedSequence = checkpoint.sequence;
    this.appliedPosition = checkpoint.position;
    this.appliedTimestampMicros = checkpoint.timestampMicros;
    this.previousCheckpointSequence = checkpoint.sequence;
    const segment = openSegment(parts.fileSystem, parts.paths.log, checkpoint.position.segmentNumber, 'append');
    this.log = new LogWriter({
      fileSystem: parts.fileSystem,
      logDirectory: parts.paths.log,
      volumeId: Buffer.from(parts.config.volumeId, 'hex'),
      segmentSizeBytes: parts.config.segmentSizeBytes,
      clock: parts.clock,
      currentSegment: segment,
      appendOffsetBytes: checkpoint.position.offsetBytes,
      nextSequence: checkpoint.sequence + 1,
      encoder: new PayloadEncoder(parts.logCompression === 'snappy' ? snappyCodec() : null, { recordBytesMin: storageLimits.logCompressRecordBytesMin }),
      hooks: {
        onBatchSealed: (batch) => this.markRegions(batch),
        onBatchWritten: (batch) => this.applyBatch(batch),
        onFailure: (error) => this.fail(error),
        makeRoom: async () => (this.history === null ? false : this.history.lifecycle.makeRoom()),
        beforeNewSegment: async () => this.history?.lifecycle.beforeNewSegment(),
      },
    });
    this.scheduleCleaning();
  }

  /** Create a new, empty volume in `directory` (which must not exist) and make it durable. */
  static async create(directory: string, options: CreateVolumeOptions, fileSystem: FileSystem = nodeFileSystem): Promise<VolumeConfig> {
    const paths = volumePaths(directory);
    const config: VolumeConfig = {
      formatVersion: volumeFormatVersion,
      name: options.name,
      volumeId: newVolumeId(),
      sizeBytes: options.sizeBytes,
      regionSizeBytes:
        options.regionSizeBytes ?? defaultRegionSizeBytes(options.sizeBytes, storageLimits.regionSizeBytesDefault, storageLimits.regionCountMax),
      segmentSizeBytes: options.segmentSizeBytes ?? storageLimits.segmentSizeBytesDefault,
      createdMicros: new MicrosecondClock().now(),
    };
    assertGeometry(config);
    fileSystem.mkdirp(paths.log);
    await PrimaryImage.create(fileSystem, paths.primary, config.sizeBytes);
    const firstSegment = await createSegment(fileSystem, paths.log, {
      segmentNumber: 1,
      segmentSizeBytes: config.segmentSizeBytes,
      volumeId: Buffer.from(config.volumeId, 'hex'),
      createdMicros: config.createdMicros,
    });
    firstSegment.handle.close();
    await RetentionPolicyFile.create(fileSystem, paths.retention, newVolumeRetentionPolicy(fileSystem, directory, options.retention ?? {}));
    await DirtyRegionLog.create(fileSystem, paths.drl, {
      regionSizeBytes: config.regionSizeBytes,
      volumeSizeBytes: config.sizeBytes,
      checkpoint: { sequence: 0, position: { segmentNumber: 1, offsetBytes: segmentHeaderBytes }, timestampMicros: 0 },
    });
    await writeVolumeConfig(fileSystem, paths.config, config);
    await fileSystem.syncDirectory(directory);
    return config;
  }

  /** Open a volume, recovering it first if it was not closed cleanly. */
  static async open(directory: string, fileSystem: FileSystem = nodeFileSystem, options: OpenVolumeOptions = {}): Promise<Volume> {
    const paths = volumePaths(directory);
    const config = await upgradeVolumeConfig(fileSystem, paths.config, readVolumeConfig(fileSystem, paths.config));
    assertGeometry(config);
    const retention = await RetentionPolicyFile.open(fileSystem, paths.retention, () => defaultRetentionPolicy(fileSystem.freeBytes(directory)));
    const primary = PrimaryImage.open(fileSystem, paths.primary, config.sizeBytes);
    const drl = DirtyRegionLog.open(fileSystem, paths.drl);
    try {
      if (drl.volumeSizeBytes !== config.sizeBytes || drl.regionSizeBytes !== config.regionSizeBytes) {
        throw new StorageError('ECORRUPT', `${paths.drl}: geometry differs from ${paths.config}`);
      }
      const recovery = await recoverVolume({ fileSystem, paths, primary, drl });
      const clock = new MicrosecondClock(Math.max(recovery.lastTimestampMicros, drl.checkpoint.timestampMicros));
      const volume = new Volume({ config, paths, primary, drl, recovery, clock, fileSystem, retention, logCompression: options.logCompression ?? 'snappy' });
      try {
        if (options.history ?? (fileSystem === nodeFileSystem || options.indexDatabase !== undefined)) {
          const indexDatabase = options.indexDatabase === undefined ? {} : { indexDatabase: options.indexDatabase };
          volume.history = await VolumeHistory.open({ volume: volume.asHistoryVolume(), paths, fileSystem, sizeBytes: config.sizeBytes, ...indexDatabase });
          const history = volume.history;
          volume.onRetentionPolicyChanged(() => void history.lifecycle.tick());
        }
        await volume.judgeQuarantine();
        await volume.recordRecovery();
      } catch (error) {
        await volume.close();
        throw error;
      }
      return volume;
    } catch (error) {
      primary.close();
      drl.close();
      throw error;
    }
  }

  get sizeBytes(): number {
    return this.config.sizeBytes;
  }

  // ---- retention policy (storage/retention/policy.ts) ----

  /** The policy in force (frozen: change it with setRetentionPolicy). */
  get retentionPolicy(): RetentionPolicy {
    return this.retention.policy;
  }

  /** Validate (EINVAL with the reason in words), store durably in retention.json, then tell the listeners. */
  setRetentionPolicy(policy: RetentionPolicy): Promise<void> {
    return this.retention.set(policy);
  }

  /** Call `listener` with the new policy after every change; returns the function that stops it. */
  onRetentionPolicyChanged(listener: RetentionPolicyListener): () => void {
    return this.retention.onChanged(listener);
  }

  get description(): string {
    return `cdp-nbd volume ${this.config.name} (live)`;
  }

  // ---- reads ----

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.assertInside(offsetBytes, lengthBytes);
    // What is not yet in the live image, as of now: a batch applied while the read below is in
    // progress must still be laid over what the read returns.
    const stranded = this.strandedRecords.length > 0 ? [...this.strandedRecords] : [];
    const batches = this.log.unappliedBatches();
    const target = Buffer.allocUnsafe(lengthBytes);
    try {
      await this.primary.read(offsetBytes, target);
    } catch (error) {
      throw storageErrorFromSystem(error, `reading ${lengthBytes} bytes at ${offsetBytes} from the live image`);
    }
    for (const record of stranded) applyRecordToRange(record, offsetBytes, target);
    for (const batch of batches) batch.patchRead(offsetBytes, target);
    this.statistics.readCount++;
    this.statistics.readBytes += lengthBytes;
    return target;
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.assertInside(offsetBytes, lengthBytes);
  }

  async allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]> {
    this.assertInside(offsetBytes, lengthBytes);
    const extents = this.primary
      .allocation(offsetBytes, lengthBytes, extentCountMax)
      .map((extent) => ({ lengthBytes: extent.lengthBytes, hole: extent.hole, zero: extent.hole }));
    return overlayUnapplied(extents, offsetBytes, this.unappliedDataRecords());
  }

  // ---- writes: the front half of the write path ----

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.assertInside(offsetBytes, data.length);
    assert(data.length > 0 && data.length <= storageLimits.writePayloadBytesMax, 'write length within limits');
    this.statistics.writeCount++;
    this.statistics.writeBytes += data.length;
    if (isAllZero(data)) return this.logWrite(RecordKind.zeroes, offsetBytes, data.length, null, options.fua);
    return this.logWrite(RecordKind.data, offsetBytes, data.length, data, options.fua);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    this.assertInside(offsetBytes, lengthBytes);
    this.statistics.zeroCount++;
    // Zeroing is a metadata operation on the live image and a header-only log record: always fast.
    return this.logWrite(RecordKind.zeroes, offsetBytes, lengthBytes, null, options.fua);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.assertInside(offsetBytes, lengthBytes);
    this.statistics.trimCount++;
    return this.logWrite(RecordKind.trim, offsetBytes, lengthBytes, null, options.fua);
  }

  async flush(): Promise<void> {
    this.statistics.flushCount++;
    if (this.failure !== null) throw this.failure;
    const startedMs = performance.now();
    await this.log.syncAll();
    const seconds = (performance.now() - startedMs) / 1000;
    this.flushLatencySumSeconds += seconds;
    let bucket = flushLatencyBucketsSeconds.findIndex((bound) => seconds <= bound);
    if (bucket < 0) bucket = flushLatencyBucketsSeconds.length;
    this.flushLatencyCounts[bucket]!++;
  }

  /** Flush latencies so far: counts per bucket (the last one is over the largest bound). */
  flushLatency(): { bucketsSeconds: readonly number[]; counts: readonly number[]; sumSeconds: number } {
    return { bucketsSeconds: flushLatencyBucketsSeconds, counts: [...this.flushLatencyCounts], sumSeconds: this.flushLatencySumSeconds };
  }

  /** Append a mark or error record (no data). Resolves with its sequence number once durable. */
  async appendEvent(kind: typeof RecordKind.mark | typeof RecordKind.error, payload: Buffer): Promise<AppendedRecord> {
    assert(payload.length <= storageLimits.metaPayloadBytesMax, 'event payloads are small');
    // Marks still go to a log the live image failed, but not past quarantined damage: the index holds records past the log's end.
    if (this.quarantineDamage !== null) throw this.quarantineDamage;
    const record = await this.appendRecord(kind, 0, 0, 0, payload);
    await this.log.syncThrough(record.sequence);
    return record;
  }

  private async logWrite(kind: RecordKind, offsetBytes: number, lengthBytes: number, payload: Buffer | null, fua: boolean): Promise<void> {
    if (this.failure !== null) throw this.failure;
    if (this.pendingResyncRegions.length > 0) await this.finishPendingResync();
    const record = await this.appendRecord(kind, fua ? RecordFlag.fua : 0, offsetBytes, lengthBytes, payload);
    if (fua) await this.log.syncThrough(record.sequence);
  }

  /**
   * Steps 1 and 2: admission (room in the index's in-memory tail, then in the write-log buffer and
   * a ready segment; both checked again after any wait, so both hold at the append), then the
   * append that orders this write among all others.
   */
  private async appendRecord(kind: RecordKind, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null): Promise<AppendedRecord> {
    const recordBytes = recordHeaderBytes + (payload?.length ?? 0);
    for (;;) {
      const indexWait = this.history?.admit() ?? null; // ENOSPC while cuts fail and the tail is full
      if (indexWait !== null) {
        await indexWait;
        continue;
      }
      let logWait: Promise<void> | null;
      try {
        logWait = this.log.admit(recordBytes);
      } catch (error) {
        if (error instanceof StorageError && error.code === 'ENOSPC') this.refusingWritesForSpace = true;
        throw error;
      }
      if (logWait === null) break;
      await logWait.catch((error: unknown) => {
        if (error instanceof StorageError && error.code === 'ENOSPC') this.refusingWritesForSpace = true;
        throw error;
      });
    }
    this.refusingWritesForSpace = false;
    const record = this.log.append(kind, flags, offsetBytes, lengthBytes, payload);
    this.history?.noteRecord(record, payload);
    return record;
  }

  /** The oldest log segment recovery would read from: the DRL checkpoint's, or what is applied since. */
  private oldestSegmentNeeded(): number {
    return Math.min(this.drl.checkpoint.position.segmentNumber, this.appliedPosition.segmentNumber, this.log.appendPosition.segmentNumber);
  }

  /** What the history (points in time) needs of this volume. */
  private asHistoryVolume(): HistoryVolume {
    const log = this.log;
    const appendedLogBytes = (): number => this.appendedLogBytes;
    const refusingWritesForSpace = (): boolean => this.refusingWritesForSpace;
    return {
      name: this.config.name,
      createdMicros: this.config.createdMicros,
      volumeId: Buffer.from(this.config.volumeId, 'hex'),
      segmentSizeBytes: this.config.segmentSizeBytes,
      retentionPolicy: () => this.retentionPolicy,
      oldestSegmentNeeded: () => this.oldestSegmentNeeded(),
      segmentsDeleted: (firstRemaining) => {
        this.firstSegmentNumber = Math.max(this.firstSegmentNumber, firstRemaining);
      },
      sizeBytes: this.config.sizeBytes,
      read: (offsetBytes, lengthBytes) => this.read(offsetBytes, lengthBytes),
      allocation: (offsetBytes, lengthBytes, extentCountMax) => this.allocation(offsetBytes, lengthBytes, extentCountMax),
      snapshotInstants: () => this.history?.snapshotInstants() ?? [],
      appendMark: (payload) => this.appendEvent(RecordKind.mark, payload),
      syncThrough: (sequence) => this.log.syncThrough(sequence),
      flush: () => this.flush(),
      get appendedSequence(): number {
        return log.appendedSequence;
      },
      get durableSequence(): number {
        return log.durableSequence;
      },
      get appendedLogBytes(): number {
        return appendedLogBytes();
      },
      get refusingWritesForSpace(): boolean {
        return refusingWritesForSpace();
      },
    };
  }

  // ---- metadata contexts: changed-block tracking since each snapshot ----

  metaContexts(): string[] {
    return (this.history?.snapshotInstants() ?? []).map((snapshot) => dirtyBitmapContext(snapshot.name));
  }

  async contextStatus(context: string, offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<ContextExtent[]> {
    const history = this.history;
    if (history === null) throw new StorageError('EINVAL', `no metadata context ${context} on this volume`);
    return history.contextStatus(context, this.log.appendedSequence, offsetBytes, lengthBytes, extentCountMax);
  }

  // ---- the back half: durable batches reach the live image ----

  private markRegions(batch: Batch): Promise<void> {
    return this.drl.markBeforeApply(batch.records.filter((record) => changesData(record.kind) && record.lengthBytes > 0));
  }

  private async applyBatch(batch: Batch): Promise<void> {
    const records = batch.records.filter((record) => changesData(record.kind));
    if (this.strandedRecords.length > 0) {
      this.strandedRecords.push(...records); // keep later records after stranded ones, in order
    } else {
      try {
        await this.primary.apply(records);
      } catch (error) {
        this.strandRecords(records, error);
      }
    }
    this.appliedSequence = batch.lastSequence;
    this.appliedPosition = batch.endPosition;
    this.appliedTimestampMicros = batch.records[batch.records.length - 1]!.timestampMicros;
  }

  /**
   * The live image refused records the log holds: keep serving them from memory (reads stay
   * right), record an error entry in the log, and fail the volume for writes until restart,
   * when recovery replays them.
   */
  private strandRecords(records: readonly AppendedRecord[], error: unknown): void {
    const first = records[0]!;
    const cause = storageErrorFromSystem(error, `applying records ${first.sequence}-${records[records.length - 1]!.sequence} to the live image`);
    this.strandedRecords.push(...records);
    this.fail(cause);
    const detail = { operation: 'apply', fromSequence: first.sequence, records: records.length, code: cause.code, message: cause.message };
    try {
      if (this.log.failed === null && this.log.admit(recordHeaderBytes + 1024) === null) {
        this.log.append(RecordKind.error, 0, first.offsetBytes, first.lengthBytes, Buffer.from(JSON.stringify(detail)));
      }
    } catch {
      // The log cannot take the error entry either; the failure is already sticky.
    }
  }

  private fail(error: StorageError): void {
    if (this.failure !== null) return;
    this.failure = new StorageError('EIO', `volume ${this.config.name} failed and refuses writes until restart: ${error.message}`, { cause: error });
  }

  private unappliedDataRecords(): AppendedRecord[] {
    const records: AppendedRecord[] = [...this.strandedRecords];
    for (const batch of this.log.unappliedBatches()) for (const record of batch.records) if (changesData(record.kind)) records.push(record);
    return records;
  }

  // ---- after recovery ----

  /**
   * Read what recoveries kept in quarantine. The index cuts only durable records: if it holds
   * records past the end of the log, the records quarantined had been durable, and their loss is
   * damage. Damage refuses writes (reads go on) until an administrator takes its folder away.
   */
  private async judgeQuarantine(): Promise<void> {
    const reports = readQuarantineReports(this.fileSystem, this.paths);
    const lastSequence = this.recovery.nextSequence - 1;
    const mappedThroughSequence = this.history?.mappedThroughSequence ?? 0;
    if (mappedThroughSequence > lastSequence) {
      this.indexAheadOfLog = true;
      const newest = reports[reports.length - 1];
      if (newest === undefined) {
        throw new StorageError(
          'ECORRUPT',
          `the index holds records through ${mappedThroughSequence}, past the end of the log at ${lastSequence}, and no quarantine says why: rebuild the index (remove ${this.paths.index}; packed history is lost with it)`,
        );
      }
      if (newest.kind !== 'damage' || newest.indexMappedThroughSequence === undefined) {
        reports[reports.length - 1] = await markQuarantineAsDamage(this.fileSystem, this.paths, newest, mappedThroughSequence);
      }
    }
    this.quarantineReports = reports;
    const damage = reports.filter((report) => report.kind === 'damage');
    const newestDamage = damage[damage.length - 1];
    if (newestDamage !== undefined) {
      this.quarantineDamage = new StorageError(
        'EIO',
        `volume ${this.config.name} refuses writes: ${describeQuarantine(newestDamage)}; acknowledged records were lost, so an administrator decides what to keep, then removes that folder`,
      );
      this.failure ??= this.quarantineDamage;
    }
  }

  /** What quarantine keeps that does not stop writes (records past a torn tail after a machine restart), in words. */
  degradedReasons(): string[] {
    return this.quarantineReports
      .filter((report) => report.kind !== 'damage')
      .map((report) => `after a machine restart, ${describeQuarantine(report)}; they were not all made durable before it (a disk may write out of order), so none was acknowledged as durable unless it lost acknowledged writes; remove the folder once looked at`);
  }

  /** The quarantine reports, oldest first (for the API). */
  quarantines(): readonly QuarantineReport[] {
    return this.quarantineReports;
  }

  /**
   * Recovery step 5 (recovery.ts): after a machine restart, log what the dirty regions of the
   * live image hold, so the log again describes the image exactly; then note in the log what
   * recovery found, for the people reading it later. With no room for the log, the volume still
   * opens for reads, and writes are refused with ENOSPC until the resync can be done.
   */
  private async recordRecovery(): Promise<void> {
    const { recovery } = this;
    // The index holds records past the log's end (quarantined damage): nothing may be appended until it is rebuilt.
    if (this.indexAheadOfLog) return;
    let resyncedBytes = 0;
    try {
      resyncedBytes = await this.finishPendingResync();
    } catch (error) {
      if (!(error instanceof StorageError && error.code === 'ENOSPC')) throw error;
      await this.log.drained(); // what was appended before space ran out still goes to the log
      return;
    }
    if (recovery.tear === null && recovery.resyncRegions.length === 0 && recovery.replayedRecordCount === 0) return;
    const event = {
      event: 'recovered',
      replayedRecords: recovery.replayedRecordCount,
      dirtyRegions: recovery.dirtyRegionCount,
      machineRestarted: recovery.machineRestarted,
      resyncedRegions: recovery.resyncRegions.length,
      resyncedBytes,
      tear: recovery.tear === null ? null : { ...recovery.tear.position, reason: recovery.tear.reason },
      quarantine: recovery.quarantine === null ? null : { folder: recovery.quarantine.folder, kind: recovery.quarantine.kind },
    };
    try {
      const record = await this.appendRecord(RecordKind.mark, 0, 0, 0, Buffer.from(JSON.stringify(event)));
      await this.log.syncThrough(record.sequence);
    } catch (error) {
      if (!(error instanceof StorageError && error.code === 'ENOSPC')) throw error;
    }
  }

  /** Log the regions recovery flagged for resync (once; concurrent callers share the attempt). */
  private finishPendingResync(): Promise<number> {
    if (this.pendingResyncRegions.length === 0) return Promise.resolve(0);
    this.resyncAttempt ??= this.resyncRegions(this.pendingResyncRegions).finally(() => (this.resyncAttempt = null));
    return this.resyncAttempt;
  }

  private async resyncRegions(regions: readonly number[]): Promise<number> {
    const regionSizeBytes = this.config.regionSizeBytes;
    const chunkBytes = Math.min(regionSizeBytes, 1024 * 1024);
    let resyncedBytes = 0;
    for (const region of regions) {
      const regionEnd = Math.min((region + 1) * regionSizeBytes, this.sizeBytes);
      for (let offsetBytes = region * regionSizeBytes; offsetBytes < regionEnd; offsetBytes += chunkBytes) {
        const lengthBytes = Math.min(chunkBytes, regionEnd - offsetBytes);
        const data = await this.read(offsetBytes, lengthBytes);
        if (isAllZero(data)) await this.appendRecord(RecordKind.zeroes, 0, offsetBytes, lengthBytes, null);
        else await this.appendRecord(RecordKind.data, 0, offsetBytes, lengthBytes, data);
        resyncedBytes += lengthBytes;
      }
    }
    await this.log.syncAll();
    await this.drl.finishResync();
    this.pendingResyncRegions = [];
    return resyncedBytes;
  }

  // ---- cleaning dirty regions ----

  private scheduleCleaning(): void {
    this.cleaningTimer = setTimeout(() => {
      this.cleaningTimer = null;
      this.cleaning = this.cleanRegions().finally(() => {
        this.cleaning = null;
        if (this.closed === null) this.scheduleCleaning();
      });
    }, storageLimits.regionCleanIntervalMs);
    this.cleaningTimer.unref();
  }

  /**
   * Make the log and the live image durable up to what has been applied, move the DRL checkpoint
   * there and clean the regions idle since the previous cleaning.
   */
  private async cleanRegions(cleanEverything = false): Promise<void> {
    // Regions waiting for a resync must stay dirty until it is done.
    if (this.failure !== null || this.pendingResyncRegions.length > 0) return;
    const checkpoint = { sequence: this.appliedSequence, position: this.appliedPosition, timestampMicros: this.appliedTimestampMicros };
    const nothingNew = checkpoint.sequence === this.drl.checkpoint.sequence && this.drl.dirtyRegionCount === 0;
    if (nothingNew) return;
    try {
      // Both must hold these records durably before a region may be called clean.
      await this.log.syncThrough(checkpoint.sequence);
      await this.primary.datasync();
      const cleanThrough = cleanEverything ? checkpoint.sequence : this.previousCheckpointSequence;
      await this.drl.cleanAndCheckpoint(checkpoint, cleanThrough);
      this.previousCheckpointSequence = checkpoint.sequence;
    } catch (error) {
      this.fail(storageErrorFromSystem(error, 'cleaning dirty regions'));
    }
  }

  // ---- lifecycle ----

  /** Write out and apply everything, make it durable, leave every region clean, close. */
  close(): Promise<void> {
    this.closed ??= this.closeOnce();
    return this.closed;
  }

  private async closeOnce(): Promise<void> {
    if (this.cleaningTimer !== null) clearTimeout(this.cleaningTimer);
    await this.cleaning;
    await this.log.close();
    if (this.history !== null) {
      await this.history.cutEverything();
      await this.history.close();
    }
    await this.drl.settled().catch(() => undefined);
    if (this.failure === null && this.strandedRecords.length === 0) await this.cleanRegions(true);
    this.primary.close();
    this.drl.close();
  }

  /** Bytes of log up to the append position, since the volume was made (only grows). */
  private get appendedLogBytes(): number {
    return (this.log.appendPosition.segmentNumber - 1) * this.config.segmentSizeBytes + this.log.appendPosition.offsetBytes;
  }

  stats(): VolumeStatistics {
    return {
      ...this.statistics,
      appendedSequence: this.log.appendedSequence,
      durableSequence: this.log.durableSequence,
      appliedSequence: this.appliedSequence,
      unappliedBytes: this.log.unappliedBytes,
      dirtyRegionCount: this.drl.dirtyRegionCount,
      logBytes: (this.log.appendPosition.segmentNumber - this.firstSegmentNumber) * this.config.segmentSizeBytes + this.log.appendPosition.offsetBytes,
      failed: this.failure?.message ?? null,
    };
  }

  private assertInside(offsetBytes: number, lengthBytes: number): void {
    assert(
      Number.isSafeInteger(offsetBytes) && Number.isSafeInteger(lengthBytes) && offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= this.config.sizeBytes,
      `range ${offsetBytes}+${lengthBytes} lies inside the volume (validated at the edge)`,
    );
  }
}

/**
 * A new volume's policy: the defaults, with the history cap at 80% of what the file system has
 * free once the live image and the first segment hold their space, and the given changes made.
 */
function newVolumeRetentionPolicy(fileSystem: FileSystem, directory: string, changes: RetentionPolicyChanges): RetentionPolicy {
  return changeRetentionPolicy(defaultRetentionPolicy(fileSystem.freeBytes(directory)), changes);
}

function assertGeometry(config: VolumeConfig): void {
  const { regionSizeBytes, segmentSizeBytes } = config;
  assert((regionSizeBytes & (regionSizeBytes - 1)) === 0, 'region size is a power of two');
  assert(regionSizeBytes >= storageLimits.regionSizeBytesMin && regionSizeBytes <= storageLimits.regionSizeBytesMax, 'region size within limits');
  assert(Math.ceil(config.sizeBytes / regionSizeBytes) <= storageLimits.regionCountMax, 'region count within limits');
  assert(segmentSizeBytes >= storageLimits.segmentSizeBytesMin && segmentSizeBytes <= storageLimits.segmentSizeBytesMax, 'segment size within limits');
}

/**
 * Block status must not report a hole where an acknowledged write has not reached the live image
 * yet: ranges written by unapplied records are reported as data (status 0, always safe).
 */
export function overlayUnapplied(extents: AllocationStatus[], offsetBytes: number, records: readonly AppendedRecord[]): AllocationStatus[] {
  if (records.length === 0) return extents;
  const result: AllocationStatus[] = [];
  let position = offsetBytes;
  for (const extent of extents) {
    const extentEnd = position + extent.lengthBytes;
    if (!extent.hole) {
      result.push(extent);
      position = extentEnd;
      continue;
    }
    // Split this hole at the edges of overlapping records.
    let cursor = position;
    const covered = records
      .map((record) => [Math.max(record.offsetBytes, position), Math.min(record.offsetBytes + record.lengthBytes, extentEnd)] as const)
      .filter(([start, end]) => start < end)
      .sort((left, right) => left[0] - right[0]);
    for (const [start, end] of covered) {
      if (end <= cursor) continue;
      if (start > cursor) result.push({ lengthBytes: start - cursor, hole: true, zero: true });
      const from = Math.max(start, cursor);
      result.push({ lengthBytes: end - from, hole: false, zero: false });
      cursor = end;
    }
    if (cursor < extentEnd) result.push({ lengthBytes: extentEnd - cursor, hole: true, zero: true });
    position = extentEnd;
  }
  return mergeAdjacent(result);
}

function mergeAdjacent(extents: AllocationStatus[]): AllocationStatus[] {
  const merged: AllocationStatus[] = [];
  for (const extent of extents) {
    const last = merged[merged.length - 1];
    if (last !== undefined && last.hole === extent.hole && last.zero === extent.zero) last.lengthBytes += extent.lengthBytes;
    else merged.push({ ...extent });
  }
  return merged;
}
