// The Vagrantfile's provisioning script (tools/host/vagrant-provision.sh) in the tiny test VM, with
// the settings the Vagrantfile passes: it finds the empty spare disk (the second one; the first
// stands for the system disk), makes /dev/md0 a mirror of it and the appliance's volume with the
// leg write-mostly in the first slot, and mounts an ext4 file system on /srv/protected. A second
// run leaves the mirror alone. Then a simulated reboot (md assembled from the local disk alone)
// and reattach-leg.sh, as docs/host-setup.md says to do after one (with mdadm's default 64 MiB
// bitmap chunk, the whole of this small array is resent; test/vm/mirror.test.ts measures a
// dirty-chunks-only resync with 1 MiB chunks).

import t from 'tap';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools } from '../support/tools.js';
import { bootVm, buildTestVm } from '../support/vm.js';
import { MiB } from './common.js';

t.test('vagrant-provision.sh makes the mirror of the spare disk and the volume, and mounts it', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  const vm = bootVm(t, image, {
    disks: [
      { path: `${directory}/system.img`, sizeBytes: 16 * MiB },
      { path: `${directory}/spare.img`, sizeBytes: 64 * MiB },
    ],
    script: `
mkfs.ext4 -q -F /dev/vda
export CDP_NBD_HOST=10.0.2.2 CDP_NBD_PORT=${appliance.nbdPort} CDP_NBD_VOLUME=vol0
sh /host/vagrant-provision.sh
echo "@@ mounted $(awk '$2 == "/srv/protected" { print $1, $3 }' /proc/mounts)"
echo "@@ members $(ls /sys/block/md0/md | grep '^dev-' | sort | tr '\\n' ' ')"
echo "@@ leg $(cat /sys/block/md0/md/dev-nbd0/slot) $(cat /sys/block/md0/md/dev-nbd0/state)"
echo "@@ boot-config $(grep -c '^ARRAY /dev/md0' /etc/mdadm/mdadm.conf) $(grep -c ' /srv/protected ext4 defaults,nofail' /etc/fstab)"
echo hello >/srv/protected/hello
sync
sh /host/vagrant-provision.sh
echo "@@ second-run $?"
cat /srv/protected/hello

# "Reboot": the mirror stops, the NBD device goes away, md assembles the local disk alone, the
# host writes, then reattach-leg.sh puts the leg back.
umount /srv/protected
mdadm --stop /dev/md0
nbd-client -d /dev/nbd0
mdadm --assemble --run /dev/md0 /dev/vdb
echo "@@ degraded $(cat /sys/block/md0/md/degraded)"
mount /dev/md0 /srv/protected
echo after-reboot >/srv/protected/later
sync
/host/reattach-leg.sh --host 10.0.2.2 --port ${appliance.nbdPort} --volume vol0 --array /dev/md0 --device /dev/nbd0
echo "@@ after-reattach $(cat /sys/block/md0/md/degraded) $(cat /sys/block/md0/md/dev-nbd0/slot) $(cat /sys/block/md0/md/dev-nbd0/state)"
umount /srv/protected
/host/detach.sh --device /dev/nbd0 --array /dev/md0
mdadm --stop /dev/md0
`,
  });
  const result = await vm.finished;
  t.equal(result.scriptStatus, 0, `guest script (${vm.accelerator}, boot ${result.bootMs} ms, run ${result.durationMs} ms)`, {
    tail: result.scriptStatus === 0 ? undefined : result.tail,
  });
  t.same(vm.markers('mounted')[0]?.values, ['/dev/md0', 'ext4'], '/srv/protected is ext4 on /dev/md0');
  t.same(vm.markers('members')[0]?.values, ['dev-nbd0', 'dev-vdb'], 'the mirror is the spare disk and the leg, not the system disk');
  t.same(vm.markers('leg')[0]?.values, ['0', 'in_sync,write_mostly'], 'the leg is in the first slot, in sync, write-mostly');
  t.ok(vm.lines.some((line) => line.includes('attach-leg: write-behind: active=yes')), 'write-behind is active');
  t.same(vm.markers('boot-config')[0]?.values, ['1', '1'], 'mdadm.conf names the array and fstab mounts it with nofail');
  t.ok(vm.lines.some((line) => line.includes('/dev/md0 exists already')), 'a second run leaves the mirror alone');
  t.equal(vm.markers('second-run')[0]?.values[0], '0', 'and succeeds');
  t.same(vm.markers('degraded')[0]?.values, ['1'], 'after the "reboot" md runs on the local disk alone');
  t.ok(vm.lines.some((line) => line.includes('mdadm: re-added /dev/nbd0')), 'reattach-leg.sh re-adds the leg with its bitmap');
  t.same(vm.markers('after-reattach')[0]?.values, ['0', '0', 'in_sync,write_mostly'], 'the mirror is whole again, the leg back in slot 0');
});
