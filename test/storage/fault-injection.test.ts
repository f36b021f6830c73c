// Fault-injection tests of the storage layer: a volume on a simulated file system
// (test/support/simulated-file-system.ts) crashed at random moments, by kill -9 or by power loss,
// with failing syncs and a full disk. Real-process kill -9 tests live beside these; here the faults
// are chosen and reproducible.
//
// Invariants checked after every crash and reopen (Volume.open runs recovery), by
// verifyRecoveredVolume in test/support/volume-model.ts:
//   1. Durability: every write acknowledged as durable (resolved with {fua: true}, or resolved
//      before a flush() that resolved) reads back unless a later write overwrote it. Every byte
//      holds what the last durable write touching it wrote, or what a later write wrote there.
//      After a kill -9, every 4 KiB block also holds one whole state of its write history: the one
//      after its last durable write or after a later write. (After a power loss a write never
//      acknowledged as durable may surface in part; see the test 'found whole or not at all'.)
//   2. The live image equals the log: every block read through the volume equals an independent
//      replay (scanLog from the first segment, data/zeroes/trim applied in order to zeroes).
//   3. The log is complete and exact: no durable record is missing, every record of the crashed
//      session is the write that got its sequence number (kind, offset, length, payload), the
//      records after it are recovery's own (region resync, the 'recovered' mark), records verified
//      before never change, and the log scans cleanly to the last record the volume appended.
//   4. Tears: a torn last record is dropped, recovery reports it, and appending resumes: the next
//      crash cycles check 1-3 again on top of it.
//   5. A failed datasync is sticky: afterwards every write and flush is refused with StorageError
//      EIO, nothing is acknowledged as durable that is not, and a crash loses nothing acknowledged.
//   6. A full disk: when the log cannot get a new segment, writes are refused with ENOSPC (and
//      not EIO: the volume does not fail), and nothing acknowledged before is lost.
//   7. Recovery's cost follows the dirty regions: after a clean close nothing is replayed and no
//      region is dirty; after a crash, exactly the records after the checkpoint are replayed.
// While volumes run, every read is also compared with the writes appended before it.
//
// Reproduce a fuzz failure with CDP_FAULT_SEED=<seed> (and CDP_FAULT_CYCLES=<n>); timers still run
// on the wall clock, so a seed reproduces the operations and crash decisions, not every interleaving.

import t from 'tap';
import { KiB, MiB, RecordFlag, StorageError, Volume, logStart, scanLog, storageLimits, volumePaths } from '../../storage/index.js';
import { SimulatedFileSystem, type CrashOptions } from '../support/simulated-file-system.js';
import { chance, mixedBytesFrom, pick, randomBytesFrom, randomInteger, seededRandom, type RandomSource } from '../support/seeded-random.js';
import { Session, VolumeModel, blockBytes, verifyRecoveredVolume, type RecoveryFindings } from '../support/volume-model.js';
import { nextTurn, sleep, withinMs } from '../support/waits.js';

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

const volumeSizeBytes = 8 * MiB;
const regionSizeBytes = 64 * KiB;
const segmentSizeBytes = 64 * MiB;
const volumesDirectory = '/volumes';
const volumeDirectory = `${volumesDirectory}/fault`;
const paths = volumePaths(volumeDirectory);
const firstSegmentPath = `${paths.log}/0000000000000001.wlog`;
const recordHeaderBytes = 48; // docs/formats/write-log.md
const segmentHeaderBytes = 4096;

const isSegmentPath = (filePath: string): boolean => /\.wlog$/.test(filePath);

// ---- helpers ----

async function turns(count: number): Promise<void> {
  for (let turn = 0; turn < count; turn++) await nextTurn();
}

async function waitUntil(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(1);
  }
}

/** Clean regions more often than the default 5 s, so crashes also hit cleaning; restored at teardown. */
function setRegionCleanIntervalMs(t: TapTest, intervalMs: number): void {
  const limits = storageLimits as { regionCleanIntervalMs: number };
  const previous = limits.regionCleanIntervalMs;
  limits.regionCleanIntervalMs = intervalMs;
  t.teardown(() => {
    limits.regionCleanIntervalMs = previous;
  });
}

/**
 * No background zero-filling of log segments (its fdatasync calls would take faults injected for
 * the log writer's own syncs); restored at teardown.
 */
function disableSegmentFilling(t: TapTest): void {
  const limits = storageLimits as { segmentZeroFillBytesPerSecond: number };
  const previous = limits.segmentZeroFillBytesPerSecond;
  limits.segmentZeroFillBytesPerSecond = 0;
  t.teardown(() => {
    limits.segmentZeroFillBytesPerSecond = previous;
  });
}

/** A file system latency mix: mostly the next turn, sometimes a few, rarely a timer tick. */
function randomDelay(random: RandomSource): () => Promise<void> {
  return () => {
    const roll = random();
    if (roll < 0.7) return nextTurn();
    if (roll < 0.95) return turns(randomInteger(random, 2, 4));
    return sleep(1);
  };
}

/** Create the volume and make it durable the way the VolumeStore does (its folder's name included). */
async function createVolume(fileSystem: SimulatedFileSystem): Promise<void> {
  fileSystem.mkdirp(volumesDirectory);
  await fileSystem.syncDirectory('/');
  await Volume.create(volumeDirectory, { name: 'fault', sizeBytes: volumeSizeBytes, regionSizeBytes, segmentSizeBytes }, fileSystem);
  await fileSystem.syncDirectory(volumesDirectory);
}

/** A fresh volume, opened and checked against its model. */
async function startVolume(t: TapTest, fileSystem: SimulatedFileSystem): Promise<{ volume: Volume; model: VolumeModel }> {
  await createVolume(fileSystem);
  const model = new VolumeModel(volumeSizeBytes);
  const volume = await Volume.open(volumeDirectory, fileSystem);
  const findings = await verifyRecoveredVolume(fileSystem, volumeDirectory, volume, model, null);
  t.same(findings.problems, [], 'a new volume reads as zeroes and its log is empty');
  return { volume, model };
}

/** A crash (power loss unless options say kill -9): the session stops counting acknowledgements, the old volume winds down on dead handles. */
async function crash(session: Session, fileSystem: SimulatedFileSystem, random: RandomSource, options?: CrashOptions): Promise<SimulatedFileSystem> {
  session.markCrashed();
  const survivor = fileSystem.crash(random, options);
  await withinMs(session.volume.close().catch(() => undefined), 10_000, 'closing the crashed volume');
  await withinMs(session.settle(), 10_000, "settling the crashed volume's operations");
  return survivor;
}

/** Reopen (recovering) and check every invariant against the model. */
async function reopen(fileSystem: SimulatedFileSystem, model: VolumeModel, session: Session | null): Promise<{ volume: Volume; findings: RecoveryFindings }> {
  const volume = await Volume.open(volumeDirectory, fileSystem);
  const findings = await verifyRecoveredVolume(fileSystem, volumeDirectory, volume, model, session);
  return { volume, findings };
}

function storageErrorCode(error: unknown): string | null {
  return error instanceof StorageError ? error.code : null;
}

// ---- the crash fuzz ----

function randomRange(random: RandomSource): { offsetBytes: number; lengthBytes: number } {
  const roll = random();
  let lengthBytes =
    roll < 0.55 ? randomInteger(random, 1, 16 * KiB) : roll < 0.8 ? randomInteger(random, 16 * KiB, 64 * KiB) : randomInteger(random, 64 * KiB + 1, 256 * KiB);
  const aligned = chance(random, 0.5);
  if (aligned) lengthBytes = Math.max(blockBytes, Math.round(lengthBytes / blockBytes) * blockBytes);
  // Most writes go to a hot area, so blocks are overwritten again and again.
  const areaBytes = chance(random, 0.6) ? 512 * KiB : volumeSizeBytes;
  let offsetBytes = randomInteger(random, 0, areaBytes - 1);
  if (aligned) offsetBytes -= offsetBytes % blockBytes;
  return { offsetBytes: Math.min(offsetBytes, volumeSizeBytes - lengthBytes), lengthBytes };
}

function issueRandomOperation(session: Session, random: RandomSource): Promise<unknown> {
  const { offsetBytes, lengthBytes } = randomRange(random);
  const fua = chance(random, 0.15);
  const roll = random();
  if (roll < 0.75) {
    const data = chance(random, 0.05) ? Buffer.alloc(lengthBytes) : chance(random, 0.5) ? mixedBytesFrom(random, lengthBytes) : randomBytesFrom(random, lengthBytes);
    return session.write(offsetBytes, data, fua);
  }
  if (roll < 0.88) return session.writeZeroes(offsetBytes, lengthBytes, fua);
  return session.trim(offsetBytes, lengthBytes, fua);
}

/** Arm one failing datasync somewhere: the log (or its next segment), the DRL or the live image. */
function armRandomFault(fileSystem: SimulatedFileSystem, session: Session, random: RandomSource): string {
  const target = pick(random, ['log', 'next segment', 'drl', 'primary'] as const);
  const pathMatches =
    target === 'log' ? isSegmentPath : target === 'next segment' ? (filePath: string) => filePath.endsWith('.new') : (filePath: string) => filePath === (target === 'drl' ? paths.drl : paths.primary);
  const unsyncedWrites = chance(random, 0.5) ? 'lost' : 'kept';
  fileSystem.failDatasyncs({ count: 1, pathMatches, unsyncedWrites });
  session.allowedRefusalCodes.add('EIO');
  return `${target} (${unsyncedWrites})`;
}

/** A random stretch of work: concurrent writes, zeroes, trims, flushes, FUA, pauses and reads. */
async function runRandomSteps(session: Session, fileSystem: SimulatedFileSystem, random: RandomSource, faultAtStep: number | null): Promise<string | null> {
  let fault: string | null = null;
  const stepCount = randomInteger(random, 1, 14);
  for (let step = 0; step < stepCount; step++) {
    if (step === faultAtStep) fault = armRandomFault(fileSystem, session, random);
    const roll = random();
    if (roll < 0.4) {
      const count = chance(random, 0.08) ? randomInteger(random, 8, 24) : randomInteger(random, 1, 6);
      const completions: Array<Promise<unknown>> = [];
      for (let index = 0; index < count; index++) completions.push(issueRandomOperation(session, random));
      if (chance(random, 0.5)) await Promise.all(completions);
    } else if (roll < 0.55) {
      const flushed = session.flush();
      if (chance(random, 0.7)) await flushed;
    } else if (roll < 0.65) {
      await sleep(randomInteger(random, 0, 6));
    } else if (roll < 0.8) {
      await turns(randomInteger(random, 1, 8));
    } else if (roll < 0.9) {
      const { offsetBytes, lengthBytes } = randomRange(random);
      await session.checkRead(offsetBytes, lengthBytes);
    } else {
      await session.settle();
    }
  }
  if (chance(random, 0.7)) await turns(randomInteger(random, 0, 3));
  return fault;
}

function randomCrashOptions(random: RandomSource): CrashOptions {
  const roll = random();
  if (roll < 0.25) return { process: true }; // kill -9: the page cache survives, the boot stays
  if (roll < 0.35) return { keepProbability: 1, tearProbability: 0 }; // power loss after everything got out
  if (roll < 0.45) return { keepProbability: 0, tearProbability: 0 }; // nothing unsynced got out
  if (roll < 0.6) return { keepProbability: 0.2, tearProbability: 0.8 }; // mostly torn writes
  return {};
}

/** Open (recovering) and crash again after a few turns, somewhere inside recovery or just after it. */
async function crashDuringRecovery(fileSystem: SimulatedFileSystem, random: RandomSource): Promise<{ fileSystem: SimulatedFileSystem; process: boolean }> {
  const opened = Volume.open(volumeDirectory, fileSystem).then(
    (volume) => volume.close().catch(() => undefined),
    () => undefined,
  );
  await turns(randomInteger(random, 0, 12));
  const options = randomCrashOptions(random);
  const survivor = fileSystem.crash(random, options);
  await withinMs(opened, 10_000, 'winding down the interrupted recovery');
  return { fileSystem: survivor, process: options.process === true };
}

interface FuzzTotals {
  cycles: number;
  acknowledgedDurable: number;
  lostOperations: number;
  tears: number;
  tornWrites: number;
  crashesDuringRecovery: number;
  faults: number;
  failedVolumes: number;
  replayedRecords: number;
  recoveryRecords: number;
  processCrashes: number;
  /** Power losses after which a 4 KiB block held part of a write never acknowledged as durable. */
  partialBlockCrashes: number;
  segmentsMax: number;
}

/**
 * Preload the log close to the end of its first segment, so the cycles that follow switch segments.
 * Records stay within the log reader's 4 MiB read-ahead (larger ones meet the reader bug shown by
 * the test 'the log reads back whole after a record larger than the read-ahead').
 */
async function preloadLog(fileSystem: SimulatedFileSystem, volume: Volume, model: VolumeModel, random: RandomSource): Promise<Volume> {
  const session = new Session(volume, model);
  const chunkBytes = 4 * MiB;
  const chunkCount = Math.floor((segmentSizeBytes - 6 * MiB) / chunkBytes);
  const base = randomBytesFrom(random, chunkBytes);
  for (let index = 0; index < chunkCount; index++) {
    const data = Buffer.from(base);
    data.writeUInt32LE(index, randomInteger(random, 0, chunkBytes - 4)); // distinct records
    await session.write(0, data, false);
  }
  await session.flush();
  await session.settle();
  await volume.close();
  const { volume: reopened, findings } = await reopen(fileSystem, model, session);
  if (findings.problems.length > 0) throw new Error(`preloading the log: ${findings.problems.join('; ')}`);
  return reopened;
}

async function fuzzSeed(t: TapTest, seed: number, cycleCount: number, preload: boolean, totals: FuzzTotals): Promise<void> {
  t.comment(`seed ${seed}: ${cycleCount} crash cycles${preload ? ', log preloaded near the end of its first segment' : ''}`);
  const random = seededRandom(seed);
  let fileSystem = new SimulatedFileSystem({ delay: randomDelay(seededRandom(seed ^ 0x5bd1e995)) });
  const started = await startVolume(t, fileSystem);
  const model = started.model;
  let volume = preload ? await preloadLog(fileSystem, started.volume, model, random) : started.volume;

  for (let cycle = 0; cycle < cycleCount; cycle++) {
    const session = new Session(volume, model);
    const faultAtStep = chance(random, 0.15) ? randomInteger(random, 0, 6) : null;
    const fault = await runRandomSteps(session, fileSystem, random, faultAtStep);
    const failed = session.failed;
    const crashOptions = randomCrashOptions(random);
    fileSystem = await crash(session, fileSystem, random, crashOptions);
    let processCrashOnly = crashOptions.process === true;
    totals.tornWrites += fileSystem.crashReport?.tornWrites.filter((torn) => isSegmentPath(torn.path)).length ?? 0;
    if (chance(random, 0.2)) {
      const again = await crashDuringRecovery(fileSystem, random);
      fileSystem = again.fileSystem;
      processCrashOnly &&= again.process;
      totals.crashesDuringRecovery++;
    }
    const reopened = await reopen(fileSystem, model, session);
    volume = reopened.volume;
    const problems = [...session.problems, ...reopened.findings.problems];
    // After a kill -9 the page cache kept everything: recovery replays the log exactly, so even
    // whole blocks hold states of the write history. A power loss may leave parts of writes never
    // acknowledged as durable (the live image takes writes before the log syncs them).
    const partialBlocks = reopened.findings.blockModelViolations;
    if (processCrashOnly && partialBlocks.length > 0) problems.push(`after a process crash, blocks hold partial writes: ${partialBlocks.slice(0, 3).join(', ')}`);
    totals.partialBlockCrashes += partialBlocks.length > 0 ? 1 : 0;
    totals.processCrashes += processCrashOnly ? 1 : 0;
    totals.recoveryRecords += reopened.findings.recoveryRecordCount;
    const recovery = volume.recovery;
    totals.cycles++;
    totals.acknowledgedDurable += session.appendedOperations().filter((operation) => operation.sequence! <= session.durableSequence).length;
    totals.lostOperations += reopened.findings.lostOperationCount;
    totals.tears += recovery.tear === null ? 0 : 1;
    totals.faults += fault === null ? 0 : 1;
    totals.failedVolumes += failed ? 1 : 0;
    totals.replayedRecords += recovery.replayedRecordCount;
    totals.segmentsMax = Math.max(totals.segmentsMax, fileSystem.list(paths.log).filter(isSegmentPath).length);
    if (problems.length > 0) {
      const { end, nextSequence, tear, replayedRecordCount, removedSegmentCount, machineRestarted, resyncRegions } = recovery;
      const context = {
        session: { firstSequence: session.firstSequence, durableSequence: session.durableSequence, appended: session.appendedOperations().length },
        recovery: { end, nextSequence, tear, replayedRecordCount, removedSegmentCount, machineRestarted, resyncRegionCount: resyncRegions.length },
        segments: fileSystem.list(paths.log),
        crash: { options: crashOptions, torn: fileSystem.crashReport?.tornWrites.length },
      };
      t.same(problems, [], `seed ${seed} cycle ${cycle}${fault === null ? '' : `, fault in ${fault}`}: every invariant holds after the crash`, { context });
      await volume.close();
      return; // later cycles would only repeat the damage
    }
  }
  t.pass(`seed ${seed}: every invariant held after each of ${cycleCount} crashes`);

  // The last recovered volume closes cleanly: reopened, it has nothing to replay.
  await volume.close();
  const { volume: clean, findings } = await reopen(fileSystem, model, null);
  t.same(findings.problems, [], `seed ${seed}: the cleanly closed volume still matches its log`);
  t.equal(clean.recovery.replayedRecordCount, 0, `seed ${seed}: a clean close leaves nothing to replay`);
  await clean.close();
}

t.test('crash fuzz: after every crash and reopen the volume holds what was acknowledged, and equals its log', async (t) => {
  setRegionCleanIntervalMs(t, 4);
  const startedMs = performance.now();
  const onlySeed = process.env.CDP_FAULT_SEED === undefined ? null : Number(process.env.CDP_FAULT_SEED);
  const cycleCount = Number(process.env.CDP_FAULT_CYCLES ?? 40);
  const seeds = onlySeed === null ? [101, 202, 303, 404, 505, 606, 707, 808] : [onlySeed];
  const totals: FuzzTotals = {
    cycles: 0,
    acknowledgedDurable: 0,
    lostOperations: 0,
    tears: 0,
    tornWrites: 0,
    crashesDuringRecovery: 0,
    faults: 0,
    failedVolumes: 0,
    replayedRecords: 0,
    recoveryRecords: 0,
    processCrashes: 0,
    partialBlockCrashes: 0,
    segmentsMax: 0,
  };
  for (const seed of seeds) {
    await t.test(`seed ${seed}`, (t) => fuzzSeed(t, seed, cycleCount, seed % 3 === 0, totals));
  }
  t.comment(`fuzz totals: ${JSON.stringify(totals)} in ${Math.round(performance.now() - startedMs)} ms`);
  if (onlySeed === null) {
    t.ok(totals.acknowledgedDurable > 0 && totals.lostOperations > 0, 'crashes both kept acknowledged writes and lost unacknowledged ones');
    t.ok(totals.tornWrites > 0 && totals.tears > 0, 'crashes tore log writes, and recovery met torn records');
    t.ok(totals.crashesDuringRecovery > 0, 'some crashes hit recovery itself');
    t.ok(totals.faults > 0 && totals.failedVolumes > 0, 'some cycles ran into failing syncs');
    t.ok(totals.segmentsMax > 1, 'the log switched segments');
  }
});

// ---- tears ----

/**
 * Write `data` at `offsetBytes` as the only record of a batch, hold its sync, and crash keeping of
 * the record's bytes only the pieces (sectors, by their offset in the segment) keepPiece chooses;
 * everything else pending survives.
 */
async function crashTearingNextRecord(
  fileSystem: SimulatedFileSystem,
  session: Session,
  random: RandomSource,
  write: { offsetBytes: number; data: Buffer },
  keepPiece: (recordOffsetBytes: number) => (pieceOffsetBytes: number) => boolean,
  tearGranularityBytes = 512,
): Promise<{ survivor: SimulatedFileSystem; recordOffsetBytes: number }> {
  // The record goes where the log ends now. The log writer writes whole 4 KiB blocks (O_DIRECT),
  // so the pending write starts at the block holding that position and is padded with zeroes.
  const logDirectory = volumePaths(volumeDirectory).log;
  const recordOffsetBytes = scanLog(fileSystem, logDirectory, { from: logStart(fileSystem, logDirectory)!, withPayload: false }, () => undefined).end.offsetBytes;
  fileSystem.pauseDatasyncs(isSegmentPath);
  await session.write(write.offsetBytes, write.data, false);
  void session.flush();
  const pendingWrites = () => fileSystem.pendingOperations(firstSegmentPath).filter((operation) => operation.kind === 'write');
  // The batch goes out in one write, so the write holding the record's header holds all of it
  // (whatever size its payload was stored at).
  const covers = () => pendingWrites().some((operation) => operation.offsetBytes <= recordOffsetBytes && operation.offsetBytes + operation.lengthBytes >= recordOffsetBytes + recordHeaderBytes);
  await waitUntil(covers, 'the batch is written');
  if (pendingWrites().length !== 1) throw new Error('expected the record (in one block-aligned write) to be all that is pending');
  const keep = keepPiece(recordOffsetBytes);
  const survivor = await crash(session, fileSystem, random, {
    tearGranularityBytes,
    decide: (operation) => (operation.path === firstSegmentPath && operation.kind === 'write' ? { keepPiece: keep } : 'keep'),
  });
  return { survivor, recordOffsetBytes };
}

t.test('a torn last record is dropped, recovery reports it, and appending resumes after it', async (t) => {
  const random = seededRandom(7);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  await session.write(0, randomBytesFrom(random, 8 * KiB), true);
  const torn = { offsetBytes: 64 * KiB, data: randomBytesFrom(random, 128 * KiB) };
  // Keep the sectors holding the header; lose the rest of the payload.
  const { survivor } = await crashTearingNextRecord(fileSystem, session, random, torn, (recordOffsetBytes) => (piece) => piece < recordOffsetBytes + recordHeaderBytes);
  fileSystem = survivor;
  t.ok((fileSystem.crashReport?.tornWrites.length ?? 0) > 0, 'the crash tore the record');

  let reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, [], 'every invariant holds');
  t.not(volume.recovery.tear, null, 'recovery reports the tear');
  t.match(volume.recovery.tear?.reason ?? '', /checksum/, 'the header is intact, the payload fails its checksum');
  t.equal(reopened.findings.sessionEndSequence, 1, 'the torn record is dropped: the log goes on from the record before it');
  t.same(await volume.read(torn.offsetBytes, torn.data.length), Buffer.alloc(torn.data.length), 'the torn write is not in the image');

  // Appending resumes where the torn record was: more writes, a flush, another crash.
  const next = new Session(volume, model);
  await next.write(64 * KiB + 100, randomBytesFrom(random, 100 * KiB), false);
  await next.write(0, randomBytesFrom(random, 4 * KiB), false);
  await next.writeZeroes(1 * MiB, 8 * KiB, false);
  await next.flush();
  await next.write(2 * MiB, randomBytesFrom(random, 16 * KiB), false);
  fileSystem = await crash(next, fileSystem, random);
  reopened = await reopen(fileSystem, model, next);
  volume = reopened.volume;
  t.same([...next.problems, ...reopened.findings.problems], [], 'after the next crash every invariant holds again');
  t.ok(reopened.findings.sessionEndSequence >= reopened.volume.recovery.nextSequence - 1, 'the log holds the records written after the tear');
  await volume.close();
});

// The same with compressed records (docs/formats/write-log.md): a record of several frames is
// torn after its header; recovery drops it by its checksum over the stored bytes, and the
// compressed records before and after it replay and read back.
t.test('a torn compressed record is dropped, and compressed records around it replay', async (t) => {
  const random = seededRandom(9);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  await session.write(0, Buffer.alloc(16 * KiB, 'a compressed line\n'), true);
  // One frame that compresses, two that do not: stored over 64 KiB, so the batch goes out on a
  // worker thread and waits for its sync, where the crash can catch it.
  const torn = { offsetBytes: 256 * KiB, data: Buffer.concat([Buffer.alloc(64 * KiB, 'a compressed line\n'), randomBytesFrom(random, 128 * KiB)]) };
  const { survivor } = await crashTearingNextRecord(fileSystem, session, random, torn, (recordOffsetBytes) => (piece) => piece < recordOffsetBytes + recordHeaderBytes);
  fileSystem = survivor;
  let reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, [], 'every invariant holds');
  t.match(volume.recovery.tear?.reason ?? '', /checksum/, 'the torn compressed record fails its checksum');
  t.same(await volume.read(torn.offsetBytes, torn.data.length), Buffer.alloc(torn.data.length), 'the torn write is not in the image');

  const next = new Session(volume, model);
  await next.write(300 * KiB, mixedBytesFrom(random, 200 * KiB), false);
  await next.flush();
  await next.write(1 * MiB, Buffer.alloc(64 * KiB, 'another compressed line\n'), false);
  fileSystem = await crash(next, fileSystem, random);
  reopened = await reopen(fileSystem, model, next);
  t.same([...next.problems, ...reopened.findings.problems], [], 'after the next crash every invariant holds again');
  const flags: number[] = [];
  const logDirectory = volumePaths(volumeDirectory).log;
  scanLog(fileSystem, logDirectory, { from: logStart(fileSystem, logDirectory)!, withPayload: false }, ({ header }) => void flags.push(header.flags));
  t.ok(flags.filter((flag) => (flag & RecordFlag.snappy) !== 0).length >= 2, 'the records around the tear are compressed ones');
  await reopened.volume.close();
});

// The header of a record can straddle a sector boundary. When the sector holding its first bytes
// is lost and the next one is kept, the record is torn: it must be reported as a tear, not taken
// for the clean end of the log.
t.test('a torn record whose first header bytes were lost is reported as a tear', async (t) => {
  const random = seededRandom(8);
  let fileSystem = new SimulatedFileSystem();
  const { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  // One record of 48 + 452 bytes at 4096 puts the next header at 4596: 12 bytes before the sector end.
  await session.write(0, randomBytesFrom(random, 452), true);
  const torn = { offsetBytes: 64 * KiB, data: randomBytesFrom(random, 128 * KiB) };
  const sectorEnd = segmentHeaderBytes + 512;
  const { survivor, recordOffsetBytes } = await crashTearingNextRecord(fileSystem, session, random, torn, () => (piece) => piece >= sectorEnd);
  fileSystem = survivor;
  t.equal(recordOffsetBytes, sectorEnd - 12, 'the header straddles the sector boundary');

  const reopened = await reopen(fileSystem, model, session);
  t.same(reopened.findings.problems, [], 'every other invariant holds: the torn write is gone and the log ends cleanly');
  t.equal(reopened.findings.sessionEndSequence, 1, 'the torn record is dropped');
  t.not(reopened.volume.recovery.tear, null, 'recovery reports the torn record as a tear');
  await reopened.volume.close();
});

// The dirty region log keeps two header slots "written alternately" so that a torn header write
// leaves the other slot. The first checkpoint after creation must not overwrite the only valid one.
t.test('a torn dirty-region-log header write leaves the previous header to open with', async (t) => {
  const random = seededRandom(9);
  const fileSystem = new SimulatedFileSystem();
  await createVolume(fileSystem);
  fileSystem.pauseDatasyncs((filePath) => filePath === paths.drl);
  const opening = Volume.open(volumeDirectory, fileSystem).then(
    (volume) => volume.close().catch(() => undefined),
    () => undefined,
  );
  const isSlotWrite = (operation: { kind: string; offsetBytes: number }): boolean => operation.kind === 'write' && operation.offsetBytes < 1024;
  await waitUntil(() => fileSystem.pendingOperations(paths.drl).some(isSlotWrite), 'recovery writes its checkpoint');
  // Sub-sector tearing: only the first 64 bytes of the 512-byte slot reach the disk.
  const survivor = fileSystem.crash(random, {
    tearGranularityBytes: 64,
    decide: (operation) => (operation.path === paths.drl && isSlotWrite(operation) ? { keepPiece: (piece) => piece % 512 < 64 } : 'keep'),
  });
  await withinMs(opening, 10_000, 'winding down the interrupted open');

  const reopened = await Volume.open(volumeDirectory, survivor).then(
    (volume) => ({ volume, error: null }),
    (error: unknown) => ({ volume: null, error }),
  );
  t.equal(reopened.error, null, 'the volume opens from the other header slot', { error: String(reopened.error) });
  await reopened.volume?.close();
});

// docs/decisions/0001: the live image takes a batch once the log has it in the page cache, before
// the log is synced. A power loss can then keep part of that image write while the log loses the
// record; recovery sees a machine restart and logs the dirty regions again, so the log describes
// the image again. (So after a power loss a 4 KiB block may hold part of a write that was never
// acknowledged as durable: the per-block invariant holds after kill -9 only.)
t.test('after a power loss, image writes the log lost are logged again from the dirty regions', async (t) => {
  const random = seededRandom(10);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const blockOffsetBytes = 10 * blockBytes;
  let session = new Session(volume, model);
  await session.write(blockOffsetBytes, randomBytesFrom(random, blockBytes), true);
  await volume.close(); // the checkpoint moves past the durable write
  let reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;

  session = new Session(volume, model);
  // Nothing may make the record durable before the crash (a busy machine gave the log's own
  // timers time to sync it): its segment's syncs are held until the power is cut.
  fileSystem.pauseDatasyncs((filePath) => filePath === firstSegmentPath);
  await session.write(blockOffsetBytes, randomBytesFrom(random, blockBytes), false);
  await waitUntil(() => volume.stats().appliedSequence === volume.stats().appendedSequence, 'the write reaches the live image');
  fileSystem = await crash(session, fileSystem, random, {
    decide: (operation) => {
      if (operation.path === firstSegmentPath && operation.kind === 'write') return 'drop'; // the log loses the record
      if (operation.path === paths.primary && operation.kind === 'write') return { keepPiece: (piece) => piece < blockOffsetBytes + blockBytes / 2 };
      return 'keep';
    },
  });
  reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.equal(reopened.findings.sessionEndSequence, session.firstSequence - 1, 'the log lost the unacknowledged write');
  t.equal(volume.recovery.machineRestarted, true, 'recovery sees the machine restart');
  t.same(volume.recovery.resyncRegions, [Math.floor(blockOffsetBytes / regionSizeBytes)], 'the dirty region is logged again');
  t.same(reopened.findings.problems, [], 'every byte holds a legitimate value, and the log describes the image');
  t.comment(`4 KiB blocks holding part of the unacknowledged write: ${reopened.findings.blockModelViolations.length}`);
  await volume.close();
});

// ---- the log reader ----

// scanLog reads segments through a 4 MiB read-ahead buffer that grows for a larger record. After
// it grew, a refill reads only 4 MiB but the buffer is trusted to its full length, so the records
// in the rest read as zeroes: a false tear (or a false clean end), and recovery cuts the log there.
t.test('the log reads back whole after a record larger than the read-ahead, and recovery keeps what follows it', async (t) => {
  const random = seededRandom(41);
  let fileSystem = new SimulatedFileSystem();
  const { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  await session.write(0, randomBytesFrom(random, 8 * MiB), false);
  const followers = Array.from({ length: 6 }, () => randomBytesFrom(random, 1 * MiB));
  for (const [index, data] of followers.entries()) await session.write(index * MiB, data, false);
  t.equal((await session.flush()).error, null, 'all seven records are durable');

  const scanned = scanLog(fileSystem, paths.log, { from: logStart(fileSystem, paths.log)!, expectedSequence: 1, withPayload: false }, () => undefined);
  t.equal(scanned.tear, null, 'a scan of the log finds no tear');
  t.equal(scanned.recordCount, 7, 'a scan of the log finds all seven records');

  // A crash before the region cleaner moved the checkpoint: recovery scans from before the large record.
  fileSystem = await crash(session, fileSystem, random, { process: true });
  const reopened = await Volume.open(volumeDirectory, fileSystem);
  t.equal(reopened.recovery.tear, null, 'recovery finds no tear');
  t.equal(reopened.recovery.nextSequence, 8, 'recovery keeps all seven durable records');
  for (const [index, data] of followers.entries()) {
    t.ok((await reopened.read(index * MiB, data.length)).equals(data), `the durable 1 MiB write ${index + 1} reads back`);
  }
  await reopened.close();
});

// ---- failing syncs ----

/** Writes and a flush after a failure: each must be refused with StorageError EIO. */
async function expectEverythingRefused(t: TapTest, session: Session, random: RandomSource, what: string): Promise<void> {
  const outcomes = await Promise.all([
    session.write(0, randomBytesFrom(random, 4 * KiB), false),
    session.write(12 * KiB, randomBytesFrom(random, 80 * KiB), true),
    session.writeZeroes(1 * MiB, 4 * KiB, false),
    session.trim(2 * MiB, 64 * KiB, true),
  ]);
  t.same(
    outcomes.map((outcome) => storageErrorCode(outcome.error)),
    ['EIO', 'EIO', 'EIO', 'EIO'],
    `${what}: writes, zeroes and trims are refused with EIO`,
  );
  t.equal(storageErrorCode((await session.flush()).error), 'EIO', `${what}: flush is refused with EIO`);
}

t.test('a failed write-log datasync is sticky, and no write it lost is acknowledged', async (t) => {
  disableSegmentFilling(t);
  const random = seededRandom(11);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  const durable = [randomBytesFrom(random, 64 * KiB), randomBytesFrom(random, 128 * KiB)];
  await session.write(0, durable[0]!, false);
  await session.write(128 * KiB, durable[1]!, true);
  await session.flush();
  t.equal(session.durableSequence, 2, 'two writes acknowledged as durable');

  session.allowedRefusalCodes.add('EIO');
  fileSystem.failDatasyncs({ count: 1, pathMatches: isSegmentPath });
  const [buffered, forced] = await Promise.all([
    session.write(512 * KiB, randomBytesFrom(random, 64 * KiB), false),
    session.write(1 * MiB, randomBytesFrom(random, 200 * KiB), true),
  ]);
  t.equal(buffered.error, null, 'a write without FUA is acknowledged once appended (not as durable)');
  t.equal(storageErrorCode(forced.error), 'EIO', 'the FUA write whose batch failed to sync is refused with EIO');
  t.not(volume.stats().failed, null, 'the volume reports itself failed');
  t.equal(volume.stats().durableSequence, 2, 'nothing past the failed batch counts as durable');

  // The fault is gone: a retried fdatasync would succeed (the kernel forgot the error), yet:
  await expectEverythingRefused(t, session, random, 'right after the failure');
  await sleep(20);
  await expectEverythingRefused(t, session, random, 'later');
  t.same(session.problems, [], 'nothing was acknowledged after the failure');

  fileSystem = await crash(session, fileSystem, random);
  const reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, [], 'after a crash every invariant holds');
  t.equal(reopened.findings.sessionEndSequence, 2, 'of that session the log holds the two durable records only');
  t.same(await volume.read(0, 64 * KiB), durable[0], 'the flushed write is intact');
  t.same(await volume.read(128 * KiB, 128 * KiB), durable[1], 'the FUA write is intact');

  const after = new Session(volume, model);
  const outcome = await after.write(0, randomBytesFrom(random, 4 * KiB), true);
  t.equal(outcome.error, null, 'after the restart the volume takes writes again');
  await volume.close();
});

t.test('a failed dirty-region-log datasync is sticky, and what was acknowledged survives', async (t) => {
  const random = seededRandom(12);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  const acknowledged = randomBytesFrom(random, 20 * KiB);
  t.equal((await session.write(1 * regionSizeBytes, acknowledged, true)).error, null, 'a FUA write before the fault');
  session.allowedRefusalCodes.add('EIO');
  fileSystem.failDatasyncs({ count: 1, pathMatches: (filePath) => filePath === paths.drl });
  const data = randomBytesFrom(random, 96 * KiB);
  const forced = await session.write(3 * regionSizeBytes, data, true);
  t.ok(forced.error === null || storageErrorCode(forced.error) === 'EIO', 'the FUA write in the batch whose regions could not be marked is acknowledged (its record is durable) or refused with EIO');
  await waitUntil(() => volume.stats().failed !== null, 'the volume fails');
  await expectEverythingRefused(t, session, random, 'after the DRL failed');
  t.same(session.problems, []);

  fileSystem = await crash(session, fileSystem, random);
  const reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, [], 'after a crash every invariant holds');
  t.same(await volume.read(1 * regionSizeBytes, acknowledged.length), acknowledged, 'the write acknowledged before the fault is intact');
  if (forced.error === null) t.same(await volume.read(3 * regionSizeBytes, data.length), data, 'the acknowledged FUA write is intact');
  await volume.close();
});

t.test('a failed live-image datasync while cleaning is sticky; replay restores what it lost', async (t) => {
  setRegionCleanIntervalMs(t, 5);
  const random = seededRandom(13);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  const session = new Session(volume, model);
  session.allowedRefusalCodes.add('EIO');
  const data = randomBytesFrom(random, 256 * KiB);
  fileSystem.failDatasyncs({ count: 1, pathMatches: (filePath) => filePath === paths.primary });
  await session.write(5 * regionSizeBytes + 17, data, false);
  await session.flush();
  await waitUntil(() => volume.stats().failed !== null, 'cleaning meets the failed datasync');
  await expectEverythingRefused(t, session, random, 'after the live image failed');
  t.same(await volume.read(5 * regionSizeBytes + 17, data.length), data, 'reads still see the write');
  t.same(session.problems, []);

  fileSystem = await crash(session, fileSystem, random, { keepProbability: 0, tearProbability: 0 });
  const reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, [], 'after a crash every invariant holds');
  t.ok(volume.recovery.replayedRecordCount >= 1, 'the checkpoint did not move past the lost image writes: they are replayed');
  t.same(await volume.read(5 * regionSizeBytes + 17, data.length), data, 'the flushed write is intact');
  await volume.close();
});

// ---- a full disk ----

/** Fill the first segment with fifteen 4 MiB records (a sixteenth does not fit), on a disk without room for another. */
async function fillFirstSegment(t: TapTest, fileSystem: SimulatedFileSystem, random: RandomSource): Promise<{ session: Session; chunk: (index: number) => Buffer }> {
  await createVolume(fileSystem);
  fileSystem.setSpaceBudget(1 * MiB); // less than a segment
  const model = new VolumeModel(volumeSizeBytes);
  const volume = await Volume.open(volumeDirectory, fileSystem);
  t.same((await verifyRecoveredVolume(fileSystem, volumeDirectory, volume, model, null)).problems, [], 'the volume opens on a full disk');
  const session = new Session(volume, model);
  session.allowedRefusalCodes.add('ENOSPC');
  const chunkBytes = 4 * MiB;
  const base = randomBytesFrom(random, chunkBytes);
  const chunk = (index: number): Buffer => {
    const data = Buffer.from(base);
    data.writeUInt32LE(index + 1, index * 4096);
    return data;
  };
  const fitting = await Promise.all(Array.from({ length: 15 }, (_, index) => session.write((index % 2) * chunkBytes, chunk(index), false)));
  t.same(
    fitting.map((outcome) => outcome.error),
    Array(15).fill(null),
    'fifteen 4 MiB records fit the first segment',
  );
  t.equal((await session.flush()).error, null, 'flushed');
  return { session, chunk };
}

t.test('a full disk: when the log cannot get a new segment, writes are refused with ENOSPC and nothing acknowledged is lost', async (t) => {
  const random = seededRandom(21);
  let fileSystem = new SimulatedFileSystem();
  const { session, chunk } = await fillFirstSegment(t, fileSystem, random);
  const volume = session.volume;
  const refused = await session.write(0, chunk(15), false);
  t.equal(storageErrorCode(refused.error), 'ENOSPC', 'the write that needs a new segment is refused with ENOSPC');
  t.equal(volume.stats().failed, null, 'a full disk does not fail the volume');
  const small = await session.write(4096, randomBytesFrom(random, 4 * KiB), true);
  t.equal(small.error, null, 'a write that still fits the segment is taken');
  t.equal((await session.flush()).error, null, 'flush works');
  t.same(session.problems, []);

  fileSystem = await crash(session, fileSystem, random, { process: true });
  let reopened = await reopen(fileSystem, session.model, session);
  t.same(reopened.findings.problems, [], 'after a process crash on the full disk every invariant holds');
  t.equal(reopened.findings.sessionEndSequence, 16, 'every acknowledged record is there');

  // Space comes back: after the writer's retry delay the next segment is made and writes continue.
  const later = new Session(reopened.volume, session.model);
  later.allowedRefusalCodes.add('ENOSPC');
  t.equal(storageErrorCode((await later.write(0, chunk(16), false)).error), 'ENOSPC', 'still refused while the disk is full');
  fileSystem.setSpaceBudget(null);
  await sleep(1100);
  t.equal((await later.write(0, chunk(17), false)).error, null, 'taken once there is space again');
  t.equal((await later.flush()).error, null, 'flushed into the new segment');
  fileSystem = await crash(later, fileSystem, random);
  reopened = await reopen(fileSystem, session.model, later);
  t.same([...later.problems, ...reopened.findings.problems], [], 'after a power loss every invariant holds');
  t.ok(fileSystem.list(paths.log).filter(isSegmentPath).length >= 2, 'the log continued in a second segment');
  await reopened.volume.close();
});

// After a power loss, Volume.open logs the dirty regions again (resync) and appends a 'recovered'
// mark before it returns. On a full disk whose current segment is full, that needs a segment it
// cannot get: the volume must still open (and serve reads), with nothing acknowledged lost.
t.test('a power loss on a full disk: the volume reopens and nothing acknowledged is lost', async (t) => {
  const random = seededRandom(22);
  let fileSystem = new SimulatedFileSystem();
  const { session } = await fillFirstSegment(t, fileSystem, random);
  fileSystem = await crash(session, fileSystem, random, { keepProbability: 0, tearProbability: 0 });
  const opened = await Volume.open(volumeDirectory, fileSystem).then(
    (volume) => ({ volume, error: null }),
    (error: unknown) => ({ volume: null, error }),
  );
  t.equal(opened.error, null, 'the volume opens after a power loss on a full disk', { error: String(opened.error) });
  if (opened.volume === null) return;
  const findings = await verifyRecoveredVolume(fileSystem, volumeDirectory, opened.volume, session.model, session);
  t.same(findings.problems, [], 'every invariant holds');
  await opened.volume.close();
});

t.test('a full disk when creating a volume is reported as ENOSPC', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  fileSystem.setSpaceBudget(1 * MiB);
  const error = await createVolume(fileSystem).then(
    () => null,
    (caught: unknown) => caught,
  );
  t.equal((error as { code?: string } | null)?.code, 'ENOSPC', 'the image allocation fails with ENOSPC');
});

// ---- recovery cost ----

/** Three writes in three regions, flushed and applied to the live image. */
async function writeThreeRegions(session: Session, random: RandomSource, regions: [number, number, number]): Promise<void> {
  await session.write(regions[0] * regionSizeBytes, randomBytesFrom(random, 4 * KiB), false);
  await session.write(regions[1] * regionSizeBytes + 100, randomBytesFrom(random, 1000), false);
  await session.trim(regions[2] * regionSizeBytes, 8 * KiB, false);
  await session.flush();
  const volume = session.volume;
  await waitUntil(() => volume.stats().appliedSequence === volume.stats().appendedSequence, 'the writes reach the live image');
}

t.test("recovery's cost follows the dirty regions", async (t) => {
  const random = seededRandom(31);
  let fileSystem = new SimulatedFileSystem();
  let { volume, model } = await startVolume(t, fileSystem);
  t.equal(volume.recovery.replayedRecordCount, 0, 'a new volume replays nothing');
  t.equal(volume.recovery.dirtyRegionCount, 0, 'a new volume has no dirty region');

  let session = new Session(volume, model);
  await writeThreeRegions(session, random, [1, 7, 100]);
  await volume.close();
  let reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, []);
  t.equal(volume.recovery.replayedRecordCount, 0, 'after a clean close nothing is replayed');
  t.equal(volume.recovery.dirtyRegionCount, 0, 'after a clean close no region is dirty');
  t.equal(volume.recovery.tear, null, 'and the log ends cleanly');

  // A process crash: exactly the three written regions are dirty, their records replayed.
  session = new Session(volume, model);
  await writeThreeRegions(session, random, [2, 9, 120]);
  fileSystem = await crash(session, fileSystem, random, { process: true });
  reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, []);
  t.equal(volume.recovery.machineRestarted, false, 'the machine did not restart');
  t.equal(volume.recovery.dirtyRegionCount, 3, 'the three written regions are dirty');
  t.equal(volume.recovery.replayedRecordCount, 3, 'the three records after the checkpoint are replayed');
  t.equal(volume.recovery.outsideDirtyRegionCount, 0, 'all of them lie in dirty regions');
  t.equal(volume.stats().dirtyRegionCount, 0, 'recovery leaves every region clean');

  // A power loss: the same, and the three dirty regions are logged again from the live image.
  session = new Session(volume, model);
  await writeThreeRegions(session, random, [3, 10, 121]);
  fileSystem = await crash(session, fileSystem, random, { keepProbability: 0, tearProbability: 0 });
  reopened = await reopen(fileSystem, model, session);
  volume = reopened.volume;
  t.same(reopened.findings.problems, []);
  t.equal(volume.recovery.machineRestarted, true, 'the machine restarted');
  t.equal(volume.recovery.dirtyRegionCount, 3, 'the three written regions are dirty');
  t.equal(volume.recovery.replayedRecordCount, 3, 'the three records after the checkpoint are replayed');
  t.same(volume.recovery.resyncRegions, [3, 10, 121], 'only the dirty regions are logged again');

  await volume.close();
  reopened = await reopen(fileSystem, model, null);
  t.same(reopened.findings.problems, []);
  t.equal(reopened.volume.recovery.replayedRecordCount, 0, 'closed cleanly again: nothing to replay');
  t.equal(reopened.volume.recovery.dirtyRegionCount, 0, 'and no dirty region');
  await reopened.volume.close();
});
