# Shared by the tools/host scripts (sourced, not run): logging, argument checks, installing the
# NBD client and mdadm where missing, attaching an export, and md status (which slot a device
# holds, whether write-behind is active). POSIX sh; also runs under busybox sh.

log() { printf '%s\n' "$script_name: $*"; }
fail() { printf '%s\n' "$script_name: error: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || fail "$1 needs a value (see --help)"; }

require_root() {
  [ "$(id -u)" = 0 ] || fail "run as root (it attaches block devices and changes md arrays)"
}

# Install nbd-client and mdadm with the system's package manager when they are missing, and load
# the nbd module (max_part=0: a mirror leg holds no partition table of its own).
ensure_tools() {
  missing=""
  command -v nbd-client >/dev/null 2>&1 || missing="$missing nbd-client"
  command -v mdadm >/dev/null 2>&1 || missing="$missing mdadm"
  if [ -n "$missing" ]; then
    log "installing$missing"
    if command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -y $missing
    else
      fail "install$missing first (no apt-get or dnf here)"
    fi
  fi
  if [ ! -d /sys/module/nbd ]; then
    modprobe nbd max_part=0 || fail "cannot load the nbd kernel module"
  fi
}

# The first /dev/nbdN with no connection (its pid file absent and size 0).
free_nbd_device() {
  for sys in /sys/block/nbd*; do
    [ -e "$sys" ] || continue
    device="/dev/${sys##*/}"
    if [ ! -e "$sys/pid" ] && [ "$(cat "$sys/size")" = 0 ]; then
      printf '%s\n' "$device"
      return 0
    fi
  done
  fail "no free /dev/nbdN (load nbd with a larger nbds_max)"
}

# The first /dev/mdN, from md100 up, that is not in use.
free_md_device() {
  number=100
  while [ -e "/sys/block/md$number/md/array_state" ] && [ "$(cat "/sys/block/md$number/md/array_state")" != clear ]; do
    number=$((number + 1))
  done
  printf '/dev/md%s\n' "$number"
}

nbd_connected() { # $1: /dev/nbdN
  [ -e "/sys/block/${1##*/}/pid" ]
}

# nbd_attach HOST PORT DEVICE EXPORT TIMEOUT_SECONDS CONNECTIONS [-readonly]
nbd_attach() {
  if nbd_connected "$3"; then fail "$3 is already connected (detach it first)"; fi
  set -- "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}"
  extra=""
  [ "$6" -gt 1 ] && extra="-connections $6"
  [ -n "$7" ] && extra="$extra $7"
  log "nbd-client $1 $2 $3 -N $4 -timeout $5 $extra"
  # shellcheck disable=SC2086
  nbd-client "$1" "$2" "$3" -N "$4" -timeout "$5" $extra || fail "nbd-client could not attach $4 from $1:$2"
  size_bytes=$(blockdev --getsize64 "$3")
  log "attached $4 from $1:$2 as $3 ($size_bytes bytes)"
}

nbd_detach() { # $1: /dev/nbdN
  if nbd_connected "$1" || [ "$(cat "/sys/block/${1##*/}/size" 2>/dev/null || echo 0)" != 0 ]; then
    nbd-client -d "$1" >/dev/null 2>&1 || true
    log "disconnected $1"
  fi
}

md_name() { # /dev/md0 or /dev/md/name -> md0
  resolved=$(readlink -f "$1")
  printf '%s\n' "${resolved##*/}"
}

# The state of DEVICE's member in ARRAY (e.g. "in_sync,write_mostly"), empty if not a member.
member_state() { # $1: array, $2: device
  state_file="/sys/block/$(md_name "$1")/md/dev-${2##*/}/state"
  [ -f "$state_file" ] && cat "$state_file" || true
}

member_slot() { # $1: array, $2: device
  slot_file="/sys/block/$(md_name "$1")/md/dev-${2##*/}/slot"
  [ -f "$slot_file" ] && cat "$slot_file" || echo none
}

# The device in ARRAY's lowest active slot: on Linux 6.1 md decides on write-behind by the first
# slot's device alone (a write-mostly leg in a later slot gets no write-behind).
first_slot_device() { # $1: array
  md=$(md_name "$1")
  for link in /sys/block/"$md"/md/rd*; do
    [ -e "$link" ] || continue
    printf '%s %s\n' "${link##*/rd}" "$(readlink "$link")"
  done | sort -n | head -n 1 | sed 's/.*dev-//'
}

wait_for_sync() { # $1: array
  md=$(md_name "$1")
  mdadm --wait "$1" >/dev/null 2>&1 || true
  while [ "$(cat "/sys/block/$md/md/sync_action")" != idle ]; do sleep 1; done
}

# Print the write-behind status of ARRAY: the limit (backlog), the most ever used, the first slot.
report_write_behind() { # $1: array
  md=$(md_name "$1")
  bitmap="/sys/block/$md/md/bitmap"
  backlog=$(cat "$bitmap/backlog" 2>/dev/null || echo 0)
  used=$(cat "$bitmap/max_backlog_used" 2>/dev/null || echo unknown)
  first=$(first_slot_device "$1")
  first_state=$(cat "/sys/block/$md/md/dev-$first/state" 2>/dev/null || echo unknown)
  case "$first_state" in *write_mostly*) first_write_mostly=yes ;; *) first_write_mostly=no ;; esac
  if [ "$backlog" -gt 0 ] && [ "$first_write_mostly" = yes ]; then
    active=yes
  else
    active=no
  fi
  log "write-behind: active=$active backlog=$backlog max_backlog_used=$used first-slot=$first ($first_state)"
  if [ "$backlog" -gt 0 ] && [ "$first_write_mostly" = no ]; then
    log "write-behind is configured but inactive: md on Linux 6.1 uses it only when the first slot ($first) is write-mostly; every host write waits for the appliance"
  fi
}
