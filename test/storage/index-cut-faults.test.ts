// Failed cuts of the delta-map index (issue 10 §6): a volume with history on the simulated file
// system, its index in an in-memory database (test/support/simulated-index-databases.ts) whose
// writes the test makes fail, as LevelDB's do when its disk is full. Small limits (windows of 16
// records, a tail of at most 256, retries after 50 ms doubling to 400 ms) keep it quick.
//
// Invariants checked:
//   1. Cutting does not stop for good: a failed cut is tried again, later and later (backoff), and
//      once the database takes writes again the index catches up by itself.
//   2. The in-memory tail never holds more than tailRecordCountMax records: past it writes are
//      refused with ENOSPC naming the index, and the volume does not fail (reads and flushes work).
//   3. It is reported while it lasts (degradedReasons, the cut figures) and clears after.
//   4. Nothing acknowledged is lost: the live volume and the view at every instant recorded
//      during the failure read as the writes made them, once the index caught up and after a reopen.

import t from 'tap';
import { KiB, MiB, StorageError, Volume } from '../../storage/index.js';
import { indexLimits, lifecycleLimits } from '../../storage/limits.js';
import { SimulatedFileSystem } from '../support/simulated-file-system.js';
import { SimulatedIndexDatabases } from '../support/simulated-index-databases.js';
import { sleep } from '../support/waits.js';

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

const volumeSizeBytes = 1 * MiB;
const blockBytes = 4 * KiB;
const blockCount = volumeSizeBytes / blockBytes;
const volumeDirectory = '/volumes/cuts';

function setTestLimits(t: TapTest): void {
  const changes: Array<[Record<string, number>, string, number]> = [
    [indexLimits as unknown as Record<string, number>, 'windowRecordsMax', 16],
    [indexLimits as unknown as Record<string, number>, 'tailRecordCountMax', 256],
    [indexLimits as unknown as Record<string, number>, 'cutRetryDelayMsMin', 50],
    [indexLimits as unknown as Record<string, number>, 'cutRetryDelayMsMax', 400],
    [indexLimits as unknown as Record<string, number>, 'cutCheckIntervalMs', 10],
    [lifecycleLimits as unknown as Record<string, number>, 'checkIntervalMs', 3_600_000],
  ];
  for (const [limits, name, value] of changes) {
    const previous = limits[name]!;
    limits[name] = value;
    t.teardown(() => {
      limits[name] = previous;
    });
  }
}

/** A block's content for the write with this number: its number and block, repeated. */
function blockContent(writeNumber: number, block: number): Buffer {
  const content = Buffer.alloc(blockBytes);
  for (let offset = 0; offset < blockBytes; offset += 8) {
    content.writeUInt32BE(writeNumber, offset);
    content.writeUInt32BE(block, offset + 4);
  }
  return content;
}

/** The volume's contents as the test wrote them, and copies at chosen sequence numbers. */
class Model {
  readonly image = Buffer.alloc(volumeSizeBytes);
  readonly instants = new Map<number, Buffer>();
  writeNumber = 0;

  async write(volume: Volume): Promise<void> {
    this.writeNumber++;
    const block = (this.writeNumber * 7) % blockCount;
    const content = blockContent(this.writeNumber, block);
    await volume.write(block * blockBytes, content, { fua: false });
    content.copy(this.image, block * blockBytes);
  }

  remember(volume: Volume): number {
    const sequence = volume.stats().appendedSequence;
    this.instants.set(sequence, Buffer.from(this.image));
    return sequence;
  }
}

async function checkVolumeAndInstants(t: TapTest, volume: Volume, model: Model, what: string): Promise<void> {
  t.ok((await volume.read(0, volumeSizeBytes)).equals(model.image), `${what}: the live volume holds every acknowledged write`);
  for (const [sequence, expected] of model.instants) {
    const view = await volume.history!.openView(sequence, `check at ${sequence}`);
    try {
      t.ok((await view.read(0, volumeSizeBytes)).equals(expected), `${what}: the view at sequence ${sequence} reads as written`);
    } finally {
      view.release();
    }
  }
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}

t.test('failed cuts are retried with backoff, the tail stays bounded by refusing writes, and the index catches up', async (t) => {
  setTestLimits(t);
  const fileSystem = new SimulatedFileSystem();
  const indexes = new SimulatedIndexDatabases();
  let databaseFull = false;
  indexes.onWrite = () => {
    if (databaseFull) throw Object.assign(new Error('IO error: /volumes/cuts/index/000005.log: No space left on device'), { code: 'ENOSPC' });
  };
  fileSystem.mkdirp('/volumes');
  await Volume.create(volumeDirectory, { name: 'cuts', sizeBytes: volumeSizeBytes, regionSizeBytes: 64 * KiB, segmentSizeBytes: 64 * MiB }, fileSystem);
  const open = (): Promise<Volume> => Volume.open(volumeDirectory, fileSystem, { history: true, indexDatabase: indexes.factory });
  let volume = await open();
  const model = new Model();

  for (let write = 0; write < 40; write++) await model.write(volume);
  await volume.history!.cutNow();
  model.remember(volume);
  t.equal(volume.history!.cutStatistics().cutsFailedInARow, 0, 'cuts work at first');

  databaseFull = true;
  // Below the bound, writes are taken while cuts fail; a few instants are remembered on the way.
  for (let write = 0; write < 100; write++) {
    await model.write(volume);
    if (write % 30 === 0) model.remember(volume);
  }
  t.ok(await waitFor(() => volume.history!.cutStatistics().cutsFailedInARow >= 1, 2000), 'a due cut failed');
  const first = volume.history!.cutStatistics();
  t.match(first.lastCutError, /No space left on device/, 'the cut error is kept');
  t.ok(await waitFor(() => volume.history!.cutStatistics().cutsFailedInARow >= 4, 5000), 'failed cuts are tried again');
  const later = volume.history!.cutStatistics();
  t.ok(later.cutFailuresTotal >= 4, 'every failure counts');
  t.ok(later.nextCutAttemptMicros! - Date.now() * 1000 > 100_000, `the delay grew (next try in ${Math.round((later.nextCutAttemptMicros! - Date.now() * 1000) / 1000)} ms)`);
  t.ok(later.nextCutAttemptMicros! - Date.now() * 1000 <= 400_000, 'up to its cap');
  t.equal(later.cutsFailingSinceMicros, first.cutsFailingSinceMicros, 'failing since the first failure');
  t.match(volume.history!.degradedReasons(), [/cutting records into the delta-map index fails \(\d+ in a row since .*No space left on device/], 'reported');

  // Up to the bound, and no further.
  let refusal: unknown = null;
  let tailRecordCountMax = 0;
  while (refusal === null && model.writeNumber < 10_000) {
    try {
      await model.write(volume);
    } catch (error) {
      refusal = error;
      model.writeNumber--; // not acknowledged: not in the model
    }
    tailRecordCountMax = Math.max(tailRecordCountMax, volume.history!.cutStatistics().tailRecordCount);
  }
  t.ok(tailRecordCountMax <= indexLimits.tailRecordCountMax, `the tail stayed bounded (at most ${tailRecordCountMax} records)`);
  model.remember(volume);
  t.ok(refusal instanceof StorageError && refusal.code === 'ENOSPC', 'a write past the bound is refused with ENOSPC');
  t.match((refusal as Error).message, /refuses writes: its index holds 256 records in memory.*No space left on device/, 'saying why');
  const full = volume.history!.cutStatistics();
  t.equal(full.tailRecordCount, indexLimits.tailRecordCountMax, 'the tail is full');
  t.ok(full.refusingWritesForIndex, 'writes are refused');
  t.match(volume.history!.degradedReasons(), [/cutting records/, /writes are refused \(ENOSPC\): the index's in-memory tail is full \(256 records\)/]);
  t.equal(volume.stats().failed, null, 'the volume is not failed');
  await volume.flush();
  t.ok((await volume.read(0, volumeSizeBytes)).equals(model.image), 'reads and flushes work');
  await t.rejects(volume.writeZeroes(0, blockBytes, { fua: false, noHole: false, fastZero: false }), { code: 'ENOSPC' }, 'zeroes are refused too');

  databaseFull = false;
  t.ok(await waitFor(() => volume.history!.cutStatistics().tailRecordCount < indexLimits.windowRecordsMax * 2, 5000), 'with room again, the index catches up by itself');
  const recovered = volume.history!.cutStatistics();
  t.same(
    { failed: recovered.cutsFailedInARow, refusing: recovered.refusingWritesForIndex, error: recovered.lastCutError, reasons: volume.history!.degradedReasons() },
    { failed: 0, refusing: false, error: null, reasons: [] },
    'and the failure is cleared',
  );
  for (let write = 0; write < 20; write++) await model.write(volume);
  model.remember(volume);
  await checkVolumeAndInstants(t, volume, model, 'after catching up');

  await volume.close();
  volume = await open();
  await checkVolumeAndInstants(t, volume, model, 'after a reopen');
  await volume.close();
});

t.test('a volume closed while cuts fail reopens with everything: the log is replayed into the tail', async (t) => {
  setTestLimits(t);
  const fileSystem = new SimulatedFileSystem();
  const indexes = new SimulatedIndexDatabases();
  let databaseFull = false;
  indexes.onWrite = () => {
    if (databaseFull) throw Object.assign(new Error('IO error: simulated'), { code: 'EIO' });
  };
  fileSystem.mkdirp('/volumes');
  await Volume.create(volumeDirectory, { name: 'cuts', sizeBytes: volumeSizeBytes, regionSizeBytes: 64 * KiB, segmentSizeBytes: 64 * MiB }, fileSystem);
  const open = (): Promise<Volume> => Volume.open(volumeDirectory, fileSystem, { history: true, indexDatabase: indexes.factory });
  let volume = await open();
  const model = new Model();
  databaseFull = true;
  for (let write = 0; write < 200; write++) {
    await model.write(volume);
    if (write % 50 === 49) model.remember(volume);
  }
  t.ok(await waitFor(() => volume.history!.cutStatistics().cutsFailedInARow >= 1, 2000), 'cuts fail');
  await volume.close();
  databaseFull = false;
  volume = await open();
  await checkVolumeAndInstants(t, volume, model, 'reopened');
  await volume.close();
});
