// Recovery of a log with a bad record (issue 10 §6; docs/formats/write-log.md, "Damage"), on the
// simulated file system (test/support/simulated-file-system.ts) with the index in memory
// (test/support/simulated-index-databases.ts): a volume takes 150 FUA writes of 64 KiB across
// three 4 MiB segments, the machine crashes, and the test damages one record before reopening.
//
// Invariants checked:
//   1. A bad last record is a torn tail: the log ends before it, nothing is quarantined, the
//      volume takes writes.
//   2. A bad record with good ones after it, after a process crash, is damage: the part of the
//      log past it is kept in quarantine/<µs>/ byte for byte (its segment's bytes from the tear,
//      later segments whole) with a report of the sequences lost and found; the volume reads as
//      before but refuses writes and marks, across reopens, until the folder is taken away; then
//      it logs its dirty regions and verifies clean.
//   3. After a power loss, good records past a tear may be writes that never became durable: kept
//      and reported, and the volume takes writes; unless the index had cut them (they were
//      durable): then it is damage, and once its folder is gone the volume does not open until the
//      index is rebuilt.

import t from 'tap';
import { KiB, MiB, Volume, logStart, scanLog, storageLimits, verifyVolume, volumePaths, type QuarantineReport } from '../../storage/index.js';
import { readWholeFile } from '../../storage/io/file-system.js';
import { indexLimits } from '../../storage/limits.js';
import { SimulatedFileSystem } from '../support/simulated-file-system.js';
import { SimulatedIndexDatabases } from '../support/simulated-index-databases.js';
import { randomBytesFrom, seededRandom } from '../support/seeded-random.js';

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

const volumeSizeBytes = 16 * MiB;
const writeBytes = 64 * KiB;
const writeCount = 150;
const volumeDirectory = '/volumes/damaged';
const paths = volumePaths(volumeDirectory);

interface Machine {
  fileSystem: SimulatedFileSystem;
  indexes: SimulatedIndexDatabases;
}

function setTestLimits(t: TapTest): void {
  const changes: Array<[Record<string, number>, string, number]> = [
    [storageLimits as unknown as Record<string, number>, 'segmentSizeBytesMin', 1 * MiB],
    [storageLimits as unknown as Record<string, number>, 'regionCleanIntervalMs', 3_600_000],
    [indexLimits as unknown as Record<string, number>, 'cutCheckIntervalMs', 3_600_000],
  ];
  for (const [limits, name, value] of changes) {
    const previous = limits[name]!;
    limits[name] = value;
    t.teardown(() => {
      limits[name] = previous;
    });
  }
}

function open(machine: Machine): Promise<Volume> {
  return Volume.open(volumeDirectory, machine.fileSystem, { history: true, indexDatabase: machine.indexes.factory, logCompression: 'off' });
}

/** A volume with 150 FUA writes (random data, every 64 KiB block its own), crashed as asked; returns the data written. */
async function writtenAndCrashed(t: TapTest, crash: { process: boolean; cutFirst?: boolean }): Promise<{ machine: Machine; data: Buffer[] }> {
  setTestLimits(t);
  const random = seededRandom(7);
  const fileSystem = new SimulatedFileSystem();
  const indexes = new SimulatedIndexDatabases();
  fileSystem.mkdirp('/volumes');
  await Volume.create(volumeDirectory, { name: 'damaged', sizeBytes: volumeSizeBytes, regionSizeBytes: 1 * MiB, segmentSizeBytes: 4 * MiB }, fileSystem);
  const volume = await open({ fileSystem, indexes });
  const data: Buffer[] = [];
  for (let index = 0; index < writeCount; index++) {
    const block = randomBytesFrom(random, writeBytes);
    const offsetBytes = offsetOf(index);
    await volume.write(offsetBytes, block, { fua: true });
    data.push(block);
  }
  if (crash.cutFirst === true) await volume.history!.cutNow();
  const crashed = { fileSystem: fileSystem.crash(random, crash.process ? { process: true } : { keepProbability: 1, tearProbability: 0 }), indexes: indexes.crash(random, { process: true }) };
  void volume.close().catch(() => undefined); // the old machine is gone
  return { machine: crashed, data };
}

function offsetOf(index: number): number {
  return ((index * 37) % (volumeSizeBytes / writeBytes)) * writeBytes;
}

/** The volume after the first `count` writes. */
function imageAfter(data: readonly Buffer[], count: number): Buffer {
  const image = Buffer.alloc(volumeSizeBytes);
  for (let index = 0; index < count; index++) data[index]!.copy(image, offsetOf(index));
  return image;
}

/** Every block written by the first `certain` writes holds them; those of the writes after, up to `count`, hold them or zeroes. */
function holdsWrites(image: Buffer, data: readonly Buffer[], certain: number, count: number): boolean {
  for (let index = 0; index < count; index++) {
    const block = image.subarray(offsetOf(index), offsetOf(index) + writeBytes);
    if (block.equals(data[index]!)) continue;
    if (index < certain || !block.equals(Buffer.alloc(writeBytes))) return false;
  }
  return true;
}

/** Where each record of the log starts, by sequence. */
function recordPositions(fileSystem: SimulatedFileSystem): Map<number, { segmentNumber: number; offsetBytes: number }> {
  const positions = new Map<number, { segmentNumber: number; offsetBytes: number }>();
  scanLog(fileSystem, paths.log, { from: logStart(fileSystem, paths.log)!, expectedSequence: 1, withPayload: false }, ({ header, position }) => {
    positions.set(header.sequence, position);
  });
  return positions;
}

/** Flip bytes in the middle of a record's payload: its checksum no longer holds. */
function damageRecord(fileSystem: SimulatedFileSystem, position: { segmentNumber: number; offsetBytes: number }): void {
  const handle = fileSystem.open(`${paths.log}/${String(position.segmentNumber).padStart(16, '0')}.wlog`);
  handle.writeSync(Buffer.alloc(16, 0xee), position.offsetBytes + 48 + 1000);
  handle.close();
}

function segmentBytes(fileSystem: SimulatedFileSystem, segmentNumber: number): Buffer {
  return readWholeFile(fileSystem, `${paths.log}/${String(segmentNumber).padStart(16, '0')}.wlog`);
}

function reports(fileSystem: SimulatedFileSystem): QuarantineReport[] {
  if (!fileSystem.exists(`${volumeDirectory}/quarantine`)) return [];
  return fileSystem.list(`${volumeDirectory}/quarantine`).map((name) => JSON.parse(readWholeFile(fileSystem, `${volumeDirectory}/quarantine/${name}/report.json`).toString('utf8')) as QuarantineReport);
}

t.test('a bad last record is a torn tail: the log ends before it, nothing is quarantined', async (t) => {
  const { machine, data } = await writtenAndCrashed(t, { process: true });
  damageRecord(machine.fileSystem, recordPositions(machine.fileSystem).get(writeCount)!);
  const volume = await open(machine);
  t.match(volume.recovery.tear, { reason: 'checksum mismatch' }, 'a tear');
  t.equal(volume.recovery.quarantine, null, 'nothing past it');
  t.equal(volume.recovery.nextSequence, writeCount, 'the log ends before the torn record');
  t.same(reports(machine.fileSystem), [], 'no quarantine folder');
  t.equal(volume.stats().failed, null, 'the volume is not failed');
  t.same(volume.degradedReasons(), []);
  t.ok(holdsWrites(await volume.read(0, volumeSizeBytes), data, writeCount - 1, writeCount), 'the live image holds every write before the torn one, and the torn one or not');
  await volume.write(0, Buffer.alloc(writeBytes, 1), { fua: true });
  await volume.close();
});

t.test('damage in the middle after a process crash: quarantined, reported, writes refused until the folder is taken away', async (t) => {
  const { machine, data } = await writtenAndCrashed(t, { process: true });
  const positions = recordPositions(machine.fileSystem);
  const damaged = 40;
  const tear = positions.get(damaged)!;
  t.equal(tear.segmentNumber, 1, 'the damaged record lies in the first segment');
  t.ok(positions.get(writeCount)!.segmentNumber >= 3, 'the log spans three segments or more');
  const originals = new Map([1, 2, 3].map((segmentNumber) => [segmentNumber, segmentBytes(machine.fileSystem, segmentNumber)]));
  damageRecord(machine.fileSystem, tear);
  const damagedSegment = segmentBytes(machine.fileSystem, 1);

  let volume = await open(machine);
  const report = volume.recovery.quarantine!;
  t.match(report, { kind: 'damage', machineRestarted: false, tear: { segmentNumber: 1, offsetBytes: tear.offsetBytes, reason: 'checksum mismatch', expectedSequence: damaged } }, 'recovery found damage');
  t.same(report.lostSequences, [{ firstSequence: damaged, lastSequence: damaged }], 'the damaged record is lost');
  t.match(report.foundRecords, [{ firstSequence: damaged + 1, lastSequence: writeCount, recordCount: writeCount - damaged }], 'every record after it was found, across segments');
  t.same(reports(machine.fileSystem).map((stored) => stored.kind), ['damage'], 'the report is on disk');

  const folder = `${volumeDirectory}/${report.folder}`;
  const copy = report.files.find((file) => file.segmentNumber === 1)!;
  t.ok(readWholeFile(machine.fileSystem, `${folder}/${copy.name}`).equals(damagedSegment.subarray(tear.offsetBytes, tear.offsetBytes + copy.lengthBytes)), "the first segment's bytes from the tear on are kept as they were");
  for (const segmentNumber of [2, 3]) {
    t.ok(readWholeFile(machine.fileSystem, `${folder}/${String(segmentNumber).padStart(16, '0')}.wlog`).equals(originals.get(segmentNumber)!), `segment ${segmentNumber} is kept whole`);
    const inLog = `${paths.log}/${String(segmentNumber).padStart(16, '0')}.wlog`;
    t.ok(!machine.fileSystem.exists(inLog) || !segmentBytes(machine.fileSystem, segmentNumber).equals(originals.get(segmentNumber)!), 'and is out of the log (the log may have made a new one of that number)');
  }

  t.match(volume.stats().failed, new RegExp(`refuses writes: the write log is bad at segment 1 at byte ${tear.offsetBytes} \\(checksum mismatch\\); record ${damaged} is lost, and the good records ${damaged + 1}-${writeCount} found past it are kept in quarantine/\\d+`), 'the volume says so, with the ranges');
  t.ok(volume.recovery.resyncRegions.length > 0, 'its dirty regions are logged (the live image may hold writes the log lost)');
  const live = await volume.read(0, volumeSizeBytes);
  t.ok(holdsWrites(live, data, damaged - 1, writeCount), 'reads show the writes before the damage, and of the later ones what reached the live image');
  const view = await volume.history!.openView(damaged - 1, 'before the damage');
  t.ok((await view.read(0, volumeSizeBytes)).equals(imageAfter(data, damaged - 1)), 'the instant just before the damage reads as written');
  const newest = await volume.history!.openView(volume.stats().durableSequence, 'now');
  t.ok((await newest.read(0, volumeSizeBytes)).equals(live), 'and the newest instant is the live image');
  newest.release();
  view.release();
  await t.rejects(volume.write(0, data[0]!, { fua: true }), { code: 'EIO' }, 'writes are refused');
  await t.rejects(volume.history!.createSnapshot('after'), { code: 'EIO' }, 'so are marks');
  await volume.close();

  volume = await open(machine);
  t.equal(volume.recovery.quarantine, null, 'a reopen finds nothing new');
  t.match(volume.stats().failed, /refuses writes: the write log is bad/, 'and still refuses writes');
  await volume.close();

  machine.fileSystem.removeTree(`${volumeDirectory}/quarantine`);
  volume = await open(machine);
  t.equal(volume.stats().failed, null, 'with the folder gone, the volume takes writes');
  t.ok((await volume.read(0, volumeSizeBytes)).equals(live), 'the live image is as it was');
  await volume.write(0, data[1]!, { fua: true });
  const verification = await verifyVolume(volume);
  t.ok(verification.ok, `the log, the index and the live image agree again: ${JSON.stringify({ maps: verification.maps, image: verification.image.mismatches })}`);
  await volume.close();
});

t.test('after a power loss, good records past a tear are kept and reported, and the volume goes on', async (t) => {
  const { machine } = await writtenAndCrashed(t, { process: false });
  damageRecord(machine.fileSystem, recordPositions(machine.fileSystem).get(140)!);
  const volume = await open(machine);
  t.match(volume.recovery.quarantine, { kind: 'unsynced-records', machineRestarted: true, lostSequences: [{ firstSequence: 140, lastSequence: 140 }], foundRecords: [{ firstSequence: 141, lastSequence: writeCount }] });
  t.equal(volume.stats().failed, null, 'the volume is not failed');
  t.match(volume.degradedReasons(), [/after a machine restart, the write log is bad at .*record 140 is lost, and the good records 141-150 found past it are kept in quarantine\/\d+/], 'but reports what it kept');
  await volume.write(0, Buffer.alloc(writeBytes, 3), { fua: true });
  t.ok((await verifyVolume(volume)).ok, 'and verifies clean');
  await volume.close();
});

t.test('records past a tear that the index had cut were durable: damage; without its folder the volume does not open', async (t) => {
  const { machine } = await writtenAndCrashed(t, { process: false, cutFirst: true });
  damageRecord(machine.fileSystem, recordPositions(machine.fileSystem).get(140)!);
  let volume = await open(machine);
  t.equal(volume.recovery.quarantine?.kind, 'unsynced-records', 'recovery alone cannot tell');
  t.match(volume.stats().failed, /refuses writes: the write log is bad/, 'the index shows they were durable: damage');
  t.match(reports(machine.fileSystem), [{ kind: 'damage', indexMappedThroughSequence: writeCount }], 'the report says so');
  await volume.close();

  machine.fileSystem.removeTree(`${volumeDirectory}/quarantine`);
  await t.rejects(open(machine), { code: 'ECORRUPT', message: /the index holds records through 150, past the end of the log at 139.*rebuild the index/ }, 'the index names records the log lost');
});
