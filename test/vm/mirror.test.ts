// The appliance as a write-mostly leg of an md RAID1 mirror, in the tiny test VM, set up and
// repaired with the host scripts (tools/host/). One boot, in order:
//   1. attach-leg.sh --create: a mirror of the VM's local virtio disk and the appliance leg; the
//      initial full sync copies every block of the array to the appliance; write-behind is active.
//   2. mkfs.ext4 and files on the mirror; md `check` finds mismatch_cnt 0; the appliance's copy
//      of the leg's data area (read on this machine) holds the files.
//   3. A snapshot taken from the guest with snapshot.sh (file system frozen, leg idle), mounted
//      read-only with attach-point-in-time.sh while the mirror runs (a read-only loop device over
//      the leg's data area) and, at the end, with the mirror stopped (a read-only degraded array).
//   4. Faults: the test kills the appliance with kill -9 while the guest writes and syncs files,
//      and restarts it on the same port; md fails the leg and carries on; reattach-leg.sh re-adds
//      it and md resyncs only the bitmap-dirty chunks (bytes written to the leg, counted by the
//      kernel, well under the array's size); a later `check` finds mismatch_cnt 0; every file the
//      guest synced is intact in the appliance's copy. Then the appliance hangs (SIGSTOP): after
//      the leg's 10 s timeout md fails it and the host's writes go on; resumed and re-added, the
//      same checks hold.

import t from 'tap';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools } from '../support/tools.js';
import { bootVm, buildTestVm } from '../support/vm.js';
import { api, checksums, copyExport, guestFunctions, fileMarkers, imageChecksums, MiB, seededFiles } from './common.js';
import { createToken } from '../../appliance/api-tokens.js';

const seed = Number(process.env.VM_TEST_SEED ?? Date.now() % 1_000_000);
t.comment(`seed ${seed}`);

t.test('mirror leg: full initial sync, check, snapshot, kill -9 and a hang of the appliance, re-add resyncs only dirty chunks', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio', 'qemu-img', 'debugfs'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  let appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M' });
  const nbdPort = appliance.nbdPort;
  const httpPort = new URL(appliance.httpBase).port;
  // The host script needs no more than an operator token.
  const apiToken = createToken(dataDirectory, { name: 'host', role: 'operator' }).secret;
  const arrayBytesMax = 64 * MiB;
  const files = seededFiles(seed, { 'first.bin': 2 * MiB + 7, 'second.bin': 1 * MiB, 'note.txt': 1000 });
  const expected = checksums(files);
  const leg = `--host 10.0.2.2 --port ${nbdPort} --volume vol0 --array /dev/md0 --device /dev/nbd0 --timeout 10`;

  const vm = bootVm(t, image, {
    disks: [{ path: `${directory}/local.img`, sizeBytes: arrayBytesMax }],
    files: { ...Object.fromEntries(Object.entries(files).map(([name, content]) => [`data/${name}`, content])), 'api-token': apiToken },
    timeoutMs: 300_000,
    script: `
${guestFunctions}
written() { awk '{ print $7 * 512 }' /sys/block/nbd0/stat; }
check_array() {
  echo check >/sys/block/md0/md/sync_action
  sleep 1
  mdadm --wait /dev/md0 >/dev/null 2>&1 || true
  while [ "$(cat /sys/block/md0/md/sync_action)" != idle ]; do sleep 1; done
  echo "@@ mismatch $1 $(cat /sys/block/md0/md/mismatch_cnt)"
}

# 1. The mirror, and its initial full sync to the appliance.
/host/attach-leg.sh --host 10.0.2.2 --port ${nbdPort} --volume vol0 --create /dev/md0 --local-disk /dev/vda --device /dev/nbd0 --timeout 10 --bitmap-chunk 1M
echo "@@ synced $(written) $(($(cat /sys/block/md0/size) * 512))"
echo "@@ data-offset $(($(cat /sys/block/md0/md/dev-nbd0/offset) * 512))"
echo "@@ slot $(cat /sys/block/md0/md/dev-nbd0/slot) $(cat /sys/block/md0/md/dev-nbd0/state)"

# 2. A file system, files, a check.
mkfs.ext4 -q -F /dev/md0
mount -t ext4 /dev/md0 /mnt
cp /test/data/* /mnt/
sync
dd if=/dev/urandom of=/mnt/burst bs=128k count=64 2>/dev/null
sync
echo "@@ backlog $(cat /sys/block/md0/md/bitmap/backlog) $(cat /sys/block/md0/md/bitmap/max_backlog_used)"
rm /mnt/burst
sync
check_array first
print_files /mnt file
io_errors

# A snapshot from the host (snapshot.sh: freeze, wait for the leg to be idle, the API, thaw),
# inspected while the mirror runs (its data area through a loop device: mdadm will not assemble
# a second copy of an active array).
/host/snapshot.sh --api http://10.0.2.2:${httpPort} --token-file /test/api-token --volume vol0 --name mirrored --freeze /mnt
echo "@@ snapshotted"
read -r snapshot_export </dev/ttyS0
/host/attach-point-in-time.sh --host 10.0.2.2 --port ${nbdPort} --export "$snapshot_export" --mountpoint /snapshot --device /dev/nbd1
print_files /snapshot snapshot-live
/host/detach.sh --device /dev/nbd1 --mountpoint /snapshot

# 3. Faults: write and sync files while the test kills and restarts the appliance.
echo "@@ writing"
index=0
while [ "$index" -lt 12 ]; do
  dd if=/dev/urandom of=/mnt/during-$index.bin bs=64k count=4 2>/dev/null
  sync
  echo "@@ synced-file during-$index.bin $(sha256sum /mnt/during-$index.bin | cut -d' ' -f1)"
  index=$((index + 1))
  sleep 1
done
echo "@@ leg-state $(cat /sys/block/md0/md/dev-nbd0/state 2>/dev/null || echo removed) degraded=$(cat /sys/block/md0/md/degraded)"
read -r reply </dev/ttyS0
echo "@@ appliance $reply"
/host/reattach-leg.sh ${leg}
echo "@@ leg-back $(cat /sys/block/md0/md/dev-nbd0/state) degraded=$(cat /sys/block/md0/md/degraded)"
check_array second

# 4b. A hung appliance (SIGSTOP): requests time out after --timeout (10 s), md fails the leg, and
#     the host's writes go on with the local disk.
echo "@@ stall-ready"
read -r reply </dev/ttyS0
started=$(cut -d' ' -f1 /proc/uptime)
index=0
while [ "$index" -lt 3 ]; do
  dd if=/dev/urandom of=/mnt/stall-$index.bin bs=64k count=4 2>/dev/null
  sync
  echo "@@ synced-file stall-$index.bin $(sha256sum /mnt/stall-$index.bin | cut -d' ' -f1)"
  index=$((index + 1))
done
echo "@@ stall-writes $(awk -v started="$started" '{ printf "%d", ($1 - started) * 1000 }' /proc/uptime)"
echo "@@ stall-leg-state $(cat /sys/block/md0/md/dev-nbd0/state) degraded=$(cat /sys/block/md0/md/degraded)"
read -r reply </dev/ttyS0
/host/reattach-leg.sh ${leg}
check_array third
print_files /mnt final
umount /mnt
/host/detach.sh --device /dev/nbd0 --array /dev/md0
mdadm --stop /dev/md0

# The same point in time with the mirror stopped: assembled read-only and degraded from the leg.
/host/attach-point-in-time.sh --host 10.0.2.2 --port ${nbdPort} --export "$snapshot_export" --mountpoint /snapshot --device /dev/nbd1
echo "@@ snapshot-array $(grep -c '^md.*read-only.*nbd1' /proc/mdstat || true)"
print_files /snapshot snapshot-stopped
/host/detach.sh --device /dev/nbd1 --mountpoint /snapshot
dmesg | grep -E ' (md|nbd|raid1)' | tail -n 30
`,
  });

  // 1. The initial sync copied the whole array to the appliance.
  const synced = await vm.waitForMarker('synced', 200_000);
  const arrayBytes = Number(synced.values[1]);
  t.ok(arrayBytes > 60 * MiB && arrayBytes <= arrayBytesMax, `array of ${arrayBytes} bytes`);
  t.ok(Number(synced.values[0]) >= arrayBytes, `the initial sync wrote the whole array to the leg (${synced.values[0]} bytes)`);
  const slot = await vm.waitForMarker('slot');
  t.equal(slot.values[0], '0', 'the leg holds the first slot');
  t.match(slot.values[1], /write_mostly/, 'the leg is write-mostly');
  const backlog = await vm.waitForMarker('backlog');
  t.ok(Number(backlog.values[0]) > 0, `write-behind configured (backlog ${backlog.values[0]})`);
  t.ok(Number(backlog.values[1]) > 0, `write-behind used (max_backlog_used ${backlog.values[1]})`);
  const first = await vm.waitForMarker('mismatch');
  t.same(first.values, ['first', '0'], 'md check after the initial sync and the writes: no mismatch');
  t.equal((await vm.waitForMarker('io-errors')).values[0], '0', 'no I/O error on the leg before the fault');

  // 2. A snapshot of the mirror, taken by the guest with snapshot.sh; the test exports it.
  await vm.waitForMarker('snapshotted');
  const snapshots = await api(appliance, 'GET', '/api/v1/volumes/vol0/snapshots');
  t.match(JSON.stringify(snapshots.json), /"name":"mirrored"/, 'snapshot.sh took the snapshot through the API');
  t.ok(vm.lines.some((line) => line.includes('snapshot: thawed /mnt')), 'and thawed the file system');
  const created = await api(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'mirrored' });
  t.equal(created.status, 201, 'snapshot exported', { response: created.json });
  vm.send(String(created.json.name));

  // 3. Kill the appliance while the guest writes, restart it on the same port.
  await vm.waitForMarker('writing');
  await vm.waitForMarker('synced-file');
  await sleep(1500);
  await appliance.kill();
  t.comment('appliance killed with SIGKILL');
  await sleep(2000);
  appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M', nbdPort });
  const legState = await vm.waitForMarker('leg-state', 120_000);
  t.match(legState.values.join(' '), /(faulty|removed).*degraded=1/, 'md failed the leg and carried on degraded');
  vm.send('restarted');

  // 4. Hang the appliance (SIGSTOP) while the guest writes; resume it once md has failed the leg.
  await vm.waitForMarker('stall-ready', 180_000);
  appliance.child.kill('SIGSTOP');
  vm.send('stopped');
  const stallWrites = await vm.waitForMarker('stall-writes', 120_000);
  const stallLegState = await vm.waitForMarker('stall-leg-state');
  appliance.child.kill('SIGCONT');
  vm.send('resumed');
  const stallMs = Number(stallWrites.values[0]);
  t.ok(stallMs >= 8_000 && stallMs < 40_000, `the host's writes waited for the 10 s timeout, then went on (${stallMs} ms)`);
  t.match(stallLegState.values.join(' '), /faulty.*degraded=1/, 'md failed the hung leg');

  const result = await vm.finished;
  t.equal(result.scriptStatus, 0, `guest script (${vm.accelerator}, boot ${result.bootMs} ms, run ${result.durationMs} ms)`, {
    tail: result.scriptStatus === 0 ? undefined : result.tail,
  });
  t.comment(`VM (${vm.accelerator}): boot ${result.bootMs} ms, whole run ${result.durationMs} ms`);
  const resyncedBytes = vm.lines
    .filter((line) => line.includes('reattach-leg: resync done'))
    .map((line) => Number(/wrote (\d+) bytes/.exec(line)?.[1] ?? NaN));
  t.equal(resyncedBytes.length, 2, 'two re-adds: after the kill and after the hang');
  for (const bytes of resyncedBytes) t.ok(bytes > 0 && bytes < arrayBytes / 4, `re-add resynced ${bytes} bytes of ${arrayBytes}: only bitmap-dirty chunks`);
  t.match(vm.markers('leg-back')[0]?.values.join(' '), /in_sync.*write_mostly.*degraded=0|write_mostly.*in_sync.*degraded=0/, 'the leg is back, in sync, write-mostly');
  t.same(vm.markers('mismatch')[1]?.values, ['second', '0'], 'md check after the re-add: no mismatch');
  t.same(vm.markers('mismatch')[2]?.values, ['third', '0'], 'md check after the re-add that followed the hang: no mismatch');

  t.same(fileMarkers(vm.markers('snapshot-live')), expected, 'the snapshot, mounted while the mirror runs, holds the first files');
  t.same(fileMarkers(vm.markers('snapshot-stopped')), expected, 'and so it does assembled as a read-only, degraded array');
  t.equal(vm.markers('snapshot-array')[0]?.values[0], '1', 'mdadm assembled it read-only');

  // 4. The appliance's copy of the leg's data area holds every file the guest synced.
  const synchronizedFiles = fileMarkers(vm.markers('synced-file'));
  t.ok(Object.keys(synchronizedFiles).length >= 15, 'files were written through both faults');
  t.same(fileMarkers(vm.markers('file')), expected, 'the guest read back the first files');
  const final = fileMarkers(vm.markers('final'));
  t.same(final, { ...expected, ...synchronizedFiles }, 'the guest reads every synced file intact after the re-add');
  const dataOffsetBytes = Number(vm.markers('data-offset')[0]?.values[0]);
  const imagePath = `${directory}/leg.img`;
  await copyExport(appliance, 'vol0', imagePath, dataOffsetBytes);
  t.same(await imageChecksums(imagePath, Object.keys(final)), final, 'the appliance holds every synced file intact');
  t.ok(fs.statSync(imagePath).size >= arrayBytes, 'the copy covers the array');
});
