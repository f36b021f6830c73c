// Model-based property test of the history lifecycle: random writes, zero-writes, trims,
// snapshots (some pinned, some expiring), restarts and lifecycle passes (packing, merging,
// folding) under a policy with second-long tiers, against an in-memory model that keeps every
// version with the time bracket of its write.
//
// Invariants checked, byte for byte, at random moments:
//   1. Every instant the policy keeps reads exactly the model's volume at that instant: instants
//      in the keep-all region, every tier boundary within its tier's reach, every snapshot not
//      deleted or expired, before and after restarts and lifecycle passes.
//   2. Every other instant is refused with EEXPIRED (unless nothing was written between it and a
//      kept instant: then it shows that kept instant's volume, which is the same).
//   3. A view opened on a kept instant keeps reading it correctly while the instant expires: its
//      hold keeps it, until released.
//   4. The live volume always equals the model's latest state.
//   5. The lifecycle did its work: intervals were packed and merged, and the horizon moved.
//   6. Verification passes at the end: the log's records, every pack against the index, the maps
//      against a replay of the fine region, the live image against the history.

import t, { type Test } from 'tap';
import { MiB, StorageError, Volume, nodeFileSystem, verifyVolume } from '../../storage/index.js';
import { indexLimits } from '../../storage/limits.js';
import { boundariesBetween, type RetentionPolicy } from '../../storage/retention/policy.js';
import { chance, randomInteger, seededRandom, type RandomSource } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const volumeSizeBytes = 1 * MiB;
const second = 1_000_000;
/** Instants this close to a moving edge of the policy are not judged (the engine's clock and ours differ a little). */
const marginMicros = 400_000;
/** The checks of one moment take at most this long, however busy the machine (judged once, at their start). */
const checkDurationMicrosMax = 1.5 * second;

const policy: RetentionPolicy = {
  keepAllSeconds: 3,
  tiers: [
    { every: 1, keepSeconds: 7 },
    { every: 3, keepSeconds: 14 },
  ],
  maxHistoryBytes: 64 * 1024 * MiB,
  reserve: { bytes: 0 },
  requiredWindowSeconds: 0,
};

function nowMicros(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

interface ModelOperation {
  sequence: number;
  /** The record's timestamp lies in [beforeMicros, afterMicros]. */
  beforeMicros: number;
  afterMicros: number;
  offsetBytes: number;
  data: Buffer;
}

interface ModelSnapshot {
  name: string;
  sequence: number;
  pinned: boolean;
  expiresMicros: number;
  deleted: boolean;
}

class RetentionModel {
  readonly operations: ModelOperation[] = [];
  readonly snapshots: ModelSnapshot[] = [];

  stateThrough(sequence: number): Buffer {
    const image = Buffer.alloc(volumeSizeBytes);
    for (const operation of this.operations) {
      if (operation.sequence > sequence) break;
      operation.data.copy(image, operation.offsetBytes);
    }
    return image;
  }

  /** The last operation written at or before `micros` (its sequence; 0 if none), or null when a write's time is too close to tell. */
  lastOperationAt(micros: number): number | null {
    let found = 0;
    for (const operation of this.operations) {
      if (operation.beforeMicros - marginMicros / 4 <= micros && micros <= operation.afterMicros + marginMicros / 4) return null;
      if (operation.afterMicros < micros) found = operation.sequence;
    }
    return found;
  }

  /** Every operation that may be the last one written at or before `micros`, given the brackets. */
  candidateOperationsAt(micros: number): number[] {
    const candidates = new Set<number>();
    let before = 0;
    for (const operation of this.operations) {
      if (operation.afterMicros + marginMicros / 4 < micros) before = operation.sequence;
      else if (operation.beforeMicros - marginMicros / 4 <= micros) candidates.add(operation.sequence);
    }
    candidates.add(before);
    return [...candidates];
  }

  /** The last operation at or before a sequence (0 if none): instants with the same one show the same volume. */
  lastOperationThrough(sequence: number): number {
    let found = 0;
    for (const operation of this.operations) {
      if (operation.sequence > sequence) break;
      found = operation.sequence;
    }
    return found;
  }

  /**
   * What the policy keeps at `now`, as the last operation each kept instant shows. `margin` > 0
   * judges edges strictly (surely kept), < 0 generously (possibly kept): the engine's clock and
   * ours differ a little, and an instant near an edge may fall either way.
   */
  keptAt(now: number, createdMicros: number, margin: number): { shown: Set<number>; continuousFrom: number | null; tierTimes: number[] } {
    const shown = new Set<number>();
    const continuousFromMicros = now - policy.keepAllSeconds * second;
    const tierTimes: number[] = [];
    for (const tier of policy.tiers) {
      for (const micros of boundariesBetween(tier.every, Math.max(createdMicros + margin, now - tier.keepSeconds * second + margin), continuousFromMicros - margin)) {
        const shownThere = this.lastOperationAt(micros);
        if (shownThere === null) {
          // Too close to a write to tell: judged generously, any of the candidates may be kept.
          if (margin < 0) for (const candidate of this.candidateOperationsAt(micros)) shown.add(candidate);
          continue;
        }
        shown.add(shownThere);
        tierTimes.push(micros);
      }
    }
    for (const snapshot of this.snapshots) {
      if (!snapshot.deleted && (snapshot.expiresMicros === 0 || snapshot.expiresMicros > now + margin)) shown.add(this.lastOperationThrough(snapshot.sequence));
    }
    return { shown, continuousFrom: this.lastOperationAt(continuousFromMicros + margin), tierTimes };
  }
}

function randomData(random: RandomSource, lengthBytes: number): Buffer {
  const data = Buffer.alloc(lengthBytes);
  if (chance(random, 0.1)) return data;
  const fill = randomInteger(random, 1, 255);
  for (let index = 0; index < lengthBytes; index += 89) data[index] = (fill + index) & 0xff;
  data[0] = fill;
  return data;
}

async function expectState(t: Test, volume: Volume, model: RetentionModel, instant: { micros: number } | { snapshot: string }, expected: Buffer, label: string): Promise<boolean> {
  const history = volume.history!;
  let sequence: number;
  try {
    sequence = await history.sequenceOf(instant);
  } catch (error) {
    t.fail(`${label}: refused (${error instanceof Error ? error.message : String(error)})`);
    return false;
  }
  let view;
  try {
    view = await history.openView(sequence, label);
  } catch (error) {
    const set = history.lifecycle.keptSet;
    t.fail(`${label}: sequence ${sequence} accepted, then its view refused (${error instanceof Error ? error.message : String(error)}); kept from ${set?.continuousFromSequence}, points ${JSON.stringify(set?.points.map((point) => [point.sequence, point.reasons.join('+')]))}, intervals ${JSON.stringify(history.lifecycle.debugIntervals())}`);
    return false;
  }
  try {
    const actual = await view.read(0, volumeSizeBytes);
    if (!actual.equals(expected)) {
      t.fail(`${label}: view at ${sequence} differs from the model at byte ${actual.findIndex((byte, index) => byte !== expected[index])}`);
      return false;
    }
  } finally {
    view.release();
  }
  void model;
  return true;
}

async function checkEverything(t: Test, volume: Volume, model: RetentionModel, random: RandomSource, label: string): Promise<number> {
  let checks = 0;
  const now = nowMicros();
  // Kept-ness only ends as time goes on: what is kept a while from now is kept throughout the
  // checks (slow on a busy machine), and what was not even possibly kept at the start stays gone.
  const kept = model.keptAt(now + checkDurationMicrosMax, volume.config.createdMicros, marginMicros);
  const possiblyKept = model.keptAt(now, volume.config.createdMicros, -marginMicros);
  // 4. The live volume.
  const live = await volume.read(0, volumeSizeBytes);
  if (!live.equals(model.stateThrough(Number.MAX_SAFE_INTEGER))) t.fail(`${label}: the live volume differs from the model`);
  // 1. Tier boundaries and snapshots.
  for (const micros of kept.tierTimes) {
    const shown = model.lastOperationAt(micros)!;
    if (await expectState(t, volume, model, { micros }, model.stateThrough(shown), `${label}: tier point ${new Date(micros / 1000).toISOString()}`)) checks++;
  }
  for (const snapshot of model.snapshots) {
    if (snapshot.deleted || (snapshot.expiresMicros !== 0 && snapshot.expiresMicros <= now + marginMicros)) continue;
    if (await expectState(t, volume, model, { snapshot: snapshot.name }, model.stateThrough(snapshot.sequence), `${label}: snapshot ${snapshot.name}`)) checks++;
  }
  // 1 and 2. Random instants: kept ones read right, the others are refused.
  const created = volume.config.createdMicros;
  for (let sample = 0; sample < 12; sample++) {
    const micros = randomInteger(random, created, now - marginMicros);
    const shown = model.lastOperationAt(micros);
    if (shown === null) continue;
    const inContinuous = micros > now + checkDurationMicrosMax - policy.keepAllSeconds * second + marginMicros;
    const nearContinuousEdge = Math.abs(micros - (now - policy.keepAllSeconds * second)) < marginMicros;
    if (nearContinuousEdge) continue;
    const keptByPoint = kept.shown.has(shown) || (kept.continuousFrom !== null && shown >= kept.continuousFrom);
    if (inContinuous || keptByPoint) {
      if (await expectState(t, volume, model, { micros }, model.stateThrough(shown), `${label}: instant ${new Date(micros / 1000).toISOString()}`)) checks++;
      continue;
    }
    // Only instants no kept instant could show (judged generously) must be refused.
    if (possiblyKept.shown.has(shown) || (possiblyKept.continuousFrom ?? 0) <= shown) continue;
    try {
      const got = await volume.history!.sequenceOf({ micros });
      const set = volume.history!.lifecycle.keptSet;
      const op = model.operations.find((operation) => operation.sequence === got);
      const status = volume.history!.lifecycle.status();
      t.fail(`${label}: instant ${micros} (shows operation ${shown}) should have expired; got ${got} [${op?.beforeMicros}, ${op?.afterMicros}], kept from ${set?.continuousFromSequence}, points ${JSON.stringify(set?.points.map((point) => [point.sequence, point.reasons.join('+')]))} intervals ${status.intervalCount} oldest ${status.oldestRecoverableMicros} intervals ${JSON.stringify(volume.history!.lifecycle.debugIntervals().filter((interval) => interval[3]! >= shown - 20 && interval[0]! <= got + 20))} ops ${JSON.stringify(model.operations.filter((operation) => operation.sequence >= got - 3 && operation.sequence <= shown + 3).map((operation) => [operation.sequence, operation.beforeMicros, operation.afterMicros]))}`);
    } catch (error) {
      if (error instanceof StorageError && error.code === 'EEXPIRED') checks++;
      else t.fail(`${label}: an expired instant gave ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return checks;
}

async function runSeed(t: Test, seed: number, runtimeMs: number): Promise<void> {
  const random = seededRandom(seed);
  const directory = `${temporaryDirectory(t)}/volume`;
  await Volume.create(directory, { name: 'model', sizeBytes: volumeSizeBytes, regionSizeBytes: 64 * 1024, segmentSizeBytes: 64 * MiB });
  const open = async (): Promise<Volume> => {
    const opened = await Volume.open(directory, nodeFileSystem, { history: true });
    return opened;
  };
  let volume = await open();
  await volume.setRetentionPolicy(policy);
  const model = new RetentionModel();
  const startedMs = performance.now();
  let checks = 0;
  let restarts = 0;
  let ticks = 0;
  let snapshotCounter = 0;
  let held: { view: Awaited<ReturnType<NonNullable<Volume['history']>['openView']>>; expected: Buffer; sequence: number } | null = null;
  let maxIntervals = 0;
  const work = { packs: 0, merges: 0, folds: 0 };
  const addWork = (): void => {
    const statistics = volume.history!.lifecycle.status().statistics;
    work.packs += statistics.packs;
    work.merges += statistics.merges;
    work.folds += statistics.folds;
  };
  for (let step = 0; performance.now() - startedMs < runtimeMs; step++) {
    const roll = random();
    if (roll < 0.55) {
      const lengthBytes = chance(random, 0.5) ? randomInteger(random, 1, 8) * 4096 : randomInteger(random, 1, 16 * 1024);
      const offsetBytes = randomInteger(random, 0, volumeSizeBytes - lengthBytes);
      const data = randomData(random, lengthBytes);
      const beforeMicros = nowMicros();
      if (chance(random, 0.1)) {
        if (chance(random, 0.5)) await volume.trim(offsetBytes, lengthBytes, { fua: false });
        else await volume.writeZeroes(offsetBytes, lengthBytes, { fua: false, noHole: false, fastZero: false });
        data.fill(0);
      } else {
        await volume.write(offsetBytes, data, { fua: false });
      }
      model.operations.push({ sequence: volume.stats().appendedSequence, beforeMicros, afterMicros: nowMicros(), offsetBytes, data });
    } else if (roll < 0.6) {
      const name = `snap-${snapshotCounter++}`;
      const pinned = chance(random, 0.3);
      const expiresMicros = chance(random, 0.3) ? nowMicros() + randomInteger(random, 1, 6) * second : 0;
      const snapshot = await volume.history!.createSnapshot(name, '', { pinned, expiresMicros });
      model.snapshots.push({ name, sequence: snapshot.sequence, pinned, expiresMicros, deleted: false });
    } else if (roll < 0.62 && model.snapshots.some((snapshot) => !snapshot.deleted)) {
      const live = model.snapshots.filter((snapshot) => !snapshot.deleted && (snapshot.expiresMicros === 0 || snapshot.expiresMicros > nowMicros() + second));
      if (live.length > 0) {
        const victim = live[randomInteger(random, 0, live.length - 1)]!;
        await volume.history!.deleteSnapshot(victim.name);
        victim.deleted = true;
      }
    } else if (roll < 0.72) {
      await volume.history!.lifecycle.tick();
      ticks++;
      maxIntervals = Math.max(maxIntervals, volume.history!.lifecycle.status().intervalCount);
    } else if (roll < 0.74) {
      held?.view.release();
      held = null;
      addWork();
      await volume.close();
      volume = await open();
      restarts++;
    } else if (roll < 0.78) {
      checks += await checkEverything(t, volume, model, random, `seed ${seed} step ${step}`);
    } else if (roll < 0.8) {
      // 3. A view held across expiry.
      if (held !== null) {
        const actual = await held.view.read(0, volumeSizeBytes);
        if (!actual.equals(held.expected)) t.fail(`seed ${seed} step ${step}: a held view at ${held.sequence} changed`);
        else checks++;
        held.view.release();
        held = null;
      } else if (model.operations.length > 0) {
        const sequence = volume.stats().appendedSequence;
        held = { view: await volume.history!.openView(sequence, 'held view'), expected: model.stateThrough(sequence), sequence };
      }
    } else {
      await new Promise((resolve) => setTimeout(resolve, randomInteger(random, 20, 120)));
    }
  }
  // Let the lifecycle catch up, then everything once more, and once more after a restart.
  held?.view.release();
  await volume.history!.lifecycle.tick();
  checks += await checkEverything(t, volume, model, random, `seed ${seed} end`);
  addWork();
  await volume.close();
  volume = await open();
  checks += await checkEverything(t, volume, model, random, `seed ${seed} end after restart`);
  // 6. Verification agrees: the log, the packs, the maps and the live image.
  const report = await verifyVolume(volume);
  t.ok(report.ok, `seed ${seed}: verification passes (${report.packs.checked} packs, ${report.records.scanned} records; ${JSON.stringify({ missing: report.records.missing, maps: report.maps.mismatchBytes, packs: report.packs.problems, image: report.image.mismatchBytes })})`);
  const status = volume.history!.lifecycle.status();
  // 5. The lifecycle did its work.
  t.ok(work.packs > 0 && work.folds > 0, `seed ${seed}: intervals were packed (${work.packs}) and folded into the base image (${work.folds})`);
  t.ok(status.oldestRecoverableMicros > volume.config.createdMicros, `seed ${seed}: the oldest recoverable instant moved forward`);
  t.comment(`seed ${seed}: ${model.operations.length} writes, ${model.snapshots.length} snapshots, ${restarts} restarts, ${ticks} lifecycle passes, ${checks} checks, up to ${maxIntervals} intervals, ${work.packs} packs, ${work.merges} merges, ${work.folds} folds`);
  await volume.close();
}

t.test('retained instants equal a model; expired ones are refused', async (t) => {
  const limits = indexLimits as { windowRecordsMax: number };
  const previous = limits.windowRecordsMax;
  limits.windowRecordsMax = 16; // many windows, merged maps under the packs
  t.teardown(() => {
    limits.windowRecordsMax = previous;
  });
  const seeds = process.env.RETENTION_SEED !== undefined ? [Number(process.env.RETENTION_SEED)] : [1, 2, 3];
  for (const seed of seeds) await t.test(`seed ${seed}`, (t) => runSeed(t, seed, 18_000));
});
