// The Linux kernel's NBD client against the real appliance, in the tiny test VM (test/support/vm.ts):
//   1. attach a volume, mkfs.ext4, write files, sync, detach: the appliance's copy, read on this
//      machine with nbdcopy and debugfs, holds exactly those files;
//   2. `nbd-client -C 4`: four connections are attached, parallel writes land, each read
//      back through the kernel and through the appliance;
//   3. points in time: the test snapshots the volume over the API between two rounds of writes,
//      exports the snapshot, and the guest mounts it read-only (tools/host/attach-point-in-time.sh):
//      it holds exactly the first round's files, while the live volume holds the second round.
// The files are seeded random content whose SHA-256 the test computes itself.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { bootVm, buildTestVm, type VmRun } from '../support/vm.js';
import { api, checksums, guestFunctions, copyExport, fileMarkers, imageChecksums, imageRootNames, MiB, seededFiles, sha256 } from './common.js';

const seed = Number(process.env.VM_TEST_SEED ?? Date.now() % 1_000_000);
t.comment(`seed ${seed}`);

/**
 * Fails the test with the console's tail unless the guest script exited 0, the kernel logged no
 * I/O error, and the appliance logged no warning (a dropped connection, a protocol violation).
 */
async function expectCleanExit(t: Test, vm: VmRun, appliance: Appliance): Promise<void> {
  const result = await vm.finished;
  t.equal(result.scriptStatus, 0, `guest script exit status (${vm.accelerator}, boot ${result.bootMs} ms, run ${result.durationMs} ms)`, {
    tail: result.scriptStatus === 0 ? undefined : result.tail,
  });
  t.comment(`VM (${vm.accelerator}): boot ${result.bootMs} ms, whole run ${result.durationMs} ms`);
  t.equal(vm.markers('io-errors')[0]?.values[0], '0', 'the kernel saw no I/O error from the appliance');
  const warnings = appliance.logEntries().filter((entry) => typeof entry.level === 'number' && entry.level >= 40);
  t.same(warnings, [], 'the appliance logged no warning or error');
}

t.test('attach, mkfs.ext4, write files, sync, detach: the appliance holds the files', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio', 'nbdcopy', 'debugfs'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  const files = seededFiles(seed, { 'one.bin': 1 * MiB, 'odd.bin': 3 * MiB + 4097, 'small.txt': 300 });
  const expected = checksums(files);

  const vm = bootVm(t, image, {
    files: Object.fromEntries(Object.entries(files).map(([name, content]) => [`data/${name}`, content])),
    script: `
${guestFunctions}
nbd-client 10.0.2.2 ${appliance.nbdPort} /dev/nbd0 -N vol0 -timeout 20
echo "@@ size $(blockdev --getsize64 /dev/nbd0)"
mkfs.ext4 -q -F /dev/nbd0
mount -t ext4 /dev/nbd0 /mnt
cp /test/data/* /mnt/
sync
print_files /mnt file
umount /mnt
nbd-client -d /dev/nbd0
echo "@@ detached"
io_errors
`,
  });
  await expectCleanExit(t, vm, appliance);
  t.equal(Number(vm.markers('size')[0]?.values[0]), 64 * MiB, 'the kernel sees the volume size');
  t.same(fileMarkers(vm.markers('file')), expected, 'the guest read back what it wrote');
  t.equal(vm.markers('detached').length, 1, 'nbd-client -d detached');

  // What the kernel sent, from the volume's write log: mkfs's TRIM of the whole device, and the
  // request sizes (for the record: the kernel splits writes at max_sectors_kb).
  const inspect = await run(process.execPath, [cliPath, 'log', 'inspect', '--volume', 'vol0', '--data', appliance.dataDirectory, '--json']);
  t.equal(inspect.code, 0, 'log inspect reads the log', { stderr: inspect.stderr });
  const records = inspect.stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { kind: string; offsetBytes: number; lengthBytes: number });
  t.ok(records.some((record) => record.kind === 'trim' && record.offsetBytes === 0 && record.lengthBytes === 64 * MiB), 'mkfs trimmed the whole device in one request');
  const writeSizes = new Map<number, number>();
  for (const record of records) if (record.kind === 'data') writeSizes.set(record.lengthBytes, (writeSizes.get(record.lengthBytes) ?? 0) + 1);
  t.comment(`kernel writes by size (bytes: count): ${[...writeSizes].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([size, count]) => `${size}: ${count}`).join(', ')}`);

  const imagePath = `${directory}/copy.img`;
  await copyExport(appliance, 'vol0', imagePath);
  t.same(await imageRootNames(imagePath), Object.keys(expected).sort(), 'the appliance copy lists exactly the files');
  t.same(await imageChecksums(imagePath, Object.keys(expected)), expected, 'and each holds the bytes written');
});

t.test('nbd-client -C 4: four connections, parallel writes, read back', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio', 'nbdcopy'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  const regionBytes = 8 * MiB;
  const regionCount = 4;
  const pattern = seededFiles(seed + 1, { pattern: regionBytes }).pattern!;

  const vm = bootVm(t, image, {
    files: { pattern },
    script: `
${guestFunctions}
nbd-client 10.0.2.2 ${appliance.nbdPort} /dev/nbd0 -N vol0 -timeout 20 -C 4
echo "@@ attached"
read -r reply </dev/ttyS0
echo "@@ go $reply"
for region in 0 1 2 3; do
  dd if=/test/pattern of=/dev/nbd0 bs=128k seek=$((region * 64 + region)) conv=fsync 2>/dev/null &
done
wait
blockdev --flushbufs /dev/nbd0
for region in 0 1 2 3; do
  echo "@@ region $region $(dd if=/dev/nbd0 bs=128k skip=$((region * 64 + region)) count=64 2>/dev/null | sha256sum | cut -d' ' -f1)"
done
nbd-client -d /dev/nbd0
io_errors
`,
  });
  await vm.waitForMarker('attached', 120_000);
  const listed = await api(appliance, 'GET', '/api/v1/exports');
  const live = (listed.json.exports as Array<{ name: string; clients: unknown[] }>).find((entry) => entry.name === 'vol0');
  t.equal(live?.clients.length, 4, 'the appliance counts four connections of the kernel client');
  vm.send('counted');
  await expectCleanExit(t, vm, appliance);

  const expected = sha256(pattern);
  const regions = vm.markers('region');
  t.equal(regions.length, regionCount, 'every region read back');
  for (const marker of regions) t.equal(marker.values[1], expected, `region ${marker.values[0]} reads back through the kernel`);
  const imagePath = `${directory}/copy.img`;
  await copyExport(appliance, 'vol0', imagePath);
  const copy = fs.readFileSync(imagePath);
  for (let region = 0; region < regionCount; region++) {
    // Regions are 8 MiB apart plus one 128 KiB block, so no two writers share a request boundary.
    const offsetBytes = region * (regionBytes + 128 * 1024);
    t.equal(sha256(copy.subarray(offsetBytes, offsetBytes + regionBytes)), expected, `region ${region} is in the appliance`);
  }
});

t.test('points in time: snapshot between two rounds, the snapshot mounted read-only holds round one', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  const roundOne = seededFiles(seed + 2, { 'kept.bin': 2 * MiB + 11, 'changed.bin': 1 * MiB, 'deleted.bin': 512 * 1024 });
  const roundTwo = seededFiles(seed + 3, { 'changed.bin': 1 * MiB + 5, 'added.bin': 700 * 1024 });
  const expectedOne = checksums(roundOne);
  const expectedTwo = { 'kept.bin': expectedOne['kept.bin']!, ...checksums(roundTwo) };

  const vm = bootVm(t, image, {
    files: {
      ...Object.fromEntries(Object.entries(roundOne).map(([name, content]) => [`one/${name}`, content])),
      ...Object.fromEntries(Object.entries(roundTwo).map(([name, content]) => [`two/${name}`, content])),
    },
    script: `
${guestFunctions}
nbd-client 10.0.2.2 ${appliance.nbdPort} /dev/nbd0 -N vol0 -timeout 20
mkfs.ext4 -q -F /dev/nbd0
mount -t ext4 /dev/nbd0 /mnt
cp /test/one/* /mnt/
sync
# A consistent point in time: freeze the file system (its journal is written back) while the
# appliance marks the snapshot.
fsfreeze --freeze /mnt
echo "@@ frozen"
read -r snapshot_export </dev/ttyS0
fsfreeze --unfreeze /mnt
cp /test/two/* /mnt/
rm /mnt/deleted.bin
sync
print_files /mnt live
/host/attach-point-in-time.sh --host 10.0.2.2 --port ${appliance.nbdPort} --export "$snapshot_export" --mountpoint /snapshot --device /dev/nbd1
print_files /snapshot snapshot
if touch /snapshot/new 2>/dev/null; then echo "@@ writable"; fi
/host/detach.sh --device /dev/nbd1 --mountpoint /snapshot
umount /mnt
nbd-client -d /dev/nbd0
io_errors
`,
  });
  await vm.waitForMarker('frozen', 120_000);
  const snapshot = await api(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'round-one' });
  t.equal(snapshot.status, 201, 'snapshot round-one taken over the API', { response: snapshot.json });
  const created = await api(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'round-one' });
  t.equal(created.status, 201, 'its export created over the API', { response: created.json });
  vm.send(String(created.json.name));
  await expectCleanExit(t, vm, appliance);

  t.same(fileMarkers(vm.markers('live')), expectedTwo, 'the live volume holds round two');
  t.same(fileMarkers(vm.markers('snapshot')), expectedOne, 'the snapshot holds exactly round one');
  t.equal(vm.markers('writable').length, 0, 'the snapshot is mounted read-only');
});
