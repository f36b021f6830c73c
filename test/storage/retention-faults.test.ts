// Fault injection into the history lifecycle (issue 9 §5): a volume with history on the
// simulated file system (test/support/simulated-file-system.ts), its index in an in-memory
// database with LevelDB's power-loss behaviour (test/support/simulated-index-databases.ts), under a
// policy of second-long tiers on a clock the test moves forward (test/support/virtual-clock.ts).
// Packing, merging and folding run beside host writes and are crashed at a random file system
// operation or index write: in either phase (writing packs, switching) or in housekeeping
// (deleting packs and segments, clearing packed windows' keys), and again inside the recovery
// that redoes them. Crashes are power losses (unsynced writes lost or torn, the index cut back to
// a prefix holding every synced batch) or kill -9 (everything completed survives).
//
// Invariants checked after every crash and reopen:
//   1. Durability and the log (verifyRecoveredVolume, test/support/volume-model.ts): every write
//      acknowledged as durable is in the live image; the live image equals the log replayed on
//      the volume as it was before the log's first record; every record is the write that got
//      its sequence number; records the lifecycle packed away were durable.
//   2. Kept instants: every instant the policy keeps now (the keep-all region, each tier boundary
//      within its tier's reach) and every snapshot not deleted reads, byte for byte, as the model
//      says; so does every point the engine itself says it keeps; none is refused.
//   3. The live image equals the newest view.
//   4. The index agrees with the files: no operation is left pending; the packed region tiles
//      (horizon, fine start) without gaps; every pack the index names exists, whole, of this
//      interval; every other pack file is gone; the base image exists once the horizon moved;
//      the log holds every segment from the fine region's start on.
//   5. The lifecycle did its work under the crashes: packs, merges, folds, segments deleted, and
//      crashes hit each phase (counted and asserted over all seeds).
// Apart from the fuzz: failing syncs of a pack and of the base image fail the operation, which
// is retried, and lose nothing kept; a full disk while packing fails the operation, host writes
// go on in the log's room, and nothing kept is lost.
//
// Reproduce with CDP_RETENTION_FAULT_SEED=<seed> (and CDP_RETENTION_FAULT_CYCLES=<n>). Timers
// still run on the wall clock, so a seed reproduces the operations and crash decisions, not
// every interleaving.

import t from 'tap';
import { KiB, MiB, Volume, logStart, storageLimits, verifyVolume, volumePaths, type PointInTimeView } from '../../storage/index.js';
import type { DeltaMapIndex } from '../../storage/index/delta-map-index.js';
import { lifecycleKey } from '../../storage/index/map-keys.js';
import { indexLimits, lifecycleLimits } from '../../storage/limits.js';
import { packFileName, parsePackFileName, readPackHeader } from '../../storage/retention/pack-file.js';
import { boundariesBetween, type RetentionPolicy } from '../../storage/retention/policy.js';
import { listSegments } from '../../storage/write-log/segment.js';
import { SimulatedFileSystem, type CrashOptions } from '../support/simulated-file-system.js';
import { SimulatedIndexDatabases } from '../support/simulated-index-databases.js';
import { chance, mixedBytesFrom, pick, randomBytesFrom, randomInteger, seededRandom, type RandomSource } from '../support/seeded-random.js';
import { secondTiersPolicy } from '../support/retention-policies.js';
import { installVirtualClock, type VirtualClock } from '../support/virtual-clock.js';
import { nextTurn, sleep, withinMs } from '../support/waits.js';
import { Session, VolumeModel, firstLogSequence, verifyRecoveredVolume, type VolumeVersions } from '../support/volume-model.js';

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

const volumeSizeBytes = 4 * MiB;
const regionSizeBytes = 64 * KiB;
const segmentSizeBytes = 64 * MiB;
const volumesDirectory = '/volumes';
const volumeDirectory = `${volumesDirectory}/kept`;
const paths = volumePaths(volumeDirectory);
const second = 1_000_000;
/** Instants this close to a moving edge of the policy, or to a write, are not judged. */
const marginMicros = 300_000;

const policy = secondTiersPolicy;
const keptSecondsMax = 12;

// ---- the machine: its file system, its index databases, and where to crash them ----

/** Crashes the machine at the n-th file system operation or index write after it is armed. */
class CrashPoint {
  private countdown: number | null = null;
  private fire: (() => void) | null = null;

  arm(count: number, fire: () => void): void {
    this.countdown = count;
    this.fire = fire;
  }

  disarm(): void {
    this.countdown = null;
    this.fire = null;
  }

  event(): void {
    if (this.countdown === null || this.countdown-- > 0) return;
    const fire = this.fire!;
    this.disarm();
    fire();
  }
}

interface Machine {
  fileSystem: SimulatedFileSystem;
  indexes: SimulatedIndexDatabases;
}


/** A file system latency mix, and a crash point every operation passes. */
function machineDelay(random: RandomSource, crashPoint: CrashPoint): () => Promise<void> {
  return () => {
    crashPoint.event();
    const roll = random();
    if (roll < 0.8) return nextTurn();
    if (roll < 0.97) return nextTurn().then(nextTurn);
    return sleep(1);
  };
}

function newMachine(random: RandomSource, crashPoint: CrashPoint): Machine {
  const indexes = new SimulatedIndexDatabases();
  indexes.onWrite = () => crashPoint.event();
  return { fileSystem: new SimulatedFileSystem({ delay: machineDelay(random, crashPoint) }), indexes };
}

function randomCrashOptions(random: RandomSource): CrashOptions {
  const roll = random();
  if (roll < 0.25) return { process: true }; // kill -9
  if (roll < 0.35) return { keepProbability: 1, tearProbability: 0 };
  if (roll < 0.45) return { keepProbability: 0, tearProbability: 0 };
  if (roll < 0.6) return { keepProbability: 0.2, tearProbability: 0.8 };
  return {};
}

/** What a crash with these options leaves of the machine. */
function crashMachine(machine: Machine, random: RandomSource, options: CrashOptions, crashPoint: CrashPoint): Machine {
  const fileSystem = machine.fileSystem.crash(random, options);
  const indexKeep = options.keepProbability === 1 ? { keepProbability: 1 } : options.keepProbability === 0 ? { keepProbability: 0 } : {};
  const indexes = machine.indexes.crash(random, { process: options.process === true, ...indexKeep });
  indexes.onWrite = () => crashPoint.event();
  return { fileSystem, indexes };
}

function openVolume(machine: Machine): Promise<Volume> {
  return Volume.open(volumeDirectory, machine.fileSystem, { history: true, indexDatabase: machine.indexes.factory });
}

async function createVolume(machine: Machine): Promise<void> {
  machine.fileSystem.mkdirp(volumesDirectory);
  await machine.fileSystem.syncDirectory('/');
  await Volume.create(volumeDirectory, { name: 'kept', sizeBytes: volumeSizeBytes, regionSizeBytes, segmentSizeBytes }, machine.fileSystem);
  await machine.fileSystem.syncDirectory(volumesDirectory);
}

/** The volume's index and lifecycle state (storage internals: tests may look). */
function indexOf(volume: Volume): DeltaMapIndex {
  return (volume.history as unknown as { index: DeltaMapIndex }).index;
}


/** Limits for these tests (restored at teardown): many small windows, no timer-driven passes, fast lifecycle I/O. */
function setTestLimits(t: TapTest): void {
  const changes: Array<[Record<string, number>, string, number]> = [
    [indexLimits as unknown as Record<string, number>, 'windowRecordsMax', 16],
    [lifecycleLimits as unknown as Record<string, number>, 'checkIntervalMs', 3_600_000],
    [lifecycleLimits as unknown as Record<string, number>, 'ioBytesPerSecond', 1024 * MiB],
    [storageLimits as unknown as Record<string, number>, 'regionCleanIntervalMs', 5],
    [storageLimits as unknown as Record<string, number>, 'segmentZeroFillBytesPerSecond', 0],
  ];
  for (const [limits, name, value] of changes) {
    const previous = limits[name]!;
    limits[name] = value;
    t.teardown(() => {
      limits[name] = previous;
    });
  }
}

function useVirtualClock(t: TapTest): VirtualClock {
  const clock = installVirtualClock();
  t.teardown(() => clock.restore());
  return clock;
}

// ---- host writes ----

/** Random data writes (some large), zeroes and trims, with FUA sometimes. */
function issueHostWrite(session: Session, random: RandomSource, bulk: Buffer): Promise<unknown> {
  const roll = random();
  if (roll < 0.04) {
    // The whole volume, nearly incompressible: fills log segments, so whole segments get packed and deleted.
    const data = Buffer.from(bulk);
    data.writeUInt32LE(randomInteger(random, 0, 0xffffffff), randomInteger(random, 0, (data.length - 4) >> 2) * 4);
    return session.write(0, data, chance(random, 0.3));
  }
  const lengthBytes = chance(random, 0.5) ? randomInteger(random, 1, 8) * 4 * KiB : randomInteger(random, 1, 48 * KiB);
  const hot = chance(random, 0.6);
  const offsetBytes = randomInteger(random, 0, (hot ? 512 * KiB : volumeSizeBytes) - lengthBytes);
  const fua = chance(random, 0.15);
  if (roll < 0.85) return session.write(offsetBytes, chance(random, 0.5) ? mixedBytesFrom(random, lengthBytes) : randomBytesFrom(random, lengthBytes), fua);
  if (roll < 0.93) return session.writeZeroes(offsetBytes, lengthBytes, fua);
  return session.trim(offsetBytes, lengthBytes, fua);
}

/** A stretch of host work beside the lifecycle: writes, flushes, reads checked, cuts. */
async function hostWork(session: Session, random: RandomSource, bulk: Buffer, steps: number): Promise<void> {
  for (let step = 0; step < steps && !session.isCrashed; step++) {
    const roll = random();
    if (roll < 0.55) {
      const writes = Array.from({ length: randomInteger(random, 1, 5) }, () => issueHostWrite(session, random, bulk));
      if (chance(random, 0.5)) await Promise.all(writes);
    } else if (roll < 0.7) {
      await session.flush();
    } else if (roll < 0.8) {
      const lengthBytes = randomInteger(random, 1, 64 * KiB);
      await session.checkRead(randomInteger(random, 0, volumeSizeBytes - lengthBytes), lengthBytes);
    } else if (roll < 0.9) {
      session.volume.history?.cutIfDue();
      await nextTurn();
    } else {
      await sleep(randomInteger(random, 0, 3));
    }
  }
}

// ---- the model of what is kept ----

interface ModelSnapshot {
  name: string;
  sequence: number;
  pinned: boolean;
  deleted: boolean;
  /** The volume as of the snapshot, once the model forgot the records before it. */
  state: Buffer | null;
}

function snapshotState(versions: VolumeVersions, snapshot: ModelSnapshot): Buffer {
  return snapshot.state ?? versions.stateThrough(snapshot.sequence);
}

/**
 * Forget the volume as of records no check will ask for again: older than every tier's reach,
 * and than the log's first record (the next verification replays the log on the volume before it).
 */
function forgetOldVersions(model: VolumeModel, snapshots: readonly ModelSnapshot[], nowMicros: number, fileSystem: SimulatedFileSystem): void {
  const versions = model.versions!;
  const logFirst = firstLogSequence(fileSystem, paths.log, logStart(fileSystem, paths.log)!) ?? model.lastSequence + 1;
  const reach = versions.lastDataAt(nowMicros - keptSecondsMax * second - 4 * marginMicros, 0);
  if (reach === null) return;
  const oldest = Math.min(reach, logFirst - 1);
  if (oldest <= versions.oldestSequence) return;
  for (const snapshot of snapshots) if (!snapshot.deleted && snapshot.state === null && snapshot.sequence < oldest) snapshot.state = versions.stateThrough(snapshot.sequence);
  versions.forgetBefore(oldest);
}

async function readWhole(view: PointInTimeView): Promise<Buffer> {
  try {
    return await view.read(0, volumeSizeBytes);
  } finally {
    view.release();
  }
}

function firstDifference(left: Buffer, right: Buffer): number {
  for (let index = 0; index < left.length; index++) if (left[index] !== right[index]) return index;
  return -1;
}

/** Read the instant a specification names and compare it with the model's volume then. */
async function expectInstant(
  volume: Volume,
  instant: { micros: number } | { snapshot: string } | { sequence: number },
  expected: Buffer,
  label: string,
  problems: string[],
): Promise<boolean> {
  const history = volume.history!;
  try {
    const sequence = await history.sequenceOf(instant);
    const actual = await readWhole(await history.openView(sequence, label));
    if (!actual.equals(expected)) {
      problems.push(`${label}: the view at record ${sequence} differs from the model at byte ${firstDifference(actual, expected)}`);
      return false;
    }
    return true;
  } catch (error) {
    const set = history.lifecycle.keptSet;
    const kept = set === null ? '' : `; kept from record ${set.continuousFromSequence} (time ${set.continuousFromMicros}), points ${JSON.stringify(set.points.map((point) => point.sequence))}`;
    problems.push(`${label}: refused (${error instanceof Error ? error.message : String(error)})${kept}`);
    return false;
  }
}

/** Invariants 2 and 3: kept instants, snapshots, the engine's kept points, the newest view. */
async function checkKeptInstants(
  volume: Volume,
  versions: VolumeVersions,
  snapshots: readonly ModelSnapshot[],
  clock: VirtualClock,
  random: RandomSource,
  problems: string[],
  spaceWasShort = false,
): Promise<number> {
  const history = volume.history!;
  let checks = 0;
  const live = await volume.read(0, volumeSizeBytes);
  await volume.flush();
  if (await expectInstant(volume, { sequence: volume.stats().appendedSequence }, live, 'the newest view', problems)) checks++;
  const now = clock.nowMicros();
  const continuousFrom = now - policy.keepAllSeconds * second;
  const created = volume.config.createdMicros;
  // A full disk puts the engine under space pressure: it may give up kept history, oldest first
  // (the journal-full policy). Then only what it still keeps, and pinned snapshots, are judged.
  const pressured = spaceWasShort || history.lifecycle.status().underPressure;
  for (const tier of pressured ? [] : policy.tiers) {
    for (const micros of boundariesBetween(tier.every, Math.max(created, now - tier.keepSeconds * second) + marginMicros, continuousFrom - marginMicros)) {
      const shown = versions.lastDataAt(micros, marginMicros / 4);
      if (shown === null || shown < versions.oldestSequence) continue;
      if (micros < clock.nowMicros() - tier.keepSeconds * second + marginMicros) continue; // reading views took long: leaving its tier now
      if (await expectInstant(volume, { micros }, versions.stateThrough(shown), `tier point ${micros} (every ${String(tier.every)} s)`, problems)) checks++;
    }
  }
  for (let sample = 0; sample < (pressured ? 0 : 3); sample++) {
    const micros = randomInteger(random, Math.max(created + 1, continuousFrom + marginMicros), now);
    const shown = versions.lastDataAt(micros, marginMicros / 4);
    if (shown === null) continue;
    if (await expectInstant(volume, { micros }, versions.stateThrough(shown), `instant ${micros} of the keep-all region (now ${now}, shows record ${shown})`, problems)) checks++;
  }
  for (const snapshot of snapshots) {
    if (snapshot.deleted || (pressured && !snapshot.pinned)) continue;
    if (await expectInstant(volume, { snapshot: snapshot.name }, snapshotState(versions, snapshot), `snapshot ${snapshot.name}${snapshot.pinned ? ' (pinned)' : ''}`, problems)) checks++;
  }
  // Whatever the engine itself keeps must read right too.
  for (const point of history.lifecycle.keptSet?.points ?? []) {
    const tier = policy.tiers[point.grade];
    const nearReach = tier !== undefined && point.micros < clock.nowMicros() - tier.keepSeconds * second + marginMicros; // may expire while we look
    if (point.sequence < versions.oldestSequence || nearReach) continue;
    if (await expectInstant(volume, { sequence: point.sequence }, versions.stateThrough(point.sequence), `kept point ${point.sequence} (${point.reasons.join(', ')})`, problems)) checks++;
  }
  return checks;
}

/** Invariant 4: the index agrees with the files. */
function checkIndexAndFiles(volume: Volume, fileSystem: SimulatedFileSystem): string[] {
  const problems: string[] = [];
  const { intervals } = indexOf(volume).lifecycleAccess();
  const state = intervals.state;
  if (state.pending !== null) problems.push(`a ${state.pending.kind} is still pending (${state.pending.phase}) after open`);
  if (state.obsoletePacks.length > 0) problems.push(`obsolete packs ${state.obsoletePacks.join(', ')} are still listed after open`);
  let expectedFirst = state.horizonSequence + 1;
  const named = new Set<number>();
  const volumeId = Buffer.from(volume.config.volumeId, 'hex');
  for (const interval of intervals.intervals) {
    if (interval.firstSequence !== expectedFirst) problems.push(`the packed region has a gap or overlap: an interval starts at ${interval.firstSequence} where ${expectedFirst} was due`);
    expectedFirst = interval.lastSequence + 1;
    if (interval.pack === 0) continue;
    named.add(interval.pack);
    const packPath = `${paths.packs}/${packFileName(interval.pack)}`;
    if (!fileSystem.exists(packPath)) {
      problems.push(`pack ${interval.pack} of interval (${interval.firstSequence - 1}, ${interval.lastSequence}] is missing`);
      continue;
    }
    try {
      const header = readPackHeader(fileSystem, packPath, volumeId);
      if (header.lastSequence !== interval.lastSequence || header.firstSequence !== interval.firstSequence) problems.push(`pack ${interval.pack} holds another interval`);
    } catch (error) {
      problems.push(`pack ${interval.pack} is not whole: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  if (expectedFirst !== state.fineStartSequence) problems.push(`the packed region ends at ${expectedFirst - 1}, the fine region starts at ${state.fineStartSequence}`);
  for (const name of fileSystem.exists(paths.packs) ? fileSystem.list(paths.packs) : []) {
    const pack = parsePackFileName(name);
    if (pack === undefined || !named.has(pack)) problems.push(`${name} is in the packs folder, and the index names no such pack`);
  }
  if (state.horizonSequence > 0 && fileSystem.allocatedBytes(paths.base) < volumeSizeBytes) problems.push('the horizon moved, and the base image is missing or short');
  const segments = listSegments(fileSystem, paths.log);
  const neededFrom = state.fineStartPosition?.segmentNumber ?? segments[0]!;
  if (segments[0]! > neededFrom) problems.push(`segment ${neededFrom} holds records of the fine region and is gone`);
  for (let at = 1; at < segments.length; at++) if (segments[at] !== segments[at - 1]! + 1) problems.push(`segment ${segments[at - 1]! + 1} is missing from the log`);
  return problems;
}

/** Invariants 1 to 4 after a reopen; the model then describes the recovered volume. */
async function checkRecovered(
  machine: Machine,
  volume: Volume,
  model: VolumeModel,
  session: Session,
  snapshots: readonly ModelSnapshot[],
  clock: VirtualClock,
  random: RandomSource,
  spaceWasShort = false,
): Promise<{ problems: string[]; checks: number }> {
  const problems = [...session.problems];
  problems.push(...(await verifyRecoveredVolume(machine.fileSystem, volumeDirectory, volume, model, session)).problems);
  problems.push(...checkIndexAndFiles(volume, machine.fileSystem));
  const checks = await checkKeptInstants(volume, model.versions!, snapshots, clock, random, problems, spaceWasShort);
  return { problems, checks };
}

// ---- the crash fuzz ----

interface FuzzTotals {
  cycles: number;
  checks: number;
  /** Where crashes hit: a phase of an operation, housekeeping and between operations, or a quiet volume. */
  crashPlaces: Record<string, number>;
  crashesDuringRecovery: number;
  redoneAtOpen: number;
  processCrashes: number;
  lostIndexWrites: number;
  packs: number;
  merges: number;
  folds: number;
  segmentsDeleted: number;
  horizonMoves: number;
  verifyRefusedWithPacks: number;
  verifyFirstProblem: string | null;
}

/** Where the crash hit, read from the lifecycle state as it was then. */
function crashPlace(volume: Volume, passRunning: boolean): string {
  const pending = indexOf(volume).intervals.state.pending;
  if (pending !== null) return `${pending.kind} ${pending.phase}`;
  return passRunning ? 'housekeeping or between operations' : 'quiet';
}

async function fuzzSeed(t: TapTest, seed: number, cycleCount: number, clock: VirtualClock, totals: FuzzTotals): Promise<void> {
  const random = seededRandom(seed);
  const crashPoint = new CrashPoint();
  let machine = newMachine(seededRandom(seed ^ 0x5bd1e995), crashPoint);
  await createVolume(machine);
  let volume = await openVolume(machine);
  await volume.setRetentionPolicy(policy);
  const model = new VolumeModel(volumeSizeBytes, { versions: true });
  const snapshots: ModelSnapshot[] = [];
  const bulk = randomBytesFrom(random, volumeSizeBytes);
  let snapshotCounter = 0;
  let horizon = 0;

  for (let cycle = 0; cycle < cycleCount; cycle++) {
    const session = new Session(volume, model);
    // Snapshots are made and deleted before anything is armed: the model knows them for sure.
    if (chance(random, 0.3) && snapshots.filter((snapshot) => !snapshot.deleted).length < 5) {
      const name = `snap-${snapshotCounter++}`;
      const pinned = chance(random, 0.4);
      const made = await session.mark(() => volume.history!.createSnapshot(name, '', { pinned }));
      snapshots.push({ name, sequence: made.sequence!, pinned, deleted: false, state: null });
    } else if (chance(random, 0.15)) {
      const live = snapshots.filter((snapshot) => !snapshot.deleted);
      if (live.length > 0) {
        const victim = pick(random, live);
        await session.mark(() => volume.history!.deleteSnapshot(victim.name));
        victim.deleted = true;
      }
    }
    // Time passes in steps, with writes in between: windows end at every second's boundary.
    for (let step = randomInteger(random, 1, 3); step > 0; step--) {
      clock.advanceMs(randomInteger(random, 150, 1200));
      await hostWork(session, random, bulk, randomInteger(random, 2, 10));
    }
    volume.history!.cutIfDue();
    await volume.history!.settled();

    // A lifecycle pass with host writes beside it, crashed at a random operation (or after it).
    const crashOptions = randomCrashOptions(random);
    let place = '';
    let passRunning = true;
    let fire = (): void => undefined;
    const crashed = new Promise<void>((resolve) => {
      fire = () => {
        if (place !== '') return;
        place = crashPlace(volume, passRunning);
        session.markCrashed();
        machine = crashMachine(machine, random, crashOptions, crashPoint);
        resolve();
      };
    });
    if (chance(random, 0.85)) crashPoint.arm(randomInteger(random, 0, 250), fire);
    const pass = volume.history!.lifecycle.tick().finally(() => (passRunning = false));
    const host = hostWork(session, random, bulk, randomInteger(random, 2, 12));
    await Promise.race([crashed, Promise.all([pass, host])]);
    crashPoint.disarm();
    fire(); // the pass and the host work are done: crash now (a quiet volume)
    const statistics = volume.history!.lifecycle.statistics;
    totals.crashPlaces[place] = (totals.crashPlaces[place] ?? 0) + 1;
    totals.processCrashes += crashOptions.process === true ? 1 : 0;
    totals.lostIndexWrites += machine.indexes.crashReport?.lostWrites ?? 0;
    totals.packs += statistics.packs;
    totals.merges += statistics.merges;
    totals.folds += statistics.folds;
    totals.segmentsDeleted += statistics.segmentsDeleted;
    await withinMs(volume.close().catch(() => undefined), 20_000, 'closing the crashed volume');
    await withinMs(session.settle(), 20_000, "settling the crashed volume's operations");
    await withinMs(pass, 20_000, 'the crashed lifecycle pass');

    // Sometimes the recovery (which redoes an interrupted switch) is crashed too.
    if (chance(random, 0.35)) {
      const options = randomCrashOptions(random);
      let crashedRecovery = false;
      const opening = machine;
      const pendingBefore = await pendingAtOpen(opening);
      crashPoint.arm(randomInteger(random, 0, 120), () => {
        crashedRecovery = true;
        machine = crashMachine(machine, random, options, crashPoint);
      });
      await withinMs(
        openVolume(opening).then(
          (opened) => opened.close().catch(() => undefined),
          () => undefined,
        ),
        20_000,
        'the interrupted recovery',
      );
      crashPoint.disarm();
      if (crashedRecovery) {
        totals.crashesDuringRecovery++;
        if (pendingBefore) totals.redoneAtOpen++;
      }
    }

    volume = await openVolume(machine);
    const { problems, checks } = await checkRecovered(machine, volume, model, session, snapshots, clock, random);
    totals.checks += checks;
    const state = indexOf(volume).intervals.state;
    if (state.horizonSequence > horizon) totals.horizonMoves++;
    horizon = state.horizonSequence;
    if (state.horizonSequence > 0 || indexOf(volume).intervals.intervals.length > 0 || cycle % 8 === 7) {
      const report = await verifyVolume(volume);
      if (!report.ok) {
        if (state.horizonSequence > 0 || indexOf(volume).intervals.intervals.length > 0) {
          totals.verifyRefusedWithPacks++;
          totals.verifyFirstProblem ??= JSON.stringify({ records: report.records.badCount, missing: report.records.missing, maps: report.maps.mismatchBytes, image: report.image.mismatchBytes });
        } else {
          problems.push(`verifyVolume finds problems with nothing packed: ${JSON.stringify({ records: report.records, maps: report.maps.mismatchBytes, image: report.image.mismatchBytes })}`);
        }
      }
    }
    totals.cycles++;
    if (problems.length > 0) {
      t.same(problems, [], `seed ${seed} cycle ${cycle}: every invariant holds after a crash (${place}, ${JSON.stringify(crashOptions)})`, {
        intervals: volume.history!.lifecycle.debugIntervals(),
        state: { ...state, pending: state.pending?.phase ?? null },
      });
      await volume.close();
      return;
    }
    forgetOldVersions(model, snapshots, clock.nowMicros(), machine.fileSystem);
  }
  t.pass(`seed ${seed}: every invariant held after each of ${cycleCount} crashes`);
  await volume.close();
}

/** Does the volume's index hold an operation that open will finish? (Peeks at a copy of its database.) */
async function pendingAtOpen(machine: Machine): Promise<boolean> {
  const database = machine.indexes.factory(paths.index);
  await database.open();
  try {
    const state = await database.get(lifecycleKey);
    return state !== undefined && (JSON.parse(state.toString('utf8')) as { pending: unknown }).pending !== null;
  } finally {
    await database.close();
  }
}

t.test('crash fuzz of the lifecycle: after every crash and reopen nothing kept or acknowledged is lost, and the log, the index and the files agree', async (t) => {
  setTestLimits(t);
  const clock = useVirtualClock(t);
  const started = process.hrtime.bigint(); // the virtual clock moves performance.now
  const onlySeed = process.env.CDP_RETENTION_FAULT_SEED === undefined ? null : Number(process.env.CDP_RETENTION_FAULT_SEED);
  const cycleCount = Number(process.env.CDP_RETENTION_FAULT_CYCLES ?? 40);
  const seeds = onlySeed === null ? [1, 2, 3, 4] : [onlySeed];
  const totals: FuzzTotals = {
    cycles: 0,
    checks: 0,
    crashPlaces: {},
    crashesDuringRecovery: 0,
    redoneAtOpen: 0,
    processCrashes: 0,
    lostIndexWrites: 0,
    packs: 0,
    merges: 0,
    folds: 0,
    segmentsDeleted: 0,
    horizonMoves: 0,
    verifyRefusedWithPacks: 0,
    verifyFirstProblem: null,
  };
  for (const seed of seeds) await t.test(`seed ${seed}`, (t) => fuzzSeed(t, seed, cycleCount, clock, totals));
  t.comment(`fuzz totals: ${JSON.stringify(totals)} in ${(process.hrtime.bigint() - started) / 1_000_000n} ms`);
  if (onlySeed === null) {
    t.ok(totals.packs > 0 && totals.merges > 0 && totals.folds > 0 && totals.segmentsDeleted > 0, 'the lifecycle packed, merged, folded and deleted segments');
    // Counted over every seed (how many land where varies with timing, never to none).
    const crashesWhere = (matches: (place: string) => boolean): number =>
      Object.entries(totals.crashPlaces).reduce((sum, [place, count]) => sum + (matches(place) ? count : 0), 0);
    t.ok(crashesWhere((place) => place.endsWith('writing')) > 0, 'some crashes hit an operation writing its packs');
    t.ok(crashesWhere((place) => place.endsWith('switching')) > 0, 'some crashes hit a switch');
    t.ok(crashesWhere((place) => place.startsWith('merge')) > 0 && crashesWhere((place) => place.startsWith('fold')) > 0, 'some crashes hit merges, and some folds');
    t.ok(crashesWhere((place) => place.startsWith('housekeeping')) > 0, 'some crashes hit housekeeping or the step between operations');
    t.ok(totals.redoneAtOpen > 0, 'some crashes hit the recovery that redoes an interrupted switch');
    t.ok(totals.lostIndexWrites > 0, 'power losses cut the index back');
  }
});


// ---- chosen faults ----

interface Setup {
  machine: Machine;
  volume: Volume;
  model: VolumeModel;
  session: Session;
  clock: VirtualClock;
  random: RandomSource;
  /** The test made the disk full: space pressure may have given up kept history (the journal-full policy). */
  spaceWasShort?: boolean;
}

/**
 * A volume whose policy was given at creation (so nothing but the lifecycle writes in its folder
 * after open), opened with history on a machine that is never crashed at a chosen point.
 */
async function startSetup(t: TapTest, seed: number, tiers: RetentionPolicy['tiers'] = policy.tiers): Promise<Setup> {
  setTestLimits(t);
  const clock = useVirtualClock(t);
  const random = seededRandom(seed);
  const machine = newMachine(seededRandom(seed + 1), new CrashPoint());
  machine.fileSystem.mkdirp(volumesDirectory);
  await machine.fileSystem.syncDirectory('/');
  const retention = { ...policy, clearTiers: true, tiers: tiers.map((tier) => ({ every: tier.every, keepSeconds: tier.keepSeconds })) };
  await Volume.create(volumeDirectory, { name: 'kept', sizeBytes: volumeSizeBytes, regionSizeBytes, segmentSizeBytes, retention }, machine.fileSystem);
  await machine.fileSystem.syncDirectory(volumesDirectory);
  const volume = await openVolume(machine);
  const model = new VolumeModel(volumeSizeBytes, { versions: true });
  return { machine, volume, model, session: new Session(volume, model), clock, random };
}

/** Writes spread over `seconds` seconds of the clock (a few per 400 ms), then the windows cut. */
async function writeForSeconds(setup: Setup, seconds: number): Promise<void> {
  const { session, clock, random, volume } = setup;
  for (let step = 0; step < seconds * 2.5; step++) {
    clock.advanceMs(400);
    for (let write = 0; write < 3; write++) {
      const lengthBytes = randomInteger(random, 1, 16) * 4 * KiB;
      await session.write(randomInteger(random, 0, (volumeSizeBytes - lengthBytes) / 4096) * 4096, randomBytesFrom(random, lengthBytes), false);
    }
  }
  await session.flush();
  volume.history!.cutIfDue();
  await volume.history!.settled();
  await sleep(5);
  await volume.history!.settled();
}

/** A lifecycle pass; returns the failures it counted. */
async function lifecyclePass(volume: Volume): Promise<number> {
  // A pass the lifecycle's own timer started may be running: wait for it, then run a fresh one.
  await volume.history!.lifecycle.settled();
  const before = volume.history!.lifecycle.statistics.operationFailures;
  await volume.history!.lifecycle.tick();
  return volume.history!.lifecycle.statistics.operationFailures - before;
}

/** Everything checked now, on the running volume (no crash): kept instants and the index against the files. */
async function checkRunning(t: TapTest, setup: Setup, what: string): Promise<void> {
  const problems: string[] = [];
  const written = setup.session.appendedOperations().filter((operation) => operation.resolved);
  const versions = setup.model.versions!.withRecords(written.map((operation) => ({ ...operation, sequence: operation.sequence! })));
  await checkKeptInstants(setup.volume, versions, [], setup.clock, setup.random, problems, setup.spaceWasShort);
  t.same(problems, [], `${what}: every kept instant reads as the model says`);
}

/** After a failed operation: the volume has not failed, a host write is taken, every kept instant reads right. */
async function expectHostUnharmed(t: TapTest, setup: Setup, what: string): Promise<void> {
  t.equal(setup.volume.stats().failed, null, `${what}: the volume does not fail`);
  t.equal((await setup.session.write(0, randomBytesFrom(setup.random, 8 * KiB), true)).error, null, `${what}: host writes go on`);
  await checkRunning(t, setup, what);
}

/** Crash (power loss unless told), reopen, check everything; the setup goes on with the new volume. */
async function crashAndCheck(t: TapTest, setup: Setup, options: CrashOptions, what: string): Promise<boolean> {
  setup.session.markCrashed();
  setup.machine = crashMachine(setup.machine, setup.random, options, new CrashPoint());
  await withinMs(setup.volume.close().catch(() => undefined), 20_000, 'closing the crashed volume');
  await withinMs(setup.session.settle(), 20_000, 'settling the crashed session');
  const opened = await openVolume(setup.machine).then(
    (volume) => ({ volume, error: null }),
    (error: unknown) => ({ volume: null, error }),
  );
  t.equal(opened.error, null, `${what}: the volume reopens`, { error: String(opened.error) });
  if (opened.volume === null) return false;
  setup.volume = opened.volume;
  const { problems } = await checkRecovered(setup.machine, setup.volume, setup.model, setup.session, [], setup.clock, setup.random, setup.spaceWasShort);
  t.same(problems, [], `${what}: after the crash nothing kept or acknowledged is lost, and the index agrees with the files`);
  setup.session = new Session(setup.volume, setup.model);
  return true;
}

function intervalCount(volume: Volume): number {
  return indexOf(volume).intervals.intervals.length;
}

function packFiles(fileSystem: SimulatedFileSystem): string[] {
  return fileSystem.exists(paths.packs) ? fileSystem.list(paths.packs) : [];
}

t.test('a power loss right after the first packs are switched in loses none of them', async (t) => {
  // Points kept for a minute and no write before the first one: nothing folds (a fold makes the
  // base image, which syncs the volume's folder).
  const setup = await startSetup(t, 51, [{ every: 1, keepSeconds: 60 }]);
  setup.clock.advanceMs(1000 - (Date.now() % 1000) + 100);
  await writeForSeconds(setup, 5);
  t.equal(indexOf(setup.volume).intervals.state.horizonSequence, 0, 'nothing was folded');
  t.equal(await lifecyclePass(setup.volume), 0, 'the pass succeeds');
  t.ok(intervalCount(setup.volume) > 0, 'windows older than the keep-all region were packed');
  // Only what was made durable survives: the packs, their folder's entries, and the folder itself.
  await crashAndCheck(t, setup, { keepProbability: 0, tearProbability: 0 }, 'a power loss keeping nothing unsynced');
  await setup.volume.close();
});

t.test('a failing sync of a new pack fails the pack operation cleanly; the next pass packs, and nothing kept is lost', async (t) => {
  const setup = await startSetup(t, 52);
  await writeForSeconds(setup, 5);
  setup.machine.fileSystem.failDatasyncs({ count: 1, pathMatches: (filePath) => filePath.endsWith('.pack') });
  t.equal(await lifecyclePass(setup.volume), 1, 'the pass counts the failure');
  t.equal(intervalCount(setup.volume), 0, 'nothing was switched in');
  t.same(packFiles(setup.machine.fileSystem), [], 'the abandoned packs are deleted');
  t.equal(indexOf(setup.volume).intervals.state.pending, null, 'no operation is left pending');
  await expectHostUnharmed(t, setup, 'after the failed pass');
  t.equal(await lifecyclePass(setup.volume), 0, 'the next pass succeeds');
  t.ok(intervalCount(setup.volume) > 0, 'and packs');
  await checkRunning(t, setup, 'after the retried pass');
  await crashAndCheck(t, setup, {}, 'a power loss after the retry');
  await setup.volume.close();
});

t.test('a failing sync of the base image fails the fold; the fold is redone by the next pass, and nothing kept is lost', async (t) => {
  const setup = await startSetup(t, 53);
  await writeForSeconds(setup, 4);
  t.equal(await lifecyclePass(setup.volume), 0, 'packing succeeds');
  await writeForSeconds(setup, 12); // the oldest points leave every tier: a fold is due
  setup.machine.fileSystem.failDatasyncs({ count: 1, pathMatches: (filePath) => filePath === paths.base });
  const horizonBefore = indexOf(setup.volume).intervals.state.horizonSequence;
  t.ok((await lifecyclePass(setup.volume)) >= 1, 'the pass counts the failure');
  t.equal(indexOf(setup.volume).intervals.state.horizonSequence, horizonBefore, 'the horizon did not move');
  await expectHostUnharmed(t, setup, 'after the failed fold');
  t.equal(await lifecyclePass(setup.volume), 0, 'the next pass succeeds');
  t.ok(indexOf(setup.volume).intervals.state.horizonSequence > horizonBefore, 'the fold was done: the horizon moved');
  t.equal(indexOf(setup.volume).intervals.state.pending, null, 'no operation is left pending');
  await checkRunning(t, setup, 'after the redone fold');
  await crashAndCheck(t, setup, {}, 'a power loss after the redone fold');
  await setup.volume.close();
});

t.test('a full disk while packing fails the operation; host writes go on in the log, nothing kept is lost, and the pass succeeds once there is room', async (t) => {
  const setup = await startSetup(t, 54);
  await writeForSeconds(setup, 5);
  setup.machine.fileSystem.setSpaceBudget(16 * KiB);
  setup.spaceWasShort = true;
  // Space is short: the pass tries a few times (space pressure does not wait for the next pass).
  t.ok((await lifecyclePass(setup.volume)) >= 1, 'the pass counts the failure');
  t.equal(intervalCount(setup.volume), 0, 'nothing was switched in');
  t.same(packFiles(setup.machine.fileSystem), [], 'the abandoned packs are deleted');
  const writes = await Promise.all(Array.from({ length: 8 }, (_, index) => setup.session.write(index * 64 * KiB, randomBytesFrom(setup.random, 64 * KiB), index === 7)));
  t.same(
    writes.map((write) => write.error),
    Array(8).fill(null),
    'host writes that fit the log segment are taken',
  );
  await checkRunning(t, setup, 'on the full disk');
  setup.machine.fileSystem.setSpaceBudget(null);
  t.equal(await lifecyclePass(setup.volume), 0, 'with room again the pass succeeds');
  t.ok(intervalCount(setup.volume) > 0, 'and packs');
  await crashAndCheck(t, setup, { process: true }, 'a kill -9 after it');
  await setup.volume.close();
});

t.test('a full disk when the first fold makes the base image: the fold fails, the volume reopens, and the fold is done once there is room', async (t) => {
  const setup = await startSetup(t, 55);
  // Whether the first pass already finds a fold due depends on where the wall clock's second
  // boundaries fall among the writes: a hold on the empty volume keeps every record from folding.
  const releaseHold = setup.volume.history!.lifecycle.hold(0, 'no fold before the disk is full');
  await writeForSeconds(setup, 4);
  t.equal(await lifecyclePass(setup.volume), 0, 'packing succeeds');
  t.equal(setup.volume.history!.lifecycle.statistics.folds, 0, 'nothing is folded while the hold lasts');
  await writeForSeconds(setup, 12);
  setup.machine.fileSystem.setSpaceBudget(1 * MiB); // less than the base image (the volume's size)
  setup.spaceWasShort = true;
  releaseHold();
  t.ok((await lifecyclePass(setup.volume)) >= 1, 'the fold fails');
  t.match(setup.volume.history!.lifecycle.statistics.lastFailure, /ENOSPC.*base\.img/, 'on the base image');
  t.equal(setup.volume.stats().failed, null, 'the volume does not fail');
  await checkRunning(t, setup, 'after the failed fold');
  if (!(await crashAndCheck(t, setup, { process: true }, 'a kill -9 on the full disk'))) return;
  setup.machine.fileSystem.setSpaceBudget(null);
  t.equal(await lifecyclePass(setup.volume), 0, 'with room again the pass succeeds');
  t.ok(indexOf(setup.volume).intervals.state.horizonSequence > 0, 'the fold was done');
  await checkRunning(t, setup, 'after the fold');
  await setup.volume.close();
});
