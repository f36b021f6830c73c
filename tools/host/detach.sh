#!/bin/sh
# Detach a cdp-nbd device from the host cleanly (as root): unmount it if asked, take a mirror leg
# out of its md array (or stop a read-only array assembled from a point in time), then disconnect
# /dev/nbdN. A leg taken out this way keeps its md superblock, so reattach-leg.sh can put it back
# with only the bitmap-dirty chunks resynced. See docs/host-setup.md.
set -eu
script_name=detach
. "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: detach.sh --device /dev/nbdN [--array /dev/mdN] [--mountpoint DIR] [--stop-array] [--forget]

  --device /dev/nbdN  the NBD device to disconnect
  --array /dev/mdN    the mirror it is a leg of: flush, then fail and remove the leg (the mirror
                      carries on with its local disks; its bitmap records what the leg misses)
  --mountpoint DIR    unmount this first (a point in time mounted by attach-point-in-time.sh;
                      the read-only array or loop device under it is released too)
  --stop-array        stop --array instead (the read-only array attach-point-in-time.sh assembled)
  --forget            also erase the leg's md superblock: attaching it again is a full sync
  --help              this text
USAGE
}

device="" array="" mountpoint="" stop_array=no forget=no
while [ $# -gt 0 ]; do
  case "$1" in
    --device) need_value "$@"; device=$2; shift 2 ;;
    --array) need_value "$@"; array=$2; shift 2 ;;
    --mountpoint) need_value "$@"; mountpoint=$2; shift 2 ;;
    --stop-array) stop_array=yes; shift ;;
    --forget) forget=yes; shift ;;
    --help|-h) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$device" ] || fail "--device is required"
require_root

if [ -n "$mountpoint" ] && grep -q " $mountpoint " /proc/mounts; then
  source_device=$(awk -v mountpoint="$mountpoint" '$2 == mountpoint { print $1 }' /proc/mounts | tail -n 1)
  umount "$mountpoint" || fail "cannot unmount $mountpoint (in use?)"
  log "unmounted $mountpoint"
  # What attach-point-in-time.sh stacked on the device: a read-only array of it, or a loop device.
  case "$source_device" in
    /dev/md*)
      if [ -e "/sys/block/${source_device##*/}/md/dev-${device##*/}" ]; then
        mdadm --stop "$source_device" >/dev/null && log "stopped $source_device"
      fi
      ;;
    /dev/loop*)
      if [ "$(cat "/sys/block/${source_device##*/}/loop/backing_file" 2>/dev/null)" = "$device" ]; then
        losetup -d "$source_device" && log "released $source_device"
      fi
      ;;
  esac
fi
if [ -n "$array" ] && [ -b "$array" ]; then
  if [ "$stop_array" = yes ]; then
    mdadm --stop "$array" >/dev/null || fail "cannot stop $array"
    log "stopped $array"
  elif [ -n "$(member_state "$array" "$device")" ]; then
    sync
    blockdev --flushbufs "$array" 2>/dev/null || true
    mdadm "$array" --fail "$device" >/dev/null 2>&1 || true
    attempt=0
    until mdadm "$array" --remove "$device" >/dev/null 2>&1; do
      attempt=$((attempt + 1))
      [ "$attempt" -lt 30 ] || fail "md will not let go of $device"
      sleep 1
    done
    log "took $device out of $array ($(cat "/sys/block/$(md_name "$array")/md/degraded") device(s) missing now)"
  fi
fi
if [ "$forget" = yes ]; then
  mdadm --zero-superblock "$device" >/dev/null 2>&1 && log "erased the md superblock on $device" || true
fi
nbd_detach "$device"
