#!/bin/sh
# Build the tiny test VM of the kernel-client tests (test/vm/), from Debian packages only: the
# Debian 12 cloud kernel with its nbd, md-mod, raid1 and loop modules, and an initramfs holding
# busybox-static, nbd-client, mdadm, e2fsprogs and the shared libraries they need. Its /init loads
# the modules, brings up eth0 as 10.0.2.15/24 with no default route (so the host, 10.0.2.2 under
# qemu user networking, is all it can reach), runs /test/run.sh (appended by the test as a second
# cpio archive), prints "@@ exit CODE" and powers off.
#
# The result is cached under CACHE/KEY/{vmlinuz,initramfs.cpio}, KEY a hash of the package
# versions and of this script; the folder is printed on stdout. Only `apt-get download` and
# `dpkg-deb -x` touch packages: nothing is installed on this machine.
#
# Usage: tools/vm/build-test-vm.sh [CACHE]   (default: .cache/vm at the repository root;
#        the environment variable CDP_NBD_VM_CACHE also sets it)
set -eu

repository_root=$(cd "$(dirname "$0")/../.." && pwd)
cache_root=${1:-${CDP_NBD_VM_CACHE:-$repository_root/.cache/vm}}
script_path="$repository_root/tools/vm/build-test-vm.sh"

log() { printf '%s\n' "build-test-vm: $*" >&2; }
fail() { log "$*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio sha256sum ldd flock; do
  command -v "$tool" >/dev/null 2>&1 || fail "needs $tool (Debian: apt-get install cpio dpkg apt)"
done

# The kernel image package the cloud metapackage points at (linux-image-6.1.0-N-cloud-amd64).
kernel_package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
[ -n "$kernel_package" ] || fail "no linux-image-cloud-amd64 in the apt lists (run apt-get update)"
user_packages="busybox-static nbd-client mdadm e2fsprogs"

candidate() { apt-cache policy "$1" | sed -n 's/^ *Candidate: //p'; }
versions=""
for package in $kernel_package $user_packages; do
  version=$(candidate "$package")
  [ -n "$version" ] && [ "$version" != "(none)" ] || fail "package $package has no candidate version (run apt-get update)"
  versions="$versions $package=$version"
done
key=$(printf '%s\n' "$versions" | cat - "$script_path" | sha256sum | cut -c1-16)
target="$cache_root/$key"
if [ -f "$target/initramfs.cpio" ] && [ -f "$target/vmlinuz" ]; then
  printf '%s\n' "$target"
  exit 0
fi

# One build at a time (test files run in parallel): wait for another's, then use its result.
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$target/initramfs.cpio" ] && [ -f "$target/vmlinuz" ]; then
  printf '%s\n' "$target"
  exit 0
fi
log "building $target from$versions"
work=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/extract" "$work/root"

# 1. Download and unpack the packages (no install, no scripts run), with the libraries they
#    depend on (the lib* packages among their dependencies, and theirs).
library_packages=""
pending_packages=$user_packages
while [ -n "$pending_packages" ]; do
  next_packages=""
  for package in $pending_packages; do
    for dependency in $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "$package" |
      sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \(lib[^ <>]*\)$/\2/p'); do
      case " $library_packages " in *" $dependency "*) ;; *) library_packages="$library_packages $dependency"; next_packages="$next_packages $dependency" ;; esac
    done
  done
  pending_packages=$next_packages
done
(cd "$work/debs" && apt-get download -q $versions $library_packages) >"$work/download.log" 2>&1 ||
  { cat "$work/download.log" >&2; fail "apt-get download failed"; }
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/extract"; done
extract="$work/extract"

kernel_version=$(ls "$extract/lib/modules" | head -n 1)
[ -n "$kernel_version" ] || fail "no modules in $kernel_package"
cp "$extract/boot/vmlinuz-$kernel_version" "$work/vmlinuz"
module_root="$extract/lib/modules/$kernel_version"

# 2. The modules, with what they depend on (the "depends=" of each module's .modinfo; the
#    package has no modules.dep, depmod makes it on install), in load order. A module built
#    into this kernel has no file and needs no loading.
root="$work/root"
mkdir -p "$root/lib/modules/$kernel_version" "$root/etc"
wanted_modules="virtio_pci virtio_blk virtio_net nbd md-mod raid1 loop ext4 crc32c_generic"
load_order="$work/load-order"
: >"$load_order"
module_path() { # a module name (- and _ alike) -> its path relative to module_root, or nothing
  local pattern
  pattern=$(printf '%s' "$1" | sed 's/[-_]/[-_]/g')
  grep -E "(^|/)$pattern\.ko$" "$module_root/modules.order" | head -n 1
}
add_module() { # $1: a module name (recursive: dash's `local` keeps each call's variables)
  local relative pattern dependencies dependency
  relative=$(module_path "$1")
  if [ -z "$relative" ]; then
    pattern=$(printf '%s' "$1" | sed 's/[-_]/[-_]/g')
    grep -qE "(^|/)$pattern\.ko$" "$module_root/modules.builtin" || fail "module $1 is neither built in nor a module of $kernel_version"
    return 0
  fi
  grep -qxF "$relative" "$load_order" && return 0
  dependencies=$(tr '\0' '\n' <"$module_root/$relative" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' ')
  for dependency in $dependencies; do add_module "$dependency"; done
  grep -qxF "$relative" "$load_order" || printf '%s\n' "$relative" >>"$load_order"
}
for module in $wanted_modules; do add_module "$module"; done
: >"$root/etc/modules-load-order"
while read -r relative; do
  name=$(basename "$relative")
  cp "$module_root/$relative" "$root/lib/modules/$kernel_version/$name"
  printf '%s\n' "/lib/modules/$kernel_version/$name" >>"$root/etc/modules-load-order"
done <"$load_order"

# 3. The programs, and their shared libraries as ldd resolves them (this machine is Debian 12 too;
#    libraries of the downloaded packages take precedence).
mkdir -p "$root/bin" "$root/sbin" "$root/lib64" "$root/lib/x86_64-linux-gnu" "$root/etc/mdadm" \
  "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/tmp" "$root/mnt" "$root/var/run" "$root/test"
cp "$extract/bin/busybox" "$root/bin/busybox"
programs="nbd-client mdadm mke2fs debugfs e2fsck tune2fs dumpe2fs"
for program in $programs; do
  found=""
  for directory in sbin usr/sbin bin usr/bin; do
    if [ -f "$extract/$directory/$program" ]; then found="$extract/$directory/$program"; break; fi
  done
  [ -n "$found" ] || fail "no $program in the packages"
  cp "$found" "$root/sbin/$program"
done
for link in mkfs.ext4 mkfs.ext2 mkfs.ext3; do ln -s mke2fs "$root/sbin/$link"; done
for link in fsck.ext4 fsck.ext2; do ln -s e2fsck "$root/sbin/$link"; done
[ -f "$extract/etc/mke2fs.conf" ] && cp "$extract/etc/mke2fs.conf" "$root/etc/mke2fs.conf"
library_path="$extract/lib/x86_64-linux-gnu:$extract/usr/lib/x86_64-linux-gnu"
for program in $programs; do
  LD_LIBRARY_PATH="$library_path" ldd "$root/sbin/$program" | awk '/=>/ { print $1, $3 } /^\t\/lib64/ { print "loader", $1 }'
done | sort -u >"$work/libraries"
while read -r soname path; do
  [ "$path" != "not" ] || fail "$soname is needed but neither in the packages nor on this machine"
  if [ "$soname" = loader ]; then
    cp -L "$path" "$root/lib64/"
  elif [ ! -e "$root/lib/x86_64-linux-gnu/$soname" ]; then
    cp -L "$path" "$root/lib/x86_64-linux-gnu/$soname"
  fi
done <"$work/libraries"
printf 'DEVICE partitions\n' >"$root/etc/mdadm/mdadm.conf"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# 4. /init.
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# Test VM init: modules, devices, network (10.0.2.15/24, no default route), then /test/run.sh.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r module; do insmod "$module" || echo "@@ insmod-failed $module"; done </etc/modules-load-order
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
stty -echo </dev/ttyS0 2>/dev/null
echo "@@ booted $(cut -d' ' -f1 /proc/uptime)"
status=1
if [ -f /test/run.sh ]; then
  sh -eu /test/run.sh && status=0 || status=$?
else
  echo "@@ no /test/run.sh"
fi
sync
echo "@@ exit $status"
poweroff -f
INIT
chmod 755 "$root/init"

# 5. Pack (uncompressed: the kernel under TCG unpacks it faster than it would inflate it).
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$work/initramfs.cpio"
printf '%s\n' "$versions" >"$work/versions"
mkdir -p "$work/result"
mv "$work/vmlinuz" "$work/initramfs.cpio" "$work/versions" "$work/result/"
# Another build may have finished first: keep whichever landed.
mv -T "$work/result" "$target" 2>/dev/null || [ -f "$target/initramfs.cpio" ] || fail "cannot move the result to $target"
log "built $target ($(du -sh "$target" | cut -f1))"
printf '%s\n' "$target"
