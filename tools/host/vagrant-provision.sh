#!/bin/sh
# Provisioning of the Vagrantfile's Debian 12 VM (run by Vagrant, as root, once): installs the
# NBD client, mdadm and curl, finds the spare disk, and makes /dev/md0 a RAID1 mirror of it and
# the appliance's volume with attach-leg.sh. Settings come from the environment: CDP_NBD_HOST,
# CDP_NBD_PORT, CDP_NBD_VOLUME.
set -eu
script_name=vagrant-provision
. "$(dirname "$0")/common.sh"
case "${1:-}" in --help|-h) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

host=${CDP_NBD_HOST:?set CDP_NBD_HOST}
port=${CDP_NBD_PORT:-10809}
volume=${CDP_NBD_VOLUME:-vol0}
missing=""
for tool in nbd-client mdadm curl mkfs.ext4; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nbd-client mdadm curl e2fsprogs
fi
[ -d /etc/modules-load.d ] && echo nbd >/etc/modules-load.d/nbd.conf

if [ -b /dev/md0 ] && [ -e /sys/block/md0/md/level ]; then
  log "/dev/md0 exists already: use reattach-leg.sh to put the leg back"
  exit 0
fi
# The spare disk: the whole disk with no partitions and no file system that is not the root's.
spare=""
for candidate in /dev/sdb /dev/vdb; do
  [ -b "$candidate" ] || continue
  if ! blkid "$candidate" >/dev/null 2>&1 && [ -z "$(ls "/sys/block/${candidate##*/}" | grep "^${candidate##*/}[0-9]")" ]; then
    spare=$candidate
    break
  fi
done
[ -n "$spare" ] || fail "no empty spare disk (/dev/sdb or /dev/vdb)"
"$(dirname "$0")/attach-leg.sh" --host "$host" --port "$port" --volume "$volume" --create /dev/md0 --local-disk "$spare" --device /dev/nbd0
# Assembled under the same name at boot (from the local disk alone until reattach-leg.sh).
if [ -d /etc/mdadm ] && ! grep -q "$(mdadm --detail --brief /dev/md0 | awk '{ print $NF }')" /etc/mdadm/mdadm.conf 2>/dev/null; then
  mdadm --detail --brief /dev/md0 >>/etc/mdadm/mdadm.conf
  if command -v update-initramfs >/dev/null 2>&1; then update-initramfs -u >/dev/null 2>&1 || log "update-initramfs failed"; fi
fi
mkfs.ext4 -q /dev/md0
mkdir -p /srv/protected
mount /dev/md0 /srv/protected
grep -q ' /srv/protected ' /etc/fstab 2>/dev/null || echo '/dev/md0 /srv/protected ext4 defaults,nofail 0 2' >>/etc/fstab
log "/srv/protected is an ext4 file system on /dev/md0: $spare mirrored to $volume at $host:$port"
