// The retention policy in storage: its rules (validateRetentionPolicy), the points it keeps at a
// moment (retainedTimes, at the boundaries of every calendar and fixed period), changes as an
// administrator gives them, and retention.json (docs/formats/retention.md): the defaults of a new
// volume, defaults written for a volume made before policies existed, durable changes told to
// listeners, and a crash in the middle of a change leaving the old policy or the new one, whole.

import t from 'tap';
import {
  KiB,
  MiB,
  GiB,
  StorageError,
  Volume,
  changeRetentionPolicy,
  defaultRetentionPolicy,
  retainedTimes,
  retentionChangesAreEmpty,
  retentionFormatVersion,
  validateRetentionPolicy,
  volumePaths,
  type RetentionPolicy,
} from '../../storage/index.js';
import { readWholeFile } from '../../storage/io/file-system.js';
import { SimulatedFileSystem } from '../support/simulated-file-system.js';
import { randomInteger, seededRandom } from '../support/seeded-random.js';

const hour = 3600;
const day = 86_400;
const micros = (iso: string): number => Date.parse(iso) * 1000;
const iso = (value: number): string => new Date(value / 1000).toISOString();

const sound: RetentionPolicy = defaultRetentionPolicy(100 * GiB);

t.test('the defaults: every write for 24 h, hourly for 7 days, daily for 30; 80% of free space; 5% reserve', async (t) => {
  t.same(sound, {
    keepAllSeconds: day,
    tiers: [
      { every: 'hourly', keepSeconds: 7 * day },
      { every: 'daily', keepSeconds: 30 * day },
    ],
    maxHistoryBytes: 80 * GiB,
    reserve: { percent: 5 },
    requiredWindowSeconds: day,
  });
  t.equal(validateRetentionPolicy(sound), null, 'sound');
  t.equal(defaultRetentionPolicy(1 * MiB).maxHistoryBytes, 64 * MiB, 'never below the smallest cap');
});

t.test('validateRetentionPolicy: each kind of nonsense gets its own sentence', async (t) => {
  const cases: Array<[string, Partial<RetentionPolicy>, RegExp]> = [
    ['a negative duration', { keepAllSeconds: -1 }, /keepAllSeconds must be a whole, non-negative number of seconds/],
    ['a fraction of a second', { keepAllSeconds: 1.5 }, /keepAllSeconds must be a whole/],
    ['over 100 years', { keepAllSeconds: 101 * 365 * day }, /at most 100 years/],
    ['too many tiers', { tiers: Array.from({ length: 9 }, (_, index) => ({ every: (index + 1) * hour, keepSeconds: 400 * day })) }, /at most 8 tiers/],
    ['a fixed period of 0', { tiers: [{ every: 0, keepSeconds: 7 * day }] }, /tier 1 \(every 0 s\): a fixed period is a whole number of seconds from 1 to 366 days/],
    ['a tier kept for 0 s', { tiers: [{ every: 'hourly', keepSeconds: 0 }] }, /tier 1 \(hourly\) keepSeconds must be longer than 0/],
    ['a negative tier duration', { tiers: [{ every: 'hourly', keepSeconds: -day }] }, /tier 1 \(hourly\) keepSeconds must be a whole, non-negative/],
    ['a tier shorter than its period', { keepAllSeconds: 0, tiers: [{ every: 'daily', keepSeconds: hour }] }, /tier 1 \(daily\): kept for 3600 s, shorter than its own period/],
    ['a tier within keep-all', { tiers: [{ every: 'hourly', keepSeconds: 12 * hour }] }, /tier 1 \(hourly\): kept for 43200 s, not longer than keepAllSeconds \(86400 s\), so it keeps nothing/],
    [
      'tiers out of order',
      { tiers: [{ every: 'daily', keepSeconds: 30 * day }, { every: 'hourly', keepSeconds: 60 * day }] },
      /tier 2 \(hourly\): tiers go from finer to coarser periods/,
    ],
    ['two tiers of one period', { tiers: [{ every: 'daily', keepSeconds: 30 * day }, { every: 'daily', keepSeconds: 60 * day }] }, /tier 2 \(daily\): tiers go from finer/],
    [
      'a finer tier kept longer than a coarser one after it',
      { tiers: [{ every: 'hourly', keepSeconds: 60 * day }, { every: 'daily', keepSeconds: 30 * day }] },
      /tier 2 \(daily\): kept for 2592000 s, not longer than the finer tier before it \(5184000 s\)/,
    ],
    ['too many points', { tiers: [{ every: 60, keepSeconds: 10 * day }] }, /the tiers keep 14400 points; at most 4096/],
    ['a cap under 64 MiB', { maxHistoryBytes: 10 * MiB }, /maxHistoryBytes must be a whole number of at least 67108864 bytes/],
    ['a reserve over 50%', { reserve: { percent: 60 } }, /the reserve is 0 to 50% of the file system/],
    ['a negative reserve', { reserve: { percent: -1 } }, /the reserve is 0 to 50%/],
    ['a reserve of negative bytes', { reserve: { bytes: -4096 } }, /the reserve is a whole, non-negative number of bytes/],
    ['a required window longer than anything kept', { requiredWindowSeconds: 31 * day }, /requiredWindowSeconds \(2678400 s\) is longer than the policy keeps anything \(2592000 s\)/],
    ['a negative required window', { requiredWindowSeconds: -5 }, /requiredWindowSeconds must be a whole, non-negative/],
  ];
  for (const [what, change, sentence] of cases) t.match(validateRetentionPolicy({ ...sound, ...change }), sentence, what);

  const soundOnes: Array<[string, Partial<RetentionPolicy>]> = [
    ['no tiers', { tiers: [], requiredWindowSeconds: 0 }],
    ['no continuous history', { keepAllSeconds: 0 }],
    ['every calendar period', { tiers: ['hourly', 'daily', 'weekly', 'monthly', 'yearly'].map((every, index) => ({ every: every as 'hourly', keepSeconds: [2, 30, 90, 400, 3650][index]! * day })) }],
    ['a fixed period', { tiers: [{ every: 900, keepSeconds: 2 * day }] }],
    ['a reserve in bytes', { reserve: { bytes: 10 * GiB } }],
    ['a reserve of half the disk', { reserve: { percent: 50 } }],
  ];
  for (const [what, change] of soundOnes) t.equal(validateRetentionPolicy({ ...sound, ...change }), null, what);
});

t.test('retainedTimes: hourly and daily points around a chosen instant', async (t) => {
  const now = micros('2026-03-04T10:30:00.000000Z'); // a Wednesday
  const kept = retainedTimes({ ...sound, keepAllSeconds: 2 * hour, tiers: [{ every: 'hourly', keepSeconds: 5 * hour }, { every: 'daily', keepSeconds: 3 * day }] }, now);
  t.equal(iso(kept.continuousFromMicros), '2026-03-04T08:30:00.000Z', 'continuous for the last 2 h');
  t.same(kept.tierStartsMicros.map(iso), ['2026-03-04T05:30:00.000Z', '2026-03-01T10:30:00.000Z'], 'each tier starts its keepSeconds back from now');
  t.same(
    kept.points.map((point) => [iso(point.micros), point.tier]),
    [
      ['2026-03-02T00:00:00.000Z', 1],
      ['2026-03-03T00:00:00.000Z', 1],
      ['2026-03-04T00:00:00.000Z', 1],
      ['2026-03-04T06:00:00.000Z', 0],
      ['2026-03-04T07:00:00.000Z', 0],
      ['2026-03-04T08:00:00.000Z', 0],
    ],
    'hour and day boundaries inside each tier, older than the continuous part; a midnight kept by both counts for the coarser tier once',
  );
  const atMidnight = retainedTimes({ ...sound, keepAllSeconds: hour, tiers: [{ every: 'hourly', keepSeconds: 3 * hour }, { every: 'daily', keepSeconds: 2 * day }] }, micros('2026-03-04T01:30:00Z'));
  t.same(
    atMidnight.points.map((point) => [iso(point.micros), point.tier]),
    [
      ['2026-03-03T00:00:00.000Z', 1],
      ['2026-03-03T23:00:00.000Z', 0],
      ['2026-03-04T00:00:00.000Z', 1],
    ],
    'a boundary both tiers keep is listed once, with the coarser tier',
  );
  const onBoundary = retainedTimes({ ...sound, keepAllSeconds: hour, tiers: [{ every: 'hourly', keepSeconds: 3 * hour }] }, micros('2026-03-04T10:00:00Z'));
  t.same(onBoundary.points.map((point) => iso(point.micros)), ['2026-03-04T07:00:00.000Z', '2026-03-04T08:00:00.000Z'], 'a tier keeps the boundary at its start, not the one where continuity begins');
});

t.test('retainedTimes: weeks start on Monday; months and years on the first, UTC', async (t) => {
  const now = micros('2026-03-04T10:30:00Z');
  const weekly = retainedTimes({ ...sound, keepAllSeconds: 0, tiers: [{ every: 'weekly', keepSeconds: 21 * day }] }, now);
  t.same(weekly.points.map((point) => iso(point.micros)), ['2026-02-16T00:00:00.000Z', '2026-02-23T00:00:00.000Z', '2026-03-02T00:00:00.000Z'], 'Mondays');
  for (const point of weekly.points) t.equal(new Date(point.micros / 1000).getUTCDay(), 1, `${iso(point.micros)} is a Monday`);

  const monthly = retainedTimes({ ...sound, keepAllSeconds: 0, tiers: [{ every: 'monthly', keepSeconds: 100 * day }] }, now);
  t.same(monthly.points.map((point) => iso(point.micros)), ['2025-12-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z', '2026-03-01T00:00:00.000Z'], 'first of each month, over a year end and a short February');

  const yearly = retainedTimes({ ...sound, keepAllSeconds: 0, tiers: [{ every: 'yearly', keepSeconds: 3 * 365 * day }] }, now);
  t.same(yearly.points.map((point) => iso(point.micros)), ['2024-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z'], 'first of January');
  t.equal(yearly.tierStartsMicros[0], now - 3 * 365 * day * 1_000_000);
});

t.test('retainedTimes: fixed periods are aligned to the epoch', async (t) => {
  const now = micros('2026-03-04T10:31:10Z');
  const kept = retainedTimes({ ...sound, keepAllSeconds: 600, tiers: [{ every: 900, keepSeconds: 3600 }] }, now);
  t.same(kept.points.map((point) => iso(point.micros)), ['2026-03-04T09:45:00.000Z', '2026-03-04T10:00:00.000Z', '2026-03-04T10:15:00.000Z'], 'quarter hours from 09:31:10 to 10:21:10');
  const odd = retainedTimes({ ...sound, keepAllSeconds: 0, tiers: [{ every: 7, keepSeconds: 21 }] }, 100 * 1_000_000);
  t.same(odd.points.map((point) => point.micros / 1_000_000), [84, 91, 98], 'multiples of the period since the epoch, from 79 s to 100 s');
});

t.test('changes: what is given replaces, the rest stays; tiers end up finest first', async (t) => {
  t.ok(retentionChangesAreEmpty({}), 'nothing given');
  t.ok(retentionChangesAreEmpty({ tiers: [], clearTiers: false }), 'nothing given, spelled out');
  t.notOk(retentionChangesAreEmpty({ keepAllSeconds: 0 }), 'a zero is a change');
  t.same(changeRetentionPolicy(sound, {}), sound, 'no changes');
  t.same(
    changeRetentionPolicy(sound, { tiers: [{ every: 'monthly', keepSeconds: 180 * day }, { every: 'hourly', keepSeconds: 2 * day }], reserve: { bytes: GiB } }),
    {
      ...sound,
      tiers: [
        { every: 'hourly', keepSeconds: 2 * day },
        { every: 'daily', keepSeconds: 30 * day },
        { every: 'monthly', keepSeconds: 180 * day },
      ],
      reserve: { bytes: GiB },
    },
    'a tier changed, one added in its place by period, the reserve switched to bytes',
  );
  t.same(changeRetentionPolicy(sound, { tiers: [{ every: 'hourly', keepSeconds: null }] }).tiers, [{ every: 'daily', keepSeconds: 30 * day }], 'a tier dropped');
  t.same(changeRetentionPolicy(sound, { clearTiers: true, tiers: [{ every: 'weekly', keepSeconds: 56 * day }] }).tiers, [{ every: 'weekly', keepSeconds: 56 * day }], 'all tiers replaced');
  t.same(sound.tiers.length, 2, 'the policy changed from is left alone');
});

// ---- retention.json ----

const directory = '/volumes/kept';
const paths = volumePaths(directory);

function storedPolicy(fileSystem: SimulatedFileSystem): RetentionPolicy {
  const content = JSON.parse(readWholeFile(fileSystem, paths.retention).toString('utf8')) as { formatVersion: number; policy: RetentionPolicy };
  if (content.formatVersion !== retentionFormatVersion) throw new Error(`format version ${content.formatVersion}`);
  return content.policy;
}

/** Create the volume and make it durable the way the VolumeStore does (its folder's name included). */
async function createVolume(fileSystem: SimulatedFileSystem, retention = {}): Promise<void> {
  fileSystem.mkdirp('/volumes');
  await fileSystem.syncDirectory('/');
  await Volume.create(directory, { name: 'kept', sizeBytes: 8 * MiB, regionSizeBytes: 64 * KiB, segmentSizeBytes: 64 * MiB, retention }, fileSystem);
  await fileSystem.syncDirectory('/volumes');
}

t.test('a new volume: the defaults, capped at 80% of the free space left once its files hold their space', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  fileSystem.setSpaceBudget(10 * GiB);
  await createVolume(fileSystem);
  const freeAfterBytes = fileSystem.freeBytes(directory);
  const policy = storedPolicy(fileSystem);
  t.same({ ...policy, maxHistoryBytes: 0 }, { ...defaultRetentionPolicy(0), maxHistoryBytes: 0 }, 'the defaults');
  t.ok(freeAfterBytes < 10 * GiB - 72 * MiB, 'the live image and the first segment took their space');
  t.ok(Math.abs(policy.maxHistoryBytes - 0.8 * freeAfterBytes) <= 0.8 * 64 * KiB, `cap ${policy.maxHistoryBytes} is 80% of ${freeAfterBytes} free (within the DRL's size)`);

  const volume = await Volume.open(directory, fileSystem);
  t.same(volume.retentionPolicy, policy, 'read back on open');
  t.throws(() => (volume.retentionPolicy.tiers as unknown[]).push({}), TypeError, 'the policy in force cannot be changed in place');
  await volume.close();
});

t.test('a new volume with changes to the defaults; nonsense refused before the volume exists', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  await createVolume(fileSystem, { keepAllSeconds: 2 * hour, maxHistoryBytes: 100 * GiB, tiers: [{ every: 'monthly', keepSeconds: 180 * day }] });
  t.match(storedPolicy(fileSystem), { keepAllSeconds: 2 * hour, maxHistoryBytes: 100 * GiB, tiers: [{ every: 'hourly' }, { every: 'daily' }, { every: 'monthly', keepSeconds: 180 * day }] });

  const other = new SimulatedFileSystem();
  await t.rejects(createVolume(other, { keepAllSeconds: 40 * day }), { code: 'EINVAL', message: /retention policy: tier 1 \(hourly\): kept for 604800 s, not longer than keepAllSeconds/ });
});

t.test('a volume made before retention policies gets the defaults at its next open', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  await createVolume(fileSystem);
  fileSystem.remove(paths.retention);
  await fileSystem.syncDirectory(directory);
  fileSystem.setSpaceBudget(5 * GiB);
  const volume = await Volume.open(directory, fileSystem);
  t.same(volume.retentionPolicy, defaultRetentionPolicy(5 * GiB), 'the defaults, from the free space at this open');
  t.same(storedPolicy(fileSystem), volume.retentionPolicy, 'written to retention.json');
  t.same(fileSystem.pendingOperations(paths.retention), [], 'durably');
  await volume.close();
});

t.test('setRetentionPolicy: refused with the reason, or stored durably and then told to listeners', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  await createVolume(fileSystem);
  const volume = await Volume.open(directory, fileSystem);
  const before = volume.retentionPolicy;
  const told: Array<{ policy: RetentionPolicy; storedThen: RetentionPolicy; pending: number }> = [];
  const stop = volume.onRetentionPolicyChanged((policy) => told.push({ policy, storedThen: storedPolicy(fileSystem), pending: fileSystem.pendingOperations(paths.retention).length }));

  const error = await volume.setRetentionPolicy({ ...before, reserve: { percent: 75 } }).catch((caught: unknown) => caught);
  t.ok(error instanceof StorageError && error.code === 'EINVAL', 'nonsense: EINVAL');
  t.equal((error as Error).message, 'retention policy: the reserve is 0 to 50% of the file system');
  t.same(volume.retentionPolicy, before, 'the policy in force stays');
  t.same(storedPolicy(fileSystem), before, 'and so does the file');
  t.equal(told.length, 0, 'no listener is told');

  const wanted = changeRetentionPolicy(before, { keepAllSeconds: 6 * hour, tiers: [{ every: 'weekly', keepSeconds: 56 * day }] });
  await volume.setRetentionPolicy(wanted);
  t.same(volume.retentionPolicy, wanted, 'in force');
  t.same(told, [{ policy: wanted, storedThen: wanted, pending: 0 }], 'the listener is told once the file is durable');

  stop();
  const concurrent = [1, 2, 3].map((hours) => volume.setRetentionPolicy({ ...wanted, keepAllSeconds: hours * hour }));
  await Promise.all(concurrent);
  t.equal(volume.retentionPolicy.keepAllSeconds, 3 * hour, 'concurrent changes apply in call order');
  t.equal(storedPolicy(fileSystem).keepAllSeconds, 3 * hour);
  t.equal(told.length, 1, 'a stopped listener is not told');
  await volume.close();

  const reopened = await Volume.open(directory, fileSystem);
  t.same(reopened.retentionPolicy, { ...wanted, keepAllSeconds: 3 * hour }, 'kept across a reopen');
  await reopened.close();
});

t.test('a crash in the middle of a change leaves the old policy or the new one, whole', async (t) => {
  const seed = Number(process.env['CDP_FAULT_SEED'] ?? 0x7e7e);
  const random = seededRandom(seed);
  const seen = new Set<string>();
  for (let cycle = 0; cycle < 60; cycle++) {
    const fileSystem = new SimulatedFileSystem();
    await createVolume(fileSystem);
    const volume = await Volume.open(directory, fileSystem, { history: false });
    const old = volume.retentionPolicy;
    const wanted = { ...old, keepAllSeconds: 2 * hour, tiers: [{ every: 'daily' as const, keepSeconds: 90 * day }] };
    let resolved = false;
    const change = volume.setRetentionPolicy(wanted).then(
      () => (resolved = true),
      () => undefined,
    );
    const turns = randomInteger(random, 0, 12);
    for (let turn = 0; turn < turns; turn++) await new Promise((resolve) => setImmediate(resolve));
    const survivor = fileSystem.crash(random, { process: cycle % 4 === 0 });
    await change;
    const after = await Volume.open(directory, survivor, { history: false });
    const found = after.retentionPolicy;
    const which = JSON.stringify(found) === JSON.stringify(wanted) ? 'new' : JSON.stringify(found) === JSON.stringify(old) ? 'old' : 'neither';
    if (which === 'neither' || (resolved && which === 'old')) t.fail(`seed ${seed} cycle ${cycle}: found ${JSON.stringify(found)}, the change ${resolved ? 'had' : 'had not'} resolved`);
    seen.add(which);
    await after.close();
  }
  t.same([...seen].sort(), ['new', 'old'], 'crashes landed both before and after the change became durable; every file was whole');
});
