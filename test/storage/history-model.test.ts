// Model-based property test of points in time: random sequences of writes, zero-writes, trims,
// flushes, snapshots, map cuts (with tiny windows, so merges happen too) and restarts, against an
// in-memory model that keeps every version.
//
// Invariants checked, byte for byte, at random moments:
//   1. A view at any sequence number S reads exactly the model's volume after the writes up to S
//      (S in the open tail, inside a cut window, at a window's end, under merged maps).
//   2. A view at a snapshot reads the model's volume at the snapshot's mark, before and after
//      restarts; an instant (microseconds) resolves to the same contents as the snapshot taken then.
//   3. The changed-block context of a snapshot (qemu:dirty-bitmap:NAME) marks exactly the bytes
//      written after the snapshot, up to the view's instant (or now, on the live volume).
//   4. Allocation of a view: a byte the model never wrote up to S is reported as a hole.

import t, { type Test } from 'tap';
import { MiB, Volume, nodeFileSystem } from '../../storage/index.js';
import { indexLimits } from '../../storage/limits.js';
import { chance, mixedBytesFrom, randomBytesFrom, randomInteger, seededRandom, type RandomSource } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { withPartialPageCache } from '../support/partial-page-cache.js';

const volumeSizeBytes = 1 * MiB;

interface ModelOperation {
  sequence: number;
  offsetBytes: number;
  data: Buffer; // zeroes for zero-writes and trims
}

class HistoryModel {
  readonly operations: ModelOperation[] = [];
  readonly snapshots = new Map<string, { sequence: number; micros: number }>();

  stateAt(sequence: number): Buffer {
    const image = Buffer.alloc(volumeSizeBytes);
    for (const operation of this.operations) {
      if (operation.sequence > sequence) break;
      operation.data.copy(image, operation.offsetBytes);
    }
    return image;
  }

  /** Bytes written by operations in (from, to]. */
  changedBetween(from: number, to: number): Uint8Array {
    const changed = new Uint8Array(volumeSizeBytes);
    for (const operation of this.operations) {
      if (operation.sequence > from && operation.sequence <= to) changed.fill(1, operation.offsetBytes, operation.offsetBytes + operation.data.length);
    }
    return changed;
  }

  everWrittenUpTo(sequence: number): Uint8Array {
    return this.changedBetween(0, sequence);
  }
}

function setIndexLimits(t: { teardown(callback: () => void): void }, windowRecordsMax: number): void {
  const limits = indexLimits as { windowRecordsMax: number };
  const previous = limits.windowRecordsMax;
  limits.windowRecordsMax = windowRecordsMax;
  t.teardown(() => {
    limits.windowRecordsMax = previous;
  });
}

/** Zeroes, incompressible bytes, or bytes that compress in part, so the log holds compressed and raw records. */
function randomData(random: RandomSource, lengthBytes: number): Buffer {
  if (chance(random, 0.1)) return Buffer.alloc(lengthBytes); // all zero: logged as a zeroes record
  if (chance(random, 0.3)) return randomBytesFrom(random, lengthBytes);
  const data = mixedBytesFrom(random, lengthBytes);
  data[0] = randomInteger(random, 1, 255);
  return data;
}

async function checkView(t: Test, volume: Volume, model: HistoryModel, sequence: number, label: string): Promise<void> {
  // Every other view reads only from the log (as verification does), the rest take unchanged
  // chunks from the live image: both must equal the model.
  const fromLogOnly = sequence % 2 === 1;
  const view = await volume.history!.openView(sequence, label, { fromLogOnly });
  if (sequence % 3 === 0) await view.cache(0, volumeSizeBytes); // extents resolved by range scans
  const expected = model.stateAt(sequence);
  const actual = await view.read(0, volumeSizeBytes);
  if (!actual.equals(expected)) {
    const firstDifference = actual.findIndex((byte, index) => byte !== expected[index]);
    t.fail(`${label}: view at ${sequence}${fromLogOnly ? ' (log only)' : ''} differs from the model at byte ${firstDifference}`);
    return;
  }
  // Allocation: every byte never written up to S is a hole.
  const written = model.everWrittenUpTo(sequence);
  let position = 0;
  for (const extent of await view.allocation(0, volumeSizeBytes, 1 << 20)) {
    if (!extent.hole) {
      position += extent.lengthBytes;
      continue;
    }
    for (let index = position; index < position + extent.lengthBytes; index++) {
      if (written[index] === 1 && expected[index] !== 0) {
        t.fail(`${label}: byte ${index} was written (nonzero) up to ${sequence} but is reported as a hole`);
        return;
      }
    }
    position += extent.lengthBytes;
  }
  t.pass(`${label}: view at ${sequence} equals the model`);
}

async function checkDirtyBitmap(t: Test, volume: Volume, model: HistoryModel, snapshotName: string, uptoSequence: number | null): Promise<void> {
  const snapshot = model.snapshots.get(snapshotName)!;
  const context = `qemu:dirty-bitmap:${snapshotName}`;
  const device = uptoSequence === null ? volume : await volume.history!.openView(uptoSequence, 'bitmap view');
  const to = uptoSequence ?? volume.stats().appendedSequence;
  const expected = model.changedBetween(snapshot.sequence, to);
  const extents = await device.contextStatus!(context, 0, volumeSizeBytes, 1 << 20);
  const actual = new Uint8Array(volumeSizeBytes);
  let position = 0;
  for (const extent of extents) {
    if (extent.flags & 1) actual.fill(1, position, position + extent.lengthBytes);
    position += extent.lengthBytes;
  }
  t.equal(position, volumeSizeBytes, `${context}: extents cover the volume`);
  t.ok(Buffer.from(actual).equals(Buffer.from(expected)), `${context} up to ${to}: exactly the bytes written after the snapshot`);
}


async function runSeed(t: Test, seed: number, operationCount: number): Promise<void> {
  const random = seededRandom(seed);
  const directory = `${temporaryDirectory(t)}/volume`;
  await Volume.create(directory, { name: 'model', sizeBytes: volumeSizeBytes, regionSizeBytes: 64 * 1024, segmentSizeBytes: 64 * MiB });
  // Odd seeds read the log through a page cache that misses one page in three, so views take
  // both their at-once path and their worker-thread path.
  const fileSystem = seed % 2 === 1 ? withPartialPageCache(nodeFileSystem) : nodeFileSystem;
  const open = (): Promise<Volume> => Volume.open(directory, fileSystem, { history: true });
  let volume = await open();
  const model = new HistoryModel();
  let snapshotCounter = 0;
  let restarts = 0;
  let checks = 0;
  for (let step = 0; step < operationCount; step++) {
    const roll = random();
    if (roll < 0.5) {
      // Some writes span several 64 KiB frames of a compressed payload.
      const lengthBytes = chance(random, 0.1) ? randomInteger(random, 64 * 1024, 256 * 1024) : chance(random, 0.5) ? randomInteger(random, 1, 4) * 4096 : randomInteger(random, 1, 16 * 1024);
      const offsetBytes = chance(random, 0.5) ? randomInteger(random, 0, volumeSizeBytes / 4096 - 4) * 4096 : randomInteger(random, 0, volumeSizeBytes - lengthBytes);
      const data = randomData(random, Math.min(lengthBytes, volumeSizeBytes - offsetBytes));
      await volume.write(offsetBytes, data, { fua: chance(random, 0.1) });
      model.operations.push({ sequence: volume.stats().appendedSequence, offsetBytes, data });
    } else if (roll < 0.6) {
      const lengthBytes = randomInteger(random, 1, 64 * 1024);
      const offsetBytes = randomInteger(random, 0, volumeSizeBytes - lengthBytes);
      if (chance(random, 0.5)) await volume.writeZeroes(offsetBytes, lengthBytes, { fua: false, noHole: false, fastZero: false });
      else await volume.trim(offsetBytes, lengthBytes, { fua: false });
      model.operations.push({ sequence: volume.stats().appendedSequence, offsetBytes, data: Buffer.alloc(lengthBytes) });
    } else if (roll < 0.65) {
      await volume.flush();
    } else if (roll < 0.72) {
      const name = `snap-${snapshotCounter++}`;
      const snapshot = await volume.history!.createSnapshot(name, `step ${step}`);
      model.snapshots.set(name, { sequence: snapshot.sequence, micros: snapshot.micros });
    } else if (roll < 0.78) {
      await volume.history!.cutNow();
    } else if (roll < 0.8) {
      await volume.close();
      volume = await open();
      restarts++;
    } else if (roll < 0.9) {
      const appended = volume.stats().appendedSequence;
      await checkView(t, volume, model, randomInteger(random, 0, appended), `seed ${seed} step ${step}`);
      checks++;
    } else if (model.snapshots.size > 0) {
      const names = [...model.snapshots.keys()];
      const name = names[randomInteger(random, 0, names.length - 1)]!;
      const snapshot = model.snapshots.get(name)!;
      t.equal(await volume.history!.sequenceOf({ snapshot: name }), snapshot.sequence, `snapshot ${name} resolves to its mark`);
      await checkView(t, volume, model, snapshot.sequence, `seed ${seed} snapshot ${name}`);
      const atInstant = await volume.history!.sequenceOf({ micros: snapshot.micros });
      t.ok(model.stateAt(atInstant).equals(model.stateAt(snapshot.sequence)), `the instant of ${name} shows what the snapshot shows`);
      await checkDirtyBitmap(t, volume, model, name, chance(random, 0.5) ? null : randomInteger(random, snapshot.sequence, volume.stats().appendedSequence));
      checks++;
    }
  }
  // Finally, everything once more after a restart.
  await volume.close();
  volume = await open();
  const appended = volume.stats().appendedSequence;
  for (const sequence of [0, Math.floor(appended / 3), Math.floor(appended / 2), appended]) await checkView(t, volume, model, sequence, `seed ${seed} final`);
  for (const [name, snapshot] of model.snapshots) await checkView(t, volume, model, snapshot.sequence, `seed ${seed} final snapshot ${name}`);
  const builtCounts = [...volume.history!.mapsPerLevel];
  t.ok(builtCounts.length > 1 && builtCounts[1]! > 0, `merged maps were built (${JSON.stringify(builtCounts)})`);
  t.comment(`seed ${seed}: ${model.operations.length} writes, ${model.snapshots.size} snapshots, ${restarts} restarts, ${checks} checks, maps ${JSON.stringify(builtCounts)}`);
  await volume.close();
}

t.test('views equal a model that keeps every version', async (t) => {
  setIndexLimits(t, 6); // tiny windows: many cuts, merges at several levels
  const seeds = process.env.HISTORY_SEED !== undefined ? [Number(process.env.HISTORY_SEED)] : [1, 2, 3, 4];
  for (const seed of seeds) await t.test(`seed ${seed}`, (t) => runSeed(t, seed, 400));
});
