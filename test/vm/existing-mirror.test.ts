// attach-leg.sh on an existing mirror of two local disks, in the tiny test VM, where the leg can
// only take the third slot:
//   1. without --writemostly-first-slot: an internal bitmap is added, the mirror grown to three
//      devices, the leg synced; the script says write-behind is inactive, and it is: md on Linux
//      6.1 leaves max_backlog_used at 0 however much the host writes (the behaviour the script
//      works around, observed rather than assumed);
//   2. detached with --forget and attached again with --writemostly-first-slot: the leg takes the
//      free slot (no grow), the first local disk is marked write-mostly, and md now uses
//      write-behind (max_backlog_used above 0) while the second local disk stays a normal member.

import t from 'tap';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools } from '../support/tools.js';
import { bootVm, buildTestVm } from '../support/vm.js';
import { MiB } from './common.js';

t.test('attach-leg.sh --array on a two-disk mirror: write-behind inactive in slot 2, active with --writemostly-first-slot', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  const leg = `--host 10.0.2.2 --port ${appliance.nbdPort} --volume vol0 --array /dev/md0 --device /dev/nbd0 --bitmap-chunk 1M`;
  const vm = bootVm(t, image, {
    disks: [
      { path: `${directory}/a.img`, sizeBytes: 64 * MiB },
      { path: `${directory}/b.img`, sizeBytes: 64 * MiB },
    ],
    script: `
write_burst() { dd if=/dev/urandom of=/dev/md0 bs=128k count=80 seek=40 oflag=direct 2>/dev/null; }
states() { for member in /sys/block/md0/md/dev-*; do printf '%s=%s/%s ' "\${member##*/dev-}" "$(cat "$member/slot")" "$(cat "$member/state")"; done; }
mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 /dev/vda /dev/vdb
mdadm --wait /dev/md0 || true

/host/attach-leg.sh ${leg}
write_burst
echo "@@ plain $(cat /sys/block/md0/md/raid_disks) $(cat /sys/block/md0/md/bitmap/max_backlog_used) $(states)"

/host/detach.sh --device /dev/nbd0 --array /dev/md0 --forget
echo 0 >/sys/block/md0/md/bitmap/max_backlog_used
/host/attach-leg.sh ${leg} --writemostly-first-slot
write_burst
echo "@@ first-slot $(cat /sys/block/md0/md/raid_disks) $(cat /sys/block/md0/md/bitmap/max_backlog_used) $(states)"
/host/detach.sh --device /dev/nbd0 --array /dev/md0
mdadm --stop /dev/md0
`,
  });
  const result = await vm.finished;
  t.equal(result.scriptStatus, 0, `guest script (${vm.accelerator}, boot ${result.bootMs} ms, run ${result.durationMs} ms)`, {
    tail: result.scriptStatus === 0 ? undefined : result.tail,
  });
  const attachReports = vm.lines.filter((line) => line.startsWith('attach-leg: write-behind:'));
  t.equal(attachReports.length, 2, 'each attach reports write-behind');

  // 1. The leg in slot 2.
  t.ok(vm.lines.some((line) => line.includes('adding an internal write-intent bitmap to /dev/md0')), 'a bitmap was added');
  t.ok(vm.lines.some((line) => line.includes('growing it to 3 devices')), 'the mirror was grown to three devices');
  t.match(attachReports[0], /active=no/, 'the script says write-behind is inactive');
  t.ok(vm.lines.some((line) => line.includes('write-behind is configured but inactive')), 'and why');
  const plain = vm.markers('plain')[0]?.values ?? [];
  t.equal(plain[0], '3', 'three devices');
  t.equal(plain[1], '0', 'md never used write-behind with the leg in slot 2 (max_backlog_used 0)');
  t.ok(plain.includes('nbd0=2/in_sync,write_mostly'), `the leg is write-mostly in slot 2 (${plain.slice(2).join(' ')})`);

  // 2. With the first local disk marked write-mostly.
  t.match(attachReports[1], /active=yes/, 'with --writemostly-first-slot the script says write-behind is active');
  const firstSlot = vm.markers('first-slot')[0]?.values ?? [];
  t.equal(firstSlot[0], '3', 'the leg took the free slot: still three devices');
  t.ok(Number(firstSlot[1]) > 0, `md used write-behind (max_backlog_used ${firstSlot[1]})`);
  t.ok(firstSlot.includes('vda=0/in_sync,write_mostly'), 'the first local disk is write-mostly');
  t.ok(firstSlot.includes('vdb=1/in_sync'), 'the second local disk stays a normal member');
  t.ok(firstSlot.includes('nbd0=2/in_sync,write_mostly'), 'the leg is write-mostly in slot 2');
});
