#!/bin/sh
# Attach a cdp-nbd volume as a write-mostly leg of an md RAID1 mirror, on the host (as root):
# connects /dev/nbdN to the appliance with the kernel NBD client, then either adds it to an
# existing mirror or creates a new mirror of a local disk plus the leg, with an internal
# write-intent bitmap and write-behind, waits for the initial full sync, and says whether
# write-behind is active. See docs/host-setup.md.
set -eu
script_name=attach-leg
. "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: attach-leg.sh --host HOST --volume NAME (--array /dev/mdN | --create /dev/mdN --local-disk DISK) [options]

Attach the cdp-nbd volume NAME, served at HOST:PORT, as a write-mostly leg of an md RAID1 mirror.

  --host HOST           the appliance's address (as this host reaches it)
  --port PORT           its NBD port (default 10809)
  --volume NAME         the volume (export) to attach
  --array /dev/mdN      add the leg to this running RAID1 (grows it by one device when no slot
                        is free); gives it an internal bitmap if it has none
  --create /dev/mdN     create a new RAID1 of --local-disk plus the leg. The local disk's
  --local-disk DISK     contents are NOT kept: it is a new, empty mirror. The leg is put in the
                        first slot, so that write-behind works on Linux 6.1 (see below)
  --device /dev/nbdN    the NBD device to use (default: the first free one)
  --timeout SECONDS     a request the appliance has not answered by then fails, and md fails
                        the leg instead of stalling the host's writes (default 20)
  --write-behind N      writes the host need not wait for on the leg (default 4096, at most
                        16383); 0 turns write-behind off
  --bitmap-chunk SIZE   write-intent bitmap chunk for a new bitmap, e.g. 64M (default: mdadm's);
                        smaller chunks resync less after the leg was away
  --writemostly-first-slot
                        on an existing mirror whose first slot is a local disk, mark that disk
                        write-mostly too (only when another local disk stays a normal member),
                        so that md on Linux 6.1 uses write-behind
  --connections N       NBD connections (default 1)
  --no-wait             do not wait for the initial sync to finish
  --help                this text

Write-behind: md on Linux 6.1 (Debian 12) only uses write-behind when the device in the first
slot is write-mostly; otherwise it accepts --write-behind and every host write still waits for
the appliance. The script prints "write-behind: active=yes|no backlog=N max_backlog_used=N" from
/sys/block/mdN/md/bitmap/.
USAGE
}

host="" port=10809 volume="" array="" create="" local_disk="" device="" timeout_seconds=20
write_behind=4096 bitmap_chunk="" writemostly_first_slot=no connections=1 wait_for_sync_done=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --host) need_value "$@"; host=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --volume) need_value "$@"; volume=$2; shift 2 ;;
    --array) need_value "$@"; array=$2; shift 2 ;;
    --create) need_value "$@"; create=$2; shift 2 ;;
    --local-disk) need_value "$@"; local_disk=$2; shift 2 ;;
    --device) need_value "$@"; device=$2; shift 2 ;;
    --timeout) need_value "$@"; timeout_seconds=$2; shift 2 ;;
    --write-behind) need_value "$@"; write_behind=$2; shift 2 ;;
    --bitmap-chunk) need_value "$@"; bitmap_chunk=$2; shift 2 ;;
    --writemostly-first-slot) writemostly_first_slot=yes; shift ;;
    --connections) need_value "$@"; connections=$2; shift 2 ;;
    --no-wait) wait_for_sync_done=no; shift ;;
    --help|-h) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$host" ] || fail "--host is required"
[ -n "$volume" ] || fail "--volume is required"
if [ -n "$create" ]; then
  [ -z "$array" ] || fail "give --array or --create, not both"
  [ -n "$local_disk" ] || fail "--create needs --local-disk"
  [ -b "$local_disk" ] || fail "$local_disk is not a block device"
else
  [ -n "$array" ] || fail "give --array /dev/mdN (an existing mirror) or --create /dev/mdN --local-disk DISK"
  [ -b "$array" ] || fail "$array is not a block device"
fi

require_root
ensure_tools
[ -n "$device" ] || device=$(free_nbd_device)
nbd_attach "$host" "$port" "$device" "$volume" "$timeout_seconds" "$connections"

leg_bytes=$(blockdev --getsize64 "$device")
if [ -n "$create" ]; then
  local_bytes=$(blockdev --getsize64 "$local_disk")
  if [ "$leg_bytes" -lt "$local_bytes" ]; then
    nbd_detach "$device"
    fail "volume $volume ($leg_bytes bytes) is smaller than $local_disk ($local_bytes bytes): create it at least as large"
  fi
  # The first slot stays empty ("missing") so that the leg, added next, takes it: md then copies
  # the local disk to the leg (the initial full sync), and write-behind works on Linux 6.1.
  array=$create
  log "creating RAID1 $array from $local_disk (slot 1) and $device (slot 0, write-mostly)"
  set -- --create "$array" --run --level=1 --raid-devices=2 --metadata=1.2 --bitmap=internal
  [ -n "$bitmap_chunk" ] && set -- "$@" "--bitmap-chunk=$bitmap_chunk"
  mdadm "$@" missing "$local_disk" || { nbd_detach "$device"; fail "mdadm could not create $array"; }
else
  md=$(md_name "$array")
  [ "$(cat "/sys/block/$md/md/level")" = raid1 ] || { nbd_detach "$device"; fail "$array is not a RAID1"; }
  if [ "$(cat "/sys/block/$md/md/bitmap/location" 2>/dev/null || echo none)" = none ]; then
    log "adding an internal write-intent bitmap to $array"
    set -- --grow "$array" --bitmap=internal
    [ -n "$bitmap_chunk" ] && set -- "$@" "--bitmap-chunk=$bitmap_chunk"
    mdadm "$@" || { nbd_detach "$device"; fail "cannot add a bitmap to $array"; }
  fi
fi

log "adding $device to $array, write-mostly"
# Not `mdadm --add --write-mostly`: with mdadm 4.2 on Linux 6.1 (Debian 12) that leaves the new
# device faulty at once. Added plain, it is marked write-mostly through sysfs before md writes to it.
mdadm "$array" --add "$device" || { nbd_detach "$device"; fail "mdadm could not add $device to $array"; }
echo writemostly >"/sys/block/$(md_name "$array")/md/dev-${device##*/}/state" || fail "cannot mark $device write-mostly"
# md moves a new spare into a free slot (a degraded mirror has one) from its own thread, a moment
# after the add.
attempt=0
if [ "$(cat "/sys/block/$(md_name "$array")/md/degraded")" -gt 0 ]; then
  while [ "$(member_slot "$array" "$device")" = none ] && [ "$attempt" -lt 10 ]; do sleep 1; attempt=$((attempt + 1)); done
fi
if [ "$(member_slot "$array" "$device")" = none ]; then
  # No free slot: the leg is a spare. Grow the mirror by one device so that it becomes active.
  devices=$(cat "/sys/block/$(md_name "$array")/md/raid_disks")
  log "no free slot in $array: growing it to $((devices + 1)) devices"
  mdadm --grow "$array" --raid-devices=$((devices + 1)) || fail "cannot grow $array"
fi

md=$(md_name "$array")
if [ "$write_behind" -gt 0 ]; then
  echo "$write_behind" >"/sys/block/$md/md/bitmap/backlog" || log "cannot set the write-behind backlog"
fi
first=$(first_slot_device "$array")
if [ "$write_behind" -gt 0 ] && [ "$first" != "${device##*/}" ]; then
  case "$(cat "/sys/block/$md/md/dev-$first/state")" in
    *write_mostly*) ;;
    *)
      if [ "$writemostly_first_slot" = yes ]; then
        others=0
        for state in /sys/block/"$md"/md/dev-*/state; do
          [ "$state" = "/sys/block/$md/md/dev-$first/state" ] && continue
          case "$(cat "$state")" in *write_mostly*|*faulty*) ;; *in_sync*) others=$((others + 1)) ;; esac
        done
        if [ "$others" -gt 0 ]; then
          log "marking $first (first slot) write-mostly, so that md uses write-behind"
          echo writemostly >"/sys/block/$md/md/dev-$first/state"
        else
          log "not marking $first write-mostly: no other local disk would stay a normal member"
        fi
      fi
      ;;
  esac
fi

if [ "$wait_for_sync_done" = yes ]; then
  log "waiting for the initial sync of $device (every block is copied to the appliance)"
  wait_for_sync "$array"
fi
log "$array: $(cat "/sys/block/$md/md/array_state"), degraded=$(cat "/sys/block/$md/md/degraded"), $device slot $(member_slot "$array" "$device") ($(member_state "$array" "$device"))"
report_write_behind "$array"
