#!/bin/sh
# Take a consistent snapshot of a cdp-nbd volume from the host (as root): freeze the file systems
# on it, wait until the mirror leg has no write in flight (write-behind lets the freeze return
# before the appliance has every write), mark the snapshot through the appliance's API, thaw.
# The file systems are thawed whatever happens. See docs/host-setup.md, "Snapshot from the host".
set -eu
script_name=snapshot
. "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: snapshot.sh --api URL --volume NAME --name SNAPSHOT [options]

  --api URL            the appliance's HTTP API, e.g. https://192.0.2.10:8080 (plain http://
                       only on the appliance itself: the token would cross the network readable)
  --volume NAME        the volume
  --name SNAPSHOT      the snapshot's name (a-z, 0-9, ".", "_", "-")
  --note TEXT          a note kept with it
  --token TOKEN        an API token (or --token-file, or the CDP_NBD_TOKEN environment variable);
                       an operator token is enough: cdp-nbd token create NAME --role operator
  --token-file FILE    a file holding the API token (cdp-nbd token create ... --out FILE)
  --ca FILE            the CA certificate the appliance's HTTPS certificate is checked against
                       (or CDP_NBD_CA; cdp-nbd tls generate's ca-cert.pem)
  --freeze DIR         freeze the file system mounted at DIR while the snapshot is taken; may be
                       repeated. The NBD legs under it (directly, or members of its md array)
                       are waited for until idle
  --leg /dev/nbdN      also wait for this NBD device to be idle; may be repeated
  --drain-timeout S    give up waiting for idle legs after S seconds (default 30)
  --help               this text
USAGE
}

api="" volume="" name="" note="" token=${CDP_NBD_TOKEN:-} ca=${CDP_NBD_CA:-} mountpoints="" legs="" drain_timeout_seconds=30
while [ $# -gt 0 ]; do
  case "$1" in
    --api) need_value "$@"; api=${2%/}; shift 2 ;;
    --volume) need_value "$@"; volume=$2; shift 2 ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --note) need_value "$@"; note=$2; shift 2 ;;
    --token) need_value "$@"; token=$2; shift 2 ;;
    --token-file) need_value "$@"; token=$(cat "$2") || fail "cannot read $2"; shift 2 ;;
    --ca) need_value "$@"; ca=$2; shift 2 ;;
    --freeze) need_value "$@"; mountpoints="$mountpoints $2"; shift 2 ;;
    --leg) need_value "$@"; legs="$legs $2"; shift 2 ;;
    --drain-timeout) need_value "$@"; drain_timeout_seconds=$2; shift 2 ;;
    --help|-h) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$api" ] && [ -n "$volume" ] && [ -n "$name" ] || fail "--api, --volume and --name are required"
[ -n "$token" ] || fail "no API token: give --token, --token-file or CDP_NBD_TOKEN"
[ -z "$ca" ] || [ -r "$ca" ] || fail "cannot read the CA certificate $ca"
case "$api" in
  http://127.*|http://localhost*|http://\[::1\]*|https://*) ;;
  *) log "warning: $api is plain HTTP: the API token crosses the network readable (serve the API with --http-tls-cert)" ;;
esac
printf '%s' "$name" | grep -Eq '^[a-z0-9][a-z0-9._-]{0,63}$' || fail "bad snapshot name $name"

# The NBD devices under a mount point: the device itself, or the nbd members of its md array.
legs_of_mountpoint() {
  source_device=$(awk -v mountpoint="$1" '$2 == mountpoint { print $1 }' /proc/mounts | tail -n 1)
  block=$(basename "$(readlink -f "$source_device")")
  case "$block" in
    nbd*) printf '/dev/%s\n' "$block" ;;
    md*) for member in /sys/block/"$block"/md/dev-nbd*; do [ -e "$member" ] && printf '/dev/%s\n' "${member##*/dev-}"; done; return 0 ;;
  esac
}

frozen=""
thaw() {
  for mountpoint in $frozen; do fsfreeze --unfreeze "$mountpoint" && log "thawed $mountpoint"; done
  frozen=""
}
trap thaw EXIT
trap 'thaw; exit 130' INT TERM

for mountpoint in $mountpoints; do
  awk -v mountpoint="$mountpoint" '$2 == mountpoint { found = 1 } END { exit !found }' /proc/mounts || fail "nothing is mounted at $mountpoint"
  legs="$legs $(legs_of_mountpoint "$mountpoint" | tr '\n' ' ')"
done
for mountpoint in $mountpoints; do
  fsfreeze --freeze "$mountpoint" || fail "cannot freeze $mountpoint"
  frozen="$frozen $mountpoint"
  log "froze $mountpoint"
done

# Wait for every leg to have no request in flight (/sys/block/nbdN/inflight: reads, writes).
waited_tenths=0
for leg in $legs; do
  inflight="/sys/block/${leg##*/}/inflight"
  [ -f "$inflight" ] || fail "$leg is not a block device here"
  until awk '{ exit !($1 == 0 && $2 == 0) }' "$inflight"; do
    [ "$waited_tenths" -lt $((drain_timeout_seconds * 10)) ] || fail "$leg still has writes in flight after ${drain_timeout_seconds}s; no snapshot taken"
    sleep 0.1
    waited_tenths=$((waited_tenths + 1))
  done
done
[ -z "$legs" ] || log "legs idle:$legs"

escaped_note=$(printf '%s' "$note" | sed 's/\\/\\\\/g; s/"/\\"/g')
body="{\"name\": \"$name\", \"note\": \"$escaped_note\"}"
url="$api/api/v1/volumes/$volume/snapshots"
if command -v curl >/dev/null 2>&1; then
  set -- ${ca:+--cacert "$ca"}
  response=$(curl -sS --fail-with-body "$@" -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$body" "$url") ||
    fail "the appliance refused the snapshot: $response"
else
  # GNU wget checks the certificate against --ca-certificate; busybox wget cannot check it at all.
  set -- ${ca:+--ca-certificate="$ca"}
  response=$(wget -q -O - "$@" --header "Authorization: Bearer $token" --header 'Content-Type: application/json' --post-data "$body" "$url") ||
    fail "the appliance refused the snapshot (wget has no details; curl shows the error)"
fi
thaw
log "snapshot $name of $volume: $response"
