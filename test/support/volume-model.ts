// What a volume must hold across crashes, for the fault-injection tests
// (test/storage/fault-injection.test.ts): a session drives an open volume and remembers every
// write it issued, its sequence number in the log, and which writes were acknowledged as durable;
// after a crash and reopen, verifyRecoveredVolume checks the recovered volume against it. With
// history retention, VolumeVersions also keeps the volume as of every record still kept, and the
// log may start past record 1 (older records were packed and their segments deleted).

import { RecordKind, StorageError, decodePayload, scanLog, logStart, volumePaths, type FileSystem, type LogPosition, type Volume } from '../../storage/index.js';

export const blockBytes = 4096;

/** A write as the model knows it, with the log record it must have become. */
export interface ModelOperation {
  /** Sequence number of its log record; null until known (or if it was never appended). */
  sequence: number | null;
  kind: RecordKind;
  offsetBytes: number;
  lengthBytes: number;
  /** Data records: the bytes written (never modified afterwards). */
  data: Buffer | null;
  fua: boolean;
  resolved: boolean;
  error: unknown;
  /** Issued after the volume reported itself failed: must be refused. */
  issuedAfterFailure: boolean;
  /** Its record's timestamp lies in [fromMicros, toMicros] (the clock around its append). */
  fromMicros: number;
  toMicros: number;
}

/** Microseconds since the epoch, as record timestamps count them (storage/clock.ts). */
export function clockMicros(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

/** A record as VolumeVersions keeps it. */
export interface VersionRecord {
  sequence: number;
  kind: RecordKind;
  offsetBytes: number;
  lengthBytes: number;
  /** Data records: the bytes written. */
  data: Buffer | null;
  /** Its timestamp lies in [fromMicros, toMicros]. */
  fromMicros: number;
  toMicros: number;
}

/**
 * The volume as of every record since `baseSequence`: an image as of that record and the
 * data-changing records after it (with their data); older records keep only their times.
 */
export class VolumeVersions {
  private base: Buffer;
  private baseSequence = 0;
  private records: VersionRecord[] = [];
  /** Every data-changing record ever added, without data: when it was written. */
  private readonly times: Array<{ sequence: number; fromMicros: number; toMicros: number }> = [];

  constructor(sizeBytes: number) {
    this.base = Buffer.alloc(sizeBytes);
  }

  get oldestSequence(): number {
    return this.baseSequence;
  }

  /** Add the next record (in sequence order; marks and other records that change no data are skipped). */
  add(record: VersionRecord): void {
    if (record.kind !== RecordKind.data && record.kind !== RecordKind.zeroes && record.kind !== RecordKind.trim) return;
    this.records.push(record);
    this.times.push({ sequence: record.sequence, fromMicros: record.fromMicros, toMicros: record.toMicros });
  }

  /** The volume just after record `sequence`. */
  stateThrough(sequence: number): Buffer {
    if (sequence < this.baseSequence) throw new Error(`the model no longer keeps the volume as of record ${sequence} (it keeps from ${this.baseSequence})`);
    const image = Buffer.from(this.base);
    for (const record of this.records) {
      if (record.sequence > sequence) break;
      applyOperationToRange(record, 0, image);
    }
    return image;
  }

  /** The last data-changing record written at or before `micros` (0 if none), or null when a record's time is too close to tell. */
  lastDataAt(micros: number, marginMicros: number): number | null {
    let found = 0;
    for (const time of this.times) {
      if (time.fromMicros - marginMicros <= micros && micros <= time.toMicros + marginMicros) return null;
      if (time.toMicros < micros) found = time.sequence;
    }
    return found;
  }

  /** A copy with more records after these (a running session's writes, before a recovery verified them). */
  withRecords(records: readonly VersionRecord[]): VolumeVersions {
    const copy = new VolumeVersions(0);
    copy.base = this.base;
    copy.baseSequence = this.baseSequence;
    copy.records = [...this.records];
    copy.times.push(...this.times);
    for (const record of records) copy.add(record);
    return copy;
  }

  /** Forget the volume as of records before `sequence` (never asked for again): memory stays bounded. */
  forgetBefore(sequence: number): void {
    if (sequence <= this.baseSequence) return;
    const folded = this.records.filter((record) => record.sequence <= sequence);
    for (const record of folded) applyOperationToRange(record, 0, this.base);
    this.records = this.records.slice(folded.length);
    this.baseSequence = sequence;
  }
}

/** The volume's state as of the last verified recovery. */
export class VolumeModel {
  /** Exact contents of the volume. */
  image: Buffer;
  /** Every record of the log, by sequence - 1 (headers only: payloads are checked once). */
  readonly history: Array<{ kind: number; offsetBytes: number; lengthBytes: number }> = [];
  /** The volume as of each record, when the test reads the past (null: only the latest image). */
  readonly versions: VolumeVersions | null;

  constructor(sizeBytes: number, options: { versions?: boolean } = {}) {
    this.image = Buffer.alloc(sizeBytes);
    this.versions = options.versions === true ? new VolumeVersions(sizeBytes) : null;
  }

  get lastSequence(): number {
    return this.history.length;
  }
}

function isAllZero(data: Buffer): boolean {
  for (const byte of data) if (byte !== 0) return false;
  return true;
}

function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name} ${(error as { code?: string }).code ?? ''}: ${error.message}`;
  return String(error);
}

/** Copy the effect of one operation onto target, which holds [targetOffsetBytes, +length). */
export function applyOperationToRange(
  operation: Pick<ModelOperation, 'kind' | 'offsetBytes' | 'lengthBytes' | 'data'>,
  targetOffsetBytes: number,
  target: Buffer,
): void {
  const startBytes = Math.max(operation.offsetBytes, targetOffsetBytes);
  const endBytes = Math.min(operation.offsetBytes + operation.lengthBytes, targetOffsetBytes + target.length);
  if (startBytes >= endBytes) return;
  if (operation.kind === RecordKind.data && operation.data !== null) {
    operation.data.copy(target, startBytes - targetOffsetBytes, startBytes - operation.offsetBytes, endBytes - operation.offsetBytes);
  } else {
    target.fill(0, startBytes - targetOffsetBytes, endBytes - targetOffsetBytes);
  }
}

/**
 * One open volume, from its recovery to its crash (or close). Operations are issued here so the
 * model learns each one's sequence number (the volume appends synchronously when it admits a write
 * at once; when admission makes a write wait, later writes wait for it, so the order stays known).
 */
export class Session {
  readonly volume: Volume;
  readonly model: VolumeModel;
  /** The first sequence number this session's writes get. */
  readonly firstSequence: number;
  /** Highest sequence number acknowledged as durable: everything up to it must survive. */
  durableSequence: number;
  /** Error codes a refused write or flush may carry (the test injected faults); empty: none may be refused. */
  allowedRefusalCodes = new Set<string>();
  readonly problems: string[] = [];
  private readonly operations: ModelOperation[] = [];
  private readonly inFlight = new Set<Promise<unknown>>();
  private crashed = false;
  private lateAppend: Promise<void> | null = null;
  private resolvedSequenceMax: number;
  private failureSeen = false;

  constructor(volume: Volume, model: VolumeModel) {
    this.volume = volume;
    this.model = model;
    this.firstSequence = model.lastSequence + 1;
    this.durableSequence = model.lastSequence;
    this.resolvedSequenceMax = model.lastSequence;
  }

  get isCrashed(): boolean {
    return this.crashed;
  }

  /** Operations that got a log record, in sequence order. */
  appendedOperations(): ModelOperation[] {
    return this.operations.filter((operation) => operation.sequence !== null).sort((left, right) => left.sequence! - right.sequence!);
  }

  /** The volume reported itself failed at some point this session. */
  get failed(): boolean {
    this.failureSeen ||= this.volume.stats().failed !== null;
    return this.failureSeen;
  }

  /** Issue a write; resolves with the operation once it settled (never rejects: see operation.error). */
  write(offsetBytes: number, data: Buffer, fua: boolean): Promise<ModelOperation> {
    const kind = isAllZero(data) ? RecordKind.zeroes : RecordKind.data;
    return this.issue({ kind, offsetBytes, lengthBytes: data.length, data: kind === RecordKind.data ? data : null, fua }, () =>
      this.volume.write(offsetBytes, data, { fua }),
    );
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<ModelOperation> {
    return this.issue({ kind: RecordKind.zeroes, offsetBytes, lengthBytes, data: null, fua }, () =>
      this.volume.writeZeroes(offsetBytes, lengthBytes, { fua, noHole: false, fastZero: false }),
    );
  }

  trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<ModelOperation> {
    return this.issue({ kind: RecordKind.trim, offsetBytes, lengthBytes, data: null, fua }, () => this.volume.trim(offsetBytes, lengthBytes, { fua }));
  }

  /** A call that appends one durable mark (a snapshot created, changed or deleted). */
  mark(call: () => Promise<unknown>): Promise<ModelOperation> {
    return this.issue({ kind: RecordKind.mark, offsetBytes: 0, lengthBytes: 0, data: null, fua: true }, async () => void (await call()));
  }

  /** Flush: once it resolves, every write that resolved before the call is durable. Resolves with its error, if any. */
  flush(): Promise<{ error: unknown }> {
    const covered = this.resolvedSequenceMax;
    const issuedAfterFailure = this.failed;
    const completion = this.volume.flush().then(
      () => {
        if (this.crashed) return { error: null };
        if (issuedAfterFailure) this.problems.push('a flush issued after the volume failed resolved');
        this.durableSequence = Math.max(this.durableSequence, covered);
        return { error: null };
      },
      (error: unknown) => {
        this.checkRefusal('flush', error, issuedAfterFailure);
        return { error };
      },
    );
    return this.track(completion);
  }

  /** Read a range and compare it with every write appended so far (reads see them at once). */
  async checkRead(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.lateAppend !== null) return;
    const expected = Buffer.from(this.model.image.subarray(offsetBytes, offsetBytes + lengthBytes));
    for (const operation of this.appendedOperations()) applyOperationToRange(operation, offsetBytes, expected);
    const actual = await this.volume.read(offsetBytes, lengthBytes);
    if (!this.crashed && !actual.equals(expected)) {
      this.problems.push(`read of ${lengthBytes} bytes at ${offsetBytes} differs at byte ${firstDifference(actual, expected)} from the writes appended before it`);
    }
  }

  /** Wait until every operation issued so far has settled. */
  async settle(): Promise<void> {
    while (this.inFlight.size > 0 || this.lateAppend !== null) {
      await Promise.all([...this.inFlight, this.lateAppend]);
    }
  }

  /** The power went: nothing that settles from now on counts as acknowledged. */
  markCrashed(): void {
    this.crashed = true;
  }

  private issue(shape: Omit<ModelOperation, 'sequence' | 'resolved' | 'error' | 'issuedAfterFailure' | 'fromMicros' | 'toMicros'>, call: () => Promise<void>): Promise<ModelOperation> {
    if (this.lateAppend !== null) return this.lateAppend.then(() => this.issue(shape, call));
    const operation: ModelOperation = { ...shape, sequence: null, resolved: false, error: null, issuedAfterFailure: this.failed, fromMicros: clockMicros(), toMicros: 0 };
    this.operations.push(operation);
    const before = this.volume.stats().appendedSequence;
    const completion = call();
    operation.toMicros = clockMicros();
    const after = this.volume.stats().appendedSequence;
    let late = false;
    if (after === before + 1) operation.sequence = after;
    else if (after === before) late = true;
    else this.problems.push(`one write appended ${after - before} records`);

    let releaseLate = (): void => undefined;
    if (late) this.lateAppend = new Promise((resolve) => (releaseLate = resolve));
    const settleLate = (): void => {
      if (!late) return;
      operation.toMicros = clockMicros();
      const now = this.volume.stats().appendedSequence;
      if (now === before + 1) operation.sequence = now;
      else if (now !== before) this.problems.push('could not tell the sequence number of a write that waited for admission');
      this.lateAppend = null;
      releaseLate();
    };
    const tracked = completion.then(
      () => {
        settleLate();
        if (this.crashed) return operation;
        operation.resolved = true;
        if (operation.issuedAfterFailure) this.problems.push(`a write issued after the volume failed was acknowledged (sequence ${operation.sequence})`);
        if (operation.sequence !== null) {
          this.resolvedSequenceMax = Math.max(this.resolvedSequenceMax, operation.sequence);
          if (operation.fua) this.durableSequence = Math.max(this.durableSequence, operation.sequence);
        }
        return operation;
      },
      (error: unknown) => {
        settleLate();
        operation.error = error;
        this.checkRefusal('write', error, operation.issuedAfterFailure);
        return operation;
      },
    );
    return this.track(tracked);
  }

  private checkRefusal(what: string, error: unknown, issuedAfterFailure: boolean): void {
    if (this.crashed) return;
    const code = error instanceof StorageError ? error.code : null;
    if (issuedAfterFailure && code !== 'EIO') {
      this.problems.push(`${what} issued after the volume failed was refused with something other than a StorageError EIO: ${describeError(error)}`);
    } else if (code === null || !this.allowedRefusalCodes.has(code)) {
      this.problems.push(`${what} was refused unexpectedly: ${describeError(error)}`);
    }
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.inFlight.add(promise);
    void promise.finally(() => this.inFlight.delete(promise));
    return promise;
  }
}

export function firstDifference(left: Buffer, right: Buffer): number {
  const length = Math.min(left.length, right.length);
  for (let index = 0; index < length; index++) if (left[index] !== right[index]) return index;
  return left.length === right.length ? -1 : length;
}

export interface RecoveryFindings {
  /** Broken invariants. */
  problems: string[];
  /**
   * 4 KiB blocks holding a mix no single write history explains (parts of a write that was never
   * acknowledged as durable, beside older data). Not a durability failure: reported apart.
   */
  blockModelViolations: string[];
  /** Writes appended in the crashed session that the log no longer holds. */
  lostOperationCount: number;
  /** The last record of the crashed session that the log still holds. */
  sessionEndSequence: number;
  /** Records the log holds after recovery (recovery's own included). */
  recordCount: number;
  /** Records recovery appended (region resync, the 'recovered' mark), this open and interrupted ones. */
  recoveryRecordCount: number;
}

interface RecordSummary {
  sequence: number;
  kind: number;
  offsetBytes: number;
  lengthBytes: number;
  payload: Buffer | null;
  timestampMicros: number;
}

/** Records recovery itself appends: region contents in aligned chunks (data or zeroes), and marks. */
function isRecoveryRecord(record: RecordSummary, chunkBytes: number, volumeSizeBytes: number): boolean {
  if (record.kind === RecordKind.mark) {
    try {
      return (JSON.parse(record.payload?.toString('utf8') ?? '') as { event?: string }).event === 'recovered';
    } catch {
      return false;
    }
  }
  if (record.kind !== RecordKind.data && record.kind !== RecordKind.zeroes) return false;
  const chunkEnd = Math.min(record.offsetBytes + chunkBytes, volumeSizeBytes);
  return record.offsetBytes % chunkBytes === 0 && record.offsetBytes + record.lengthBytes === chunkEnd;
}

function matchesOperation(record: RecordSummary, operation: ModelOperation | undefined): boolean {
  if (operation === undefined) return false;
  if (operation.kind !== record.kind || operation.offsetBytes !== record.offsetBytes || operation.lengthBytes !== record.lengthBytes) return false;
  return operation.kind !== RecordKind.data || (record.payload !== null && record.payload.equals(operation.data!));
}

/**
 * Check a volume just reopened after `session` crashed (null: nothing ran since the model was last
 * verified), then make the model describe it.
 */
export async function verifyRecoveredVolume(
  fileSystem: FileSystem,
  directory: string,
  volume: Volume,
  model: VolumeModel,
  session: Session | null,
): Promise<RecoveryFindings> {
  const problems: string[] = [];
  const operations = session?.appendedOperations() ?? [];
  const bySequence = new Map(operations.map((operation) => [operation.sequence!, operation]));
  const durableSequence = session?.durableSequence ?? model.lastSequence;
  const volumeSizeBytes = model.image.length;
  const chunkBytes = Math.min(volume.config.regionSizeBytes, 1024 * 1024);

  // The log, replayed independently from its first record onto the volume as it was before it:
  // zeroes, or (once history retention deleted older segments) the model's volume then.
  const logDirectory = volumePaths(directory).log;
  const start = logStart(fileSystem, logDirectory);
  if (start === null) {
    return { problems: ['the log has no segment'], blockModelViolations: [], lostOperationCount: 0, sessionEndSequence: 0, recordCount: 0, recoveryRecordCount: 0 };
  }
  const firstSequence = firstLogSequence(fileSystem, logDirectory, start) ?? model.lastSequence + 1;
  if (firstSequence > 1) takePackedRecords(model, operations, firstSequence, problems);
  let replay: Buffer = Buffer.alloc(volumeSizeBytes);
  if (firstSequence > 1) {
    if (model.versions === null) problems.push(`the log starts at record ${firstSequence}, and the model keeps no earlier volume to replay it on`);
    else replay = model.versions.stateThrough(firstSequence - 1);
  }
  const newRecords: RecordSummary[] = [];
  const scan = scanLog(fileSystem, logDirectory, { from: start, expectedSequence: firstSequence, withPayload: true }, ({ header, payload: stored }) => {
    const { sequence, kind, offsetBytes, lengthBytes } = header;
    const payload = kind === RecordKind.data && stored !== null ? decodePayload(stored, header.flags, lengthBytes) : stored;
    if (kind === RecordKind.data || kind === RecordKind.zeroes || kind === RecordKind.trim) {
      applyOperationToRange({ kind, offsetBytes, lengthBytes, data: payload }, 0, replay);
    }
    if (sequence <= model.lastSequence) {
      const known = model.history[sequence - 1]!;
      if (known.kind !== kind || known.offsetBytes !== offsetBytes || known.lengthBytes !== lengthBytes) {
        problems.push(`record ${sequence}, verified before, changed`);
      }
      return;
    }
    const keepPayload = kind === RecordKind.mark || bySequence.get(sequence)?.kind === RecordKind.data || (model.versions !== null && kind === RecordKind.data);
    newRecords.push({ sequence, kind, offsetBytes, lengthBytes, payload: keepPayload && payload !== null ? Buffer.from(payload) : null, timestampMicros: header.timestampMicros });
  });
  const lastSequence = scan.nextSequence - 1;

  // The new records: the crashed session's writes, in order and exact, then what recovery added.
  let sessionEnd = model.lastSequence;
  let recoveryRecordCount = 0;
  for (const record of newRecords) {
    const fromThisRecovery = record.sequence >= volume.recovery.nextSequence;
    if (recoveryRecordCount === 0 && !fromThisRecovery && matchesOperation(record, bySequence.get(record.sequence))) {
      sessionEnd = record.sequence;
    } else if (isRecoveryRecord(record, chunkBytes, volumeSizeBytes)) {
      recoveryRecordCount++;
    } else {
      const operation = bySequence.get(record.sequence);
      problems.push(
        `record ${record.sequence} (kind ${record.kind}, ${record.offsetBytes}+${record.lengthBytes}) is neither its write` +
          `${operation === undefined ? '' : ` (kind ${operation.kind}, ${operation.offsetBytes}+${operation.lengthBytes})`} nor one recovery appends`,
      );
    }
  }

  // The log after recovery: clean to its end, holding everything appended, every durable write included.
  if (scan.tear !== null) problems.push(`the log does not scan cleanly after recovery: ${scan.tear.reason} at ${JSON.stringify(scan.tear.position)}`);
  if (lastSequence !== volume.stats().appendedSequence) problems.push(`the log holds records up to ${lastSequence}, the volume appended up to ${volume.stats().appendedSequence}`);
  if (lastSequence < model.lastSequence) problems.push(`records ${lastSequence + 1}..${model.lastSequence}, verified before, are gone`);
  if (sessionEnd < durableSequence) problems.push(`records ${sessionEnd + 1}..${durableSequence} were acknowledged as durable and are missing`);
  const tear = volume.recovery.tear;
  if (tear !== null && (tear.position.segmentNumber !== volume.recovery.end.segmentNumber || tear.position.offsetBytes !== volume.recovery.end.offsetBytes)) {
    problems.push('recovery went on past a tear');
  }

  // The live image equals the replay of the log.
  const live = await volume.read(0, volumeSizeBytes);
  if (!live.equals(replay)) problems.push(`the live image differs from the replayed log at byte ${firstDifference(live, replay)}`);

  const { badBytes, badBlocks } = checkAgainstHistory(live, model.image, operations, durableSequence);
  if (badBytes.length > 0) {
    problems.push(`${badBytes.length} bytes lost a durable write or hold a value never written there (first: byte ${badBytes[0]})`);
  }
  const blockModelViolations = badBlocks.map((block) => `block ${block} (byte ${block * blockBytes})`);

  // The model now describes the recovered volume.
  model.image = Buffer.from(live);
  for (const { sequence, kind, offsetBytes, lengthBytes, payload, timestampMicros } of newRecords) {
    model.history.push({ kind, offsetBytes, lengthBytes });
    model.versions?.add({ sequence, kind: kind as RecordKind, offsetBytes, lengthBytes, data: kind === RecordKind.data ? payload : null, fromMicros: timestampMicros, toMicros: timestampMicros });
  }
  const lostOperationCount = operations.filter((operation) => operation.sequence! > sessionEnd).length;
  return { problems, blockModelViolations, lostOperationCount, sessionEndSequence: sessionEnd, recordCount: lastSequence, recoveryRecordCount };
}

/** The sequence number of the log's first record (null: the log is empty). */
export function firstLogSequence(fileSystem: FileSystem, logDirectory: string, start: LogPosition): number | null {
  let first: number | null = null;
  scanLog(fileSystem, logDirectory, { from: start, withPayload: false, toSequence: 0 }, ({ header }) => void (first ??= header.sequence));
  return first;
}

/**
 * The log starts at `firstSequence`: the records before it were packed (so durable) and their
 * segments deleted. Those the model has not verified yet are the crashed session's own writes.
 */
function takePackedRecords(model: VolumeModel, operations: readonly ModelOperation[], firstSequence: number, problems: string[]): void {
  const bySequence = new Map(operations.map((operation) => [operation.sequence!, operation]));
  while (model.lastSequence < firstSequence - 1) {
    const sequence = model.lastSequence + 1;
    const operation = bySequence.get(sequence);
    if (operation === undefined) {
      problems.push(`record ${sequence} left the log unverified, and it was not a write of the crashed session`);
      return;
    }
    const { kind, offsetBytes, lengthBytes, data, fromMicros, toMicros } = operation;
    model.history.push({ kind, offsetBytes, lengthBytes });
    model.versions?.add({ sequence, kind, offsetBytes, lengthBytes, data, fromMicros, toMicros });
  }
}

/**
 * Check every byte, and every 4 KiB block, against the writes of the session (in log order) and
 * the image before it:
 *   - a byte holds what the last durable write touching it wrote, or what a later write wrote
 *     there (or, if no durable write touched it, what it held before);
 *   - a block holds the state after the last durable write touching it or after a later write:
 *     stricter, since it rules out a write that surfaced only in part.
 */
function checkAgainstHistory(
  live: Buffer,
  before: Buffer,
  operations: readonly ModelOperation[],
  durableSequence: number,
): { badBytes: number[]; badBlocks: number[] } {
  const operationsByBlock = new Map<number, ModelOperation[]>();
  for (const operation of operations) {
    const firstBlock = Math.floor(operation.offsetBytes / blockBytes);
    const lastBlock = Math.floor((operation.offsetBytes + operation.lengthBytes - 1) / blockBytes);
    for (let block = firstBlock; block <= lastBlock; block++) {
      const list = operationsByBlock.get(block);
      if (list === undefined) operationsByBlock.set(block, [operation]);
      else list.push(operation);
    }
  }
  const badBytes: number[] = [];
  const badBlocks: number[] = [];
  const blockCount = Math.ceil(live.length / blockBytes);
  for (let block = 0; block < blockCount; block++) {
    const offsetBytes = block * blockBytes;
    const actual = live.subarray(offsetBytes, offsetBytes + blockBytes);
    const previous = before.subarray(offsetBytes, offsetBytes + blockBytes);
    const touching = operationsByBlock.get(block);
    if (touching === undefined) {
      if (!actual.equals(previous)) {
        badBlocks.push(block);
        badBytes.push(offsetBytes + firstDifference(actual, previous));
      }
      continue;
    }

    // Whole block: the states after 0, 1, ... of the writes touching it.
    const state = Buffer.from(previous);
    const durableCount = touching.filter((operation) => operation.sequence! <= durableSequence).length;
    let blockLegitimate = durableCount === 0 && actual.equals(state);
    touching.forEach((operation, index) => {
      applyOperationToRange(operation, offsetBytes, state);
      if (!blockLegitimate && index + 1 >= durableCount && actual.equals(state)) blockLegitimate = true;
    });
    if (!blockLegitimate) badBlocks.push(block);
    if (blockLegitimate) continue;

    // Byte by byte.
    const lastDurable = new Int32Array(blockBytes).fill(-1);
    touching.forEach((operation, index) => {
      if (operation.sequence! > durableSequence) return;
      const [from, to] = rangeInBlock(operation, offsetBytes);
      lastDurable.fill(index, from, to);
    });
    const legitimate = new Uint8Array(blockBytes);
    for (let at = 0; at < blockBytes; at++) if (lastDurable[at] === -1 && actual[at] === previous[at]) legitimate[at] = 1;
    touching.forEach((operation, index) => {
      const [from, to] = rangeInBlock(operation, offsetBytes);
      for (let at = from; at < to; at++) {
        if (legitimate[at] === 1 || index < lastDurable[at]!) continue;
        const written = operation.kind === RecordKind.data ? operation.data![offsetBytes + at - operation.offsetBytes]! : 0;
        if (actual[at] === written) legitimate[at] = 1;
      }
    });
    const bad = legitimate.indexOf(0);
    if (bad !== -1) badBytes.push(offsetBytes + bad);
  }
  return { badBytes, badBlocks };
}

function rangeInBlock(operation: ModelOperation, blockOffsetBytes: number): [number, number] {
  const from = Math.max(operation.offsetBytes, blockOffsetBytes) - blockOffsetBytes;
  const to = Math.min(operation.offsetBytes + operation.lengthBytes, blockOffsetBytes + blockBytes) - blockOffsetBytes;
  return [from, to];
}
