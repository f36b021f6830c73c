#!/bin/sh
# Attach a point-in-time export of cdp-nbd read-only and mount it (as root on the host): the
# export is a view the appliance made (`cdp-nbd export create VOLUME --snapshot NAME`, or
# POST /api/v1/exports). When it carries an md superblock (it was a mirror leg), the one-legged
# mirror is assembled read-only and degraded first (or, when that mirror runs on this very host,
# its data area is read through a read-only loop device). The file system is mounted without replaying
# its journal (ext3/ext4 `noload`, xfs `norecovery`), since nothing may be written.
set -eu
script_name=attach-point-in-time
. "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: attach-point-in-time.sh --host HOST --export NAME --mountpoint DIR [options]

  --host HOST         the appliance's address
  --port PORT         its NBD port (default 10809)
  --export NAME       the point-in-time export, e.g. vol0@before-deploy
  --mountpoint DIR    where to mount it (made if missing)
  --device /dev/nbdN  the NBD device to use (default: the first free one)
  --array /dev/mdN    the md device to assemble an md leg as (default: the first free from
                      /dev/md100). When the leg's own mirror runs on this host, mdadm will not
                      assemble a second copy: the data area is read through a read-only loop
                      device instead
  --timeout SECONDS   request timeout (default 20)
  --help              this text

Detach with: detach.sh --device /dev/nbdN --mountpoint DIR (it stops the array or loop device)
USAGE
}

host="" port=10809 export_name="" mountpoint="" device="" array="" timeout_seconds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --host) need_value "$@"; host=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --export) need_value "$@"; export_name=$2; shift 2 ;;
    --mountpoint) need_value "$@"; mountpoint=$2; shift 2 ;;
    --device) need_value "$@"; device=$2; shift 2 ;;
    --array) need_value "$@"; array=$2; shift 2 ;;
    --timeout) need_value "$@"; timeout_seconds=$2; shift 2 ;;
    --help|-h) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$host" ] && [ -n "$export_name" ] && [ -n "$mountpoint" ] || fail "--host, --export and --mountpoint are required"

require_root
ensure_tools
[ -n "$device" ] || device=$(free_nbd_device)
nbd_attach "$host" "$port" "$device" "$export_name" "$timeout_seconds" 1 -readonly

target=$device
if mdadm --examine "$device" >/dev/null 2>&1; then
  [ -n "$array" ] || array=$(free_md_device)
  # md still writes its bitmap superblock when it starts and stops the array; the read-only NBD
  # device refuses that (an I/O error in the kernel log) and md carries on read-only.
  log "$device carries an md superblock: assembling it read-only and degraded as $array"
  if mdadm --assemble --readonly --run "$array" "$device"; then
    target=$array
  else
    # mdadm will not assemble a second copy of an array that runs on this host (the mirror this
    # leg belongs to: same array UUID). Read the leg's data area through a read-only loop device.
    offset_sectors=$(mdadm --examine "$device" | sed -n 's/^ *Data Offset : \([0-9]*\) sectors.*/\1/p')
    [ -n "$offset_sectors" ] || { nbd_detach "$device"; fail "cannot read the md data offset of $device"; }
    loop=$(losetup -f) || { nbd_detach "$device"; fail "no free loop device"; }
    losetup -r -o $((offset_sectors * 512)) "$loop" "$device" || { nbd_detach "$device"; fail "cannot set up $loop"; }
    log "the same array is active here: reading the leg's data area (from sector $offset_sectors) through $loop, read-only"
    target=$loop
  fi
fi

type=""
if command -v blkid >/dev/null 2>&1; then
  type=$(blkid "$target" 2>/dev/null | sed -n 's/.* TYPE="\([^"]*\)".*/\1/p')
elif dumpe2fs -h "$target" >/dev/null 2>&1; then
  # No blkid (a minimal system): e2fsprogs still tells an ext file system and its journal.
  dumpe2fs -h "$target" 2>/dev/null | grep -q '^Filesystem features:.*has_journal' && type=ext4 || type=ext2
fi
case "$type" in
  ext3|ext4) options=ro,noload ;;
  xfs) options=ro,norecovery ;;
  "") fail "no file system found on $target (detach with detach.sh --device $device)" ;;
  *) options=ro ;;
esac
mkdir -p "$mountpoint"
mount -t "$type" -o "$options" "$target" "$mountpoint" || fail "cannot mount $target ($type, $options)"
log "mounted $export_name ($type) read-only at $mountpoint from $target"
