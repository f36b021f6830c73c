#!/bin/sh
# Re-attach a cdp-nbd mirror leg after the appliance or the link was down (as root on the host):
# takes the failed leg out of the mirror, reconnects /dev/nbdN, and puts it back with
# `mdadm --re-add`, so md resends only the chunks its write-intent bitmap marked dirty while the
# leg was away. Prints how much was resynced. See docs/host-setup.md.
set -eu
script_name=reattach-leg
. "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: reattach-leg.sh --host HOST --volume NAME --array /dev/mdN --device /dev/nbdN [options]

Put the cdp-nbd leg /dev/nbdN back into the mirror /dev/mdN after the appliance or the network
was away. md resyncs only the bitmap-dirty chunks.

  --host HOST         the appliance's address
  --port PORT         its NBD port (default 10809)
  --volume NAME       the volume (export) the leg is
  --array /dev/mdN    the mirror
  --device /dev/nbdN  the leg's NBD device
  --timeout SECONDS   request timeout, as for attach-leg.sh (default 20)
  --connections N     NBD connections (default 1)
  --full-resync-ok    when md refuses the re-add (no bitmap, or the leg is too far behind),
                      add it back with a full resync instead of failing
  --no-wait           do not wait for the resync
  --help              this text
USAGE
}

host="" port=10809 volume="" array="" device="" timeout_seconds=20 connections=1 full_resync_ok=no wait_for_sync_done=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --host) need_value "$@"; host=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --volume) need_value "$@"; volume=$2; shift 2 ;;
    --array) need_value "$@"; array=$2; shift 2 ;;
    --device) need_value "$@"; device=$2; shift 2 ;;
    --timeout) need_value "$@"; timeout_seconds=$2; shift 2 ;;
    --connections) need_value "$@"; connections=$2; shift 2 ;;
    --full-resync-ok) full_resync_ok=yes; shift ;;
    --no-wait) wait_for_sync_done=no; shift ;;
    --help|-h) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$host" ] && [ -n "$volume" ] && [ -n "$array" ] && [ -n "$device" ] || fail "--host, --volume, --array and --device are required"
[ -b "$array" ] || fail "$array is not a block device"

require_root
ensure_tools
md=$(md_name "$array")

# 1. Out of the mirror: fail it if md has not yet, then remove it (md may hold it briefly while
#    its last requests fail).
state=$(member_state "$array" "$device")
if [ -n "$state" ]; then
  case "$state" in *faulty*) ;; *) log "failing $device in $array"; mdadm "$array" --fail "$device" >/dev/null 2>&1 || true ;; esac
  attempt=0
  while [ -n "$(member_state "$array" "$device")" ]; do
    mdadm "$array" --remove "$device" >/dev/null 2>&1 && break
    attempt=$((attempt + 1))
    [ "$attempt" -lt 30 ] || fail "md will not let go of $device"
    sleep 1
  done
  log "removed $device from $array"
fi

# 2. Reconnect.
nbd_detach "$device"
nbd_attach "$host" "$port" "$device" "$volume" "$timeout_seconds" "$connections"

# 3. Back in, with the bitmap. Bytes written to the leg from here on are the resync.
written_sectors_before=$(awk '{ print $7 }' "/sys/block/${device##*/}/stat")
if mdadm "$array" --re-add "$device"; then
  log "re-added $device to $array: md resyncs only the bitmap-dirty chunks"
elif [ "$full_resync_ok" = yes ]; then
  log "md refused the re-add; adding $device back with a full resync"
  mdadm --zero-superblock "$device" || true
  mdadm "$array" --add "$device" || fail "cannot add $device back to $array"
else
  fail "md refused to re-add $device (no bitmap, or events too far apart); run again with --full-resync-ok for a full resync"
fi
case "$(member_state "$array" "$device")" in
  *write_mostly*) ;;
  *) echo writemostly >"/sys/block/$md/md/dev-${device##*/}/state" ;;
esac

if [ "$wait_for_sync_done" = yes ]; then
  wait_for_sync "$array"
  written_sectors=$(( $(awk '{ print $7 }' "/sys/block/${device##*/}/stat") - written_sectors_before ))
  array_sectors=$(cat "/sys/block/$md/size")
  log "resync done: wrote $((written_sectors * 512)) bytes to the leg, of $((array_sectors * 512)) in the array"
fi
log "$array: $(cat "/sys/block/$md/md/array_state"), degraded=$(cat "/sys/block/$md/md/degraded"), $device slot $(member_slot "$array" "$device") ($(member_state "$array" "$device"))"
report_write_behind "$array"
