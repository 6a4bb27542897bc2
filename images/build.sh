#!/usr/bin/env bash
# Build Wrenn's guest kernel and root images from Debian packages. Run as root.
#
#   images/build.sh NAME ROOT [--envd PATH] [--check]
#
#   --check  build nothing: exit 0 if NAME can be built here, else print why and exit 3 (for base:
#            debootstrap installed, and a cached tree or an apt mirror for the suite that answers).
#
#   kernel   ROOT/kernels/<kver>/{vmlinux,initramfs.cpio,image.json}, ROOT/kernels/current -> <kver>
#            Debian's pinned cloud kernel (apt-get download + dpkg -x, never installed on the
#            host), its bzImage unpacked to the PVH-bootable vmlinux, and an uncompressed newc
#            initramfs: busybox-static, the virtio modules, and an /init that loads them,
#            configures the guest network and switches to /dev/vda with wrenn-envd as PID 1.
#   minimal  ROOT/images/minimal/{rootfs.ext4,image.json}: busybox, wrenn-envd and the shared
#            libraries it needs (its ldd closure and the loader). Builds in seconds.
#   base     ROOT/images/base/{rootfs.ext4,image.json}: Debian bookworm (debootstrap minbase
#            from the mirror the host's apt uses) with bash, python3, curl, sudo, ..., a `user`
#            account (uid 1000, sudo without password) and wrenn-envd.
#   minimal and base build the kernel first.
#
# The envd binary is --envd PATH, else $WRENN_ENVD_BIN, else build/src/envd/wrenn-envd.
# Images are made with `mkfs.ext4 -d` (nothing is mounted, no loop devices).
#
# Caching: every output is keyed by the sha256 of its inputs (the recipe's text, the pinned
# versions, the envd binary and the files copied in, the package list), recorded as input_hash
# in its image.json; an output whose image.json matches is reused without work. The slow parts
# are also cached machine-wide under $WRENN_IMAGE_CACHE (default /var/cache/wrenn/images) so
# that every ROOT and every CI run shares them: the kernel and initramfs (kernel-<hash>/) and the
# customised debootstrap tree (debootstrap-<hash>/tree); a base build then only adds envd.
# Builds happen in ROOT/.tmp-<name>-<pid> (or the cache's .tmp-*) and are renamed into place at
# the end; a failed or interrupted build removes its temp dir, and one killed outright is swept
# by the next build of the same name. Concurrent builds of one name wait for each other (flock).
set -euo pipefail
# Images and kernels are read by each VM's unprivileged QEMU user: world-readable, never writable.
umask 022

# ---- Pins and recipe constants (all part of the input hashes) ---------------------------------
# The one kernel pin: Debian's cloud kernel package, exactly as `apt-get download` takes it.
# (`apt-cache policy linux-image-cloud-amd64` lists what the configured mirrors offer; Debian drops
# old kernels from its mirrors at point releases, so this needs a bump now and then.
# WRENN_KERNEL_PACKAGE overrides it without an edit.)
KERNEL_PACKAGE=${WRENN_KERNEL_PACKAGE:-"linux-image-6.1.0-50-cloud-amd64=6.1.176-1"}
DEBIAN_SUITE=bookworm
BASE_PACKAGES="bash,coreutils,python3,curl,ca-certificates,sudo,procps,iproute2"
# Loaded in this order by insmod: the package ships no modules.dep.
MODULES=(virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio_console)
GUEST_CIDR=169.254.0.21/30
GATEWAY_IP=169.254.0.22
GATEWAY_MAC=02:fc:00:00:00:02
ENVD_PATH=/usr/local/bin/wrenn-envd
MINIMAL_SIZE_MIB=128
BASE_HEADROOM_MIB=256
USER_NAME=user
USER_ID=1000

CACHE=${WRENN_IMAGE_CACHE:-/var/cache/wrenn/images}
CACHE_KEEP=2 # entries of each kind kept in the cache
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"

# ---- Small helpers -----------------------------------------------------------------------------
T0=$EPOCHREALTIME
NAME='?'
say() { printf 'images %s [%6ss] %s\n' "$NAME" "$(elapsed)" "$*"; }
elapsed() { since "$T0"; }
since() { # since EPOCHREALTIME-VALUE: seconds elapsed, one decimal, without forking
  local now=${EPOCHREALTIME//[.,]/} from=${1//[.,]/}
  local us=$((10#$now - 10#$from))
  printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10))
}
die() {
  printf 'images %s: error: %s\n' "$NAME" "$*" >&2
  exit 1
}
sha_file() { sha256sum "$1" | cut -d' ' -f1; }
sha_text() { sha256sum | cut -d' ' -f1; }
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Temp dirs this run made; removed (after unmounting anything below them) on every exit.
TMPS=()
CHILD=
LOCKFDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$CHILD" ]; then
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  local d
  for d in "${TMPS[@]}"; do remove_tree "$d"; done
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then printf 'images %s: failed, nothing was installed\n' "$NAME" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
set -E
trap 'printf "images %s: line %s: \"%s\" failed\n" "$NAME" "$LINENO" "$BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Unmount whatever is mounted below $1 (debootstrap mounts /proc and /sys in its target), then
# delete $1 without crossing into another file system.
remove_tree() {
  local dir=$1 mp
  [ -e "$dir" ] || return 0
  dir=$(realpath -m "$dir")
  while read -r mp; do
    umount -l "$mp" 2>/dev/null || true
  done < <(awk -v d="$dir/" '{ gsub(/\\040/, " ", $5); if (index($5 "/", d) == 1) print $5 }' \
    /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system "$dir"
}

new_tmp() { # new_tmp PARENT LABEL VAR: make PARENT/.tmp-LABEL-<pid>, removed on exit; VAR := it
  local d="$1/.tmp-$2-$$"
  TMPS+=("$d") # before it exists: a signal may be handled right after mkdir returns
  remove_tree "$d"
  mkdir -p "$d"
  printf -v "$3" '%s' "$d"
}

# Sweep temp dirs left by builds that were killed outright. Called with the name's lock held,
# so no live build of that name owns them.
sweep_stale() { # sweep_stale PARENT LABEL
  local d
  for d in "$1"/.tmp-"$2"-*; do
    [ -e "$d" ] || continue
    [ "${d##*-}" = "$$" ] && continue
    say "removing leftover $d"
    remove_tree "$d"
  done
}

lock() { # lock FILE: wait for an exclusive lock on FILE; the fd stays open until unlock_all
  local fd
  mkdir -p "$(dirname "$1")"
  exec {fd}>"$1"
  if ! flock -n "$fd"; then
    say "waiting for $1 (another build holds it)"
    flock "$fd"
  fi
  LOCKFDS+=("$fd")
}
unlock_all() {
  local fd
  for fd in "${LOCKFDS[@]}"; do exec {fd}>&-; done
  LOCKFDS=()
}

# Run a long command in its own session (so an interrupted build can stop it and everything it
# started), without our lock fds, and wait for it.
run() {
  (
    for fd in "${LOCKFDS[@]}"; do exec {fd}>&-; done
    exec setsid "$@"
  ) &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}

# Keep the newest $CACHE_KEEP entries of one kind (kernel-*, debootstrap-*); the kind's lock is held.
prune_cache() {
  local kind=$1 keep=$CACHE_KEEP d
  while read -r d; do
    if ((keep > 0)); then
      keep=$((keep - 1))
      continue
    fi
    say "pruning old cache entry $d"
    remove_tree "$d"
  done < <(find "$CACHE" -mindepth 1 -maxdepth 1 -type d -name "$kind-*" -printf '%T@ %p\n' |
    sort -rn | cut -d' ' -f2-)
}

# hardlink FROM TO: share a read-only artifact, or copy it across file systems.
hardlink() { ln -f "$1" "$2" 2>/dev/null || cp --reflink=auto --sparse=always "$1" "$2"; }

# image_json FILE key=value... (values given as JSON already)
image_json() {
  local file=$1 first=1 kv
  shift
  {
    printf '{\n'
    for kv in "$@"; do
      ((first)) || printf ',\n'
      first=0
      printf '  "%s": %s' "${kv%%=*}" "${kv#*=}"
    done
    printf '\n}\n'
  } >"$file"
}
json_get() { # json_get FILE KEY: a string or number value from one of our image.json files
  [ -f "$1" ] || return 0
  sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$1" | sed -n 1p
}

# ---- The kernel --------------------------------------------------------------------------------
kernel_version() {
  local p=${KERNEL_PACKAGE%%=*}
  printf '%s\n' "${p#linux-image-}"
}

# Unpack the PVH-bootable ELF from a bzImage. The setup header gives the payload's place exactly
# (setup_sects at 0x1f1, payload_offset/payload_length at 0x248); Debian's payload is legacy LZ4
# followed by the 4-byte uncompressed size that the kernel build appends.
extract_vmlinux() { # extract_vmlinux BZIMAGE OUT
  local bz=$1 out=$2 sects off len start magic
  sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
  ((sects == 0)) && sects=4
  read -r off len < <(od -An -tu4 -j $((0x248)) -N8 "$bz")
  start=$(((sects + 1) * 512 + off))
  magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' \n')
  [ "$magic" = 02214c18 ] || die "bzImage payload is not legacy LZ4 (magic $magic)"
  dd if="$bz" iflag=skip_bytes,count_bytes skip="$start" count=$((len - 4)) bs=1M status=none |
    lz4 -dcq >"$out" ||
    die "lz4 could not unpack the kernel payload"
  [ "$(od -An -tx1 -N4 "$out" | tr -d ' \n')" = 7f454c46 ] || die "unpacked kernel is not ELF"
  # XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point QEMU's microvm boots through.
  if command -v readelf >/dev/null; then
    [[ "$(readelf -n "$out")" == *"Unknown note type: (0x00000012)"* ]] ||
      die "vmlinux has no PVH entry note (CONFIG_PVH)"
  fi
}

# The initramfs /init (busybox sh). Placeholders @...@ are filled from the constants above.
initramfs_init() {
  cat <<'EOF'
#!/bin/sh
# Wrenn initramfs: load the virtio drivers, configure the guest network, mount the root disk and
# hand over to wrenn-envd as PID 1. Kernel arguments: root= (default /dev/vda), rootfstype=
# (default ext4), init= (default @ENVD_PATH@).
export PATH=/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev

fail() {
  echo "wrenn-initramfs: $*; powering off"
  sync
  poweroff -f
  exit 1
}

root=/dev/vda fstype=ext4 init=@ENVD_PATH@
for arg in $(cat /proc/cmdline); do
  case "$arg" in
  root=*) root=${arg#root=} ;;
  rootfstype=*) fstype=${arg#rootfstype=} ;;
  init=*) init=${arg#init=} ;;
  esac
done

for m in @MODULES@; do
  insmod /lib/modules/$m.ko || fail "insmod $m failed"
done

i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ $i -le 1000 ] || fail "$root did not appear"
  usleep 5000
done
mkdir -p /newroot
mount -t "$fstype" -o rw "$root" /newroot || fail "cannot mount $root ($fstype)"

# The guest network: the same address in every sandbox, a static neighbour for the gateway so
# no ARP round trip is needed (busybox `ip neigh` cannot add entries; `arp -s` makes a permanent
# one). A VM without a network device still boots.
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 40 ]; do
  i=$((i + 1))
  usleep 5000
done
if [ -e /sys/class/net/eth0 ]; then
  ip addr add @GUEST_CIDR@ dev eth0 &&
    ip link set eth0 up &&
    ip route add default via @GATEWAY_IP@ dev eth0 &&
    arp -i eth0 -s @GATEWAY_IP@ @GATEWAY_MAC@ ||
    echo "wrenn-initramfs: network setup failed"
else
  echo "wrenn-initramfs: no eth0, booting without network"
fi

[ -x "/newroot$init" ] || fail "$init is missing on $root"
for d in dev proc sys; do
  mkdir -p /newroot/$d 2>/dev/null
  mount --move /$d /newroot/$d || umount -l /$d
done
exec switch_root /newroot "$init"
EOF
}

# build_kernel_into DIR: download, unpack, vmlinux + initramfs.cpio into DIR/out.
build_kernel_into() {
  local t=$1 kver deb bz m ko
  kver=$(kernel_version)
  mkdir -p "$t/dl" "$t/pkg" "$t/initrd" "$t/out"
  say "downloading $KERNEL_PACKAGE"
  if ! (cd "$t/dl" && apt-get download -q -o APT::Sandbox::User=root "$KERNEL_PACKAGE" >/dev/null); then
    say "download failed; refreshing apt's package lists and retrying"
    apt-get update -qq || true
    (cd "$t/dl" && apt-get download -q -o APT::Sandbox::User=root "$KERNEL_PACKAGE" >/dev/null) ||
      die "cannot download $KERNEL_PACKAGE; the mirrors offer: $(apt-cache policy linux-image-cloud-amd64 | tr -s ' \n' ' '); update KERNEL_PACKAGE in $SCRIPT"
  fi
  deb=$(find "$t/dl" -name '*.deb' -print -quit)
  [ -n "$deb" ] || die "apt-get download produced no .deb"
  say "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$t/pkg"
  bz="$t/pkg/boot/vmlinuz-$kver"
  [ -f "$bz" ] || die "no boot/vmlinuz-$kver in the package"

  say "extracting the PVH vmlinux"
  extract_vmlinux "$bz" "$t/out/vmlinux"

  say "building initramfs (busybox + ${#MODULES[@]} modules)"
  local r="$t/initrd"
  mkdir -p "$r/bin" "$r/lib/modules" "$r/dev" "$r/proc" "$r/sys" "$r/newroot"
  cp "$BUSYBOX" "$r/bin/busybox"
  for m in sh mount umount mkdir cat echo insmod ip arp usleep sleep switch_root poweroff sync; do
    ln -s busybox "$r/bin/$m"
  done
  for m in "${MODULES[@]}"; do
    ko=$(find "$t/pkg/lib/modules/$kver" -name "$m.ko" -print -quit)
    [ -n "$ko" ] || die "module $m.ko is not in the package"
    cp "$ko" "$r/lib/modules/$m.ko"
  done
  initramfs_init | sed -e "s|@ENVD_PATH@|$ENVD_PATH|g" -e "s|@MODULES@|${MODULES[*]}|g" \
    -e "s|@GUEST_CIDR@|$GUEST_CIDR|g" -e "s|@GATEWAY_IP@|$GATEWAY_IP|g" \
    -e "s|@GATEWAY_MAC@|$GATEWAY_MAC|g" >"$r/init"
  chmod 0755 "$r/init"
  mknod -m 0600 "$r/dev/console" c 5 1
  find "$r" -exec touch -h -d @0 {} +
  (cd "$r" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) >"$t/out/initramfs.cpio"
  chmod 0444 "$t/out/vmlinux" "$t/out/initramfs.cpio"
}

kernel_hash() {
  {
    printf 'kernel %s\nmodules %s\nbusybox %s\nnet %s %s %s\nenvd-path %s\n' "$KERNEL_PACKAGE" \
      "${MODULES[*]}" "$(sha_file "$BUSYBOX")" "$GUEST_CIDR" "$GATEWAY_IP" "$GATEWAY_MAC" "$ENVD_PATH"
    declare -f build_kernel_into extract_vmlinux initramfs_init
  } | sha_text
}

# Make sure ROOT/kernels/<kver> holds the current kernel; sets KVER.
do_kernel() {
  local saved=$NAME hash kver dest c t
  NAME=kernel
  hash=$(kernel_hash)
  kver=$(kernel_version)
  KVER=$kver
  dest="$ROOT/kernels/$kver"
  lock "$ROOT/.lock-kernel"
  sweep_stale "$ROOT" kernel
  if [ "$(json_get "$dest/image.json" input_hash)" = "$hash" ] &&
    [ -f "$dest/vmlinux" ] && [ -f "$dest/initramfs.cpio" ]; then
    say "up to date ($kver, input ${hash:0:12})"
  else
    c="$CACHE/kernel-$hash"
    lock "$CACHE/.lock-kernel"
    sweep_stale "$CACHE" kernel
    if [ -f "$c/image.json" ]; then
      say "reusing cached $c"
      touch "$c"
    else
      local t0=$EPOCHREALTIME
      new_tmp "$CACHE" kernel t
      build_kernel_into "$t"
      image_json "$t/out/image.json" "name=$(json_str kernel)" "input_hash=$(json_str "$hash")" \
        "kernel_version=$(json_str "$kver")" "kernel_package=$(json_str "$KERNEL_PACKAGE")" \
        "modules=$(json_str "${MODULES[*]}")" \
        "vmlinux_bytes=$(stat -c %s "$t/out/vmlinux")" \
        "initramfs_bytes=$(stat -c %s "$t/out/initramfs.cpio")" \
        "build_seconds=$(since "$t0")" \
        "built_at=$(json_str "$(now_utc)")"
      mv -T "$t/out" "$c"
      prune_cache kernel
    fi
    new_tmp "$ROOT" kernel t
    mkdir -p "$t/$kver" "$ROOT/kernels"
    hardlink "$c/vmlinux" "$t/$kver/vmlinux"
    hardlink "$c/initramfs.cpio" "$t/$kver/initramfs.cpio"
    cp "$c/image.json" "$t/$kver/image.json"
    [ -e "$dest" ] && mv -T "$dest" "$t/old"
    mv -T "$t/$kver" "$dest"
    say "installed $dest"
  fi
  ln -sfn "$kver" "$ROOT/kernels/.current.tmp"
  mv -T "$ROOT/kernels/.current.tmp" "$ROOT/kernels/current"
  unlock_all
  NAME=$saved
}

# ---- Root file systems -------------------------------------------------------------------------
# The envd binary's shared libraries: the resolved paths of its ldd closure, loader included
# (nothing for a static binary).
envd_closure() {
  local out
  out=$(LC_ALL=C ldd "$ENVD_BIN" 2>&1) || {
    [[ "$out" == *"not a dynamic executable"* ]] && return 0
    die "ldd $ENVD_BIN failed: $out"
  }
  if grep -q 'not found' <<<"$out"; then die "$ENVD_BIN has unresolved libraries: $out"; fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# Install wrenn-envd and its libraries into the tree $1. keep=1 leaves a library that the tree
# already has (a Debian tree's own glibc) alone.
add_envd() { # add_envd TREE KEEP
  local tree=$1 keep=$2 lib libs=()
  mkdir -p "$tree$(dirname "$ENVD_PATH")"
  rm -f "$tree$ENVD_PATH"
  cp "$ENVD_BIN" "$tree$ENVD_PATH"
  chmod 0755 "$tree$ENVD_PATH"
  for lib in "${CLOSURE[@]}"; do
    if ((keep)) && { [ -e "$tree$lib" ] || [ -L "$tree$lib" ]; }; then continue; fi
    libs+=("$lib")
  done
  # Same paths inside; --parents follows the tree's merged-/usr symlinks (lib -> usr/lib).
  if ((${#libs[@]})); then cp -L --parents "${libs[@]}" "$tree/"; fi
  # The loader's cache, as a Debian system has it (ldconfig -r works on the tree, writes a new
  # file and renames it, so a hard-linked stage never changes the cached tree).
  [ -e "$tree/etc/ld.so.conf" ] || printf 'include /etc/ld.so.conf.d/*.conf\n/usr/local/lib\n/usr/lib/x86_64-linux-gnu\n' >"$tree/etc/ld.so.conf"
  ldconfig -X -r "$tree"
  # An init for kernels booted without our initramfs.
  [ -e "$tree/usr/sbin/init" ] || [ -L "$tree/usr/sbin/init" ] || ln -s "$ENVD_PATH" "$tree/usr/sbin/init"
}

write_etc_common() { # hostname, hosts, resolv.conf
  local tree=$1
  printf 'sandbox\n' >"$tree/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$tree/etc/hosts"
  rm -f "$tree/etc/resolv.conf"
  printf 'nameserver 8.8.8.8\nnameserver 8.8.4.4\n' >"$tree/etc/resolv.conf"
}

# mkfs_image TREE OUT HEADROOM_MIB [FIXED_MIB]: an ext4 image of TREE, sized to its contents plus
# headroom (or a fixed size), made with mkfs.ext4 -d. Sets CONTENT_BYTES. Inode tables and the
# journal are zeroed here, once (in a sparse file that costs nothing): with lazy init every guest
# booted from the image would run ext4lazyinit to zero them and write megabytes of zeroes into its
# own copy-on-write overlay.
mkfs_image() {
  local tree=$1 out=$2 headroom=$3 fixed=${4:-} files mib
  CONTENT_BYTES=$(du -s -B1 "$tree" | cut -f1)
  files=$(find "$tree" -xdev | wc -l)
  if [ -n "$fixed" ]; then
    mib=$fixed
  else
    mib=$(((CONTENT_BYTES + files * 256 + 1048575) / 1048576 + headroom))
  fi
  say "mkfs.ext4 -d: $((CONTENT_BYTES / 1048576)) MiB in $files files -> ${mib} MiB image"
  truncate -s "${mib}M" "$out"
  run mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -L "wrenn-$NAME" -m 0 -N $((files + 8192 + headroom * 64)) \
    -E lazy_itable_init=0,lazy_journal_init=0,nodiscard -d "$tree" "$out" ||
    die "mkfs.ext4 failed (contents $((CONTENT_BYTES / 1048576)) MiB, image $mib MiB)"
}

# Install DIR/{rootfs.ext4,image.json} as ROOT/images/NAME: the old image.json goes first, so an
# interruption between the renames leaves an image that no longer matches and is rebuilt.
install_image() { # install_image DIR
  local dir=$1 dest="$ROOT/images/$NAME"
  mkdir -p "$dest"
  rm -f "$dest/image.json"
  mv -f "$dir/rootfs.ext4" "$dest/rootfs.ext4"
  mv -f "$dir/image.json" "$dest/image.json"
  say "installed $dest/rootfs.ext4 ($(($(stat -c %s "$dest/rootfs.ext4") / 1048576)) MiB)"
}

image_current() { # image_current HASH: ROOT/images/NAME is complete and built from HASH
  local dest="$ROOT/images/$NAME"
  [ "$(json_get "$dest/image.json" input_hash)" = "$1" ] && [ -f "$dest/rootfs.ext4" ] &&
    [ "$(json_get "$dest/image.json" rootfs_bytes)" = "$(stat -c %s "$dest/rootfs.ext4")" ]
}

# Hash of what goes into a rootfs besides the recipe: envd and every file copied from the host.
payload_hash() {
  {
    printf 'envd at %s\n' "$ENVD_PATH"
    sha256sum "$ENVD_BIN" "${CLOSURE[@]}" | sed "s| $ENVD_BIN\$| wrenn-envd|"
  } | sha_text
}

finish_image() { # finish_image DIR HASH T0 extra-json...
  local dir=$1 hash=$2 t0=$3
  shift 3
  image_json "$dir/image.json" "name=$(json_str "$NAME")" "input_hash=$(json_str "$hash")" \
    "kernel_version=$(json_str "$KVER")" "kernel_package=$(json_str "$KERNEL_PACKAGE")" \
    "envd_sha256=$(json_str "$(sha_file "$ENVD_BIN")")" \
    "rootfs_bytes=$(stat -c %s "$dir/rootfs.ext4")" \
    "rootfs_allocated_bytes=$(($(stat -c %b "$dir/rootfs.ext4") * $(stat -c %B "$dir/rootfs.ext4")))" \
    "contents_bytes=$CONTENT_BYTES" "$@" \
    "build_seconds=$(since "$t0")" \
    "built_at=$(json_str "$(now_utc)")"
}

do_minimal() {
  local hash t s t0=$EPOCHREALTIME
  hash=$({
    printf 'minimal size=%s busybox=%s payload=%s\n' "$MINIMAL_SIZE_MIB" "$(sha_file "$BUSYBOX")" "$(payload_hash)"
    cat "$SCRIPT"
  } | sha_text)
  lock "$ROOT/.lock-minimal"
  sweep_stale "$ROOT" minimal
  if image_current "$hash"; then
    say "up to date (input ${hash:0:12})"
    return 0
  fi
  new_tmp "$ROOT" minimal t
  s="$t/tree"
  say "staging busybox, wrenn-envd and ${#CLOSURE[@]} libraries"
  mkdir -p "$s/usr/bin" "$s/usr/sbin" "$s/usr/lib" "$s/usr/lib64" "$s/usr/local/bin"
  ln -s usr/bin "$s/bin"
  ln -s usr/sbin "$s/sbin"
  ln -s usr/lib "$s/lib"
  ln -s usr/lib64 "$s/lib64"
  mkdir -p "$s"/{dev,proc,sys,run,tmp,root,etc,mnt,var/tmp,var/log,home/$USER_NAME}
  chmod 1777 "$s/tmp" "$s/var/tmp"
  chmod 0700 "$s/root"
  chown "$USER_ID:$USER_ID" "$s/home/$USER_NAME"
  add_envd "$s" 0
  cp "$BUSYBOX" "$s/usr/bin/busybox"
  # The applets as symlinks at their usual paths, made by busybox itself in one process (it is
  # static, so it runs chrooted in the stage; it leaves existing names such as sbin/init alone).
  chroot "$s" /usr/bin/busybox --install -s
  rm -f "$s/linuxrc"
  # E2B's SDK runs commands as `/bin/bash -l -c ...`: let busybox's ash answer for bash.
  printf '#!/bin/sh\n# minimal image: busybox ash stands in for bash\nexec /bin/ash "$@"\n' >"$s/usr/bin/bash"
  chmod 0755 "$s/usr/bin/bash"
  cat >"$s/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
$USER_NAME:x:$USER_ID:$USER_ID::/home/$USER_NAME:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  cat >"$s/etc/group" <<EOF
root:x:0:
tty:x:5:
$USER_NAME:x:$USER_ID:
nogroup:x:65534:
EOF
  printf '/bin/sh\n/bin/ash\n/bin/bash\n' >"$s/etc/shells"
  write_etc_common "$s"
  mkfs_image "$s" "$t/rootfs.ext4" 0 "$MINIMAL_SIZE_MIB"
  finish_image "$t" "$hash" "$t0" "busybox_sha256=$(json_str "$(sha_file "$BUSYBOX")")"
  install_image "$t"
}

# ---- base: Debian via debootstrap --------------------------------------------------------------
# The Debian mirror the host's apt uses for $DEBIAN_SUITE ($WRENN_DEBIAN_MIRROR overrides it).
host_mirror() {
  if [ -n "${WRENN_DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "$WRENN_DEBIAN_MIRROR"
    return 0
  fi
  apt_source_uri "$DEBIAN_SUITE"
}

# apt_source_uri SUITE: the first http(s)/file URI the host's apt has for SUITE (one-line
# sources.list and .list files, deb822 .sources files).
apt_source_uri() {
  local want=$1 f type rest uri suite
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    while read -r type rest; do
      [ "$type" = deb ] || continue
      case "$rest" in \[*) rest=${rest#*] } ;; esac
      read -r uri suite _ <<<"$rest"
      if [ "$suite" = "$want" ] && [[ "$uri" =~ ^(https?|file): ]]; then
        printf '%s\n' "${uri%/}"
        return 0
      fi
    done <"$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$want" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          l = $i
          if (l ~ /^[ \t]*#/) continue
          k = l; sub(/:.*/, "", k); k = tolower(k)
          v = l; sub(/^[^:]*:[ \t]*/, "", v)
          if (k == "types") types = v
          else if (k == "uris") uris = v
          else if (k == "suites") suites = v
          else if (k == "enabled") enabled = tolower(v)
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") ~ (" " suite " ")) {
          n = split(uris, u, " ")
          for (j = 1; j <= n; j++) if (u[j] ~ /^(https?|file):/) { print u[j]; exit }
        }
      }' "$f")
    if [ -n "$uri" ]; then
      printf '%s\n' "${uri%/}"
      return 0
    fi
  done
  return 1
}

tree_hash() {
  {
    printf 'debootstrap suite=%s variant=minbase include=%s user=%s:%s\n' "$DEBIAN_SUITE" \
      "$BASE_PACKAGES" "$USER_NAME" "$USER_ID"
    declare -f build_tree_into customise_tree write_etc_common
  } | sha_text
}

# A Debian tree with the base packages, the user account and the guest's /etc files.
build_tree_into() { # build_tree_into DIR MIRROR
  local t=$1 mirror=$2
  say "debootstrap $DEBIAN_SUITE from $mirror (minbase + $BASE_PACKAGES); this takes minutes"
  if ! run debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$t/tree" "$mirror"; then
    [ -f "$t/tree/debootstrap/debootstrap.log" ] && tail -n 30 "$t/tree/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  say "debootstrap done; customising"
  customise_tree "$t/tree"
}

customise_tree() {
  local tree=$1
  # Nothing may stay mounted in the tree that gets cached.
  remove_mounts_only "$tree"
  rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/cache/apt/*.bin
  find "$tree/var/lib/apt/lists" -mindepth 1 -maxdepth 1 -type f ! -name lock -delete
  grep -q "^$USER_NAME:" "$tree/etc/passwd" || {
    printf '%s:x:%s:%s::/home/%s:/bin/bash\n' "$USER_NAME" "$USER_ID" "$USER_ID" "$USER_NAME" >>"$tree/etc/passwd"
    printf '%s:*:19000:0:99999:7:::\n' "$USER_NAME" >>"$tree/etc/shadow"
    printf '%s:x:%s:\n' "$USER_NAME" "$USER_ID" >>"$tree/etc/group"
    printf '%s:!::\n' "$USER_NAME" >>"$tree/etc/gshadow"
  }
  # Member of sudo (group line "sudo:x:27:" or "sudo:x:27:a,b"), without a password.
  sed -i -E "/^sudo:/{/[:,]$USER_NAME(,|\$)/!{s/:\$/:$USER_NAME/;t;s/\$/,$USER_NAME/}}" "$tree/etc/group"
  sed -i -E "/^sudo:/{/[:,]$USER_NAME(,|\$)/!{s/:\$/:$USER_NAME/;t;s/\$/,$USER_NAME/}}" "$tree/etc/gshadow"
  mkdir -p "$tree/etc/sudoers.d"
  printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$USER_NAME" >"$tree/etc/sudoers.d/$USER_NAME"
  chmod 0440 "$tree/etc/sudoers.d/$USER_NAME"
  mkdir -p "$tree/home/$USER_NAME"
  cp -a "$tree/etc/skel/." "$tree/home/$USER_NAME/"
  chown -R "$USER_ID:$USER_ID" "$tree/home/$USER_NAME"
  chmod 0750 "$tree/home/$USER_NAME"
  write_etc_common "$tree"
  mkdir -p "$tree/usr/local/bin"
}

# The guest's apt sources: the suite, its updates and its security archive, from the mirrors the
# host uses (security falls back to Debian's own). Replaces, never edits in place: the stage
# shares inodes with the cached tree.
guest_sources() {
  local mirror=$1 security
  security=$(apt_source_uri "$DEBIAN_SUITE-security") || security=http://deb.debian.org/debian-security
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$DEBIAN_SUITE" "$mirror" "$DEBIAN_SUITE" "${security%/}" "$DEBIAN_SUITE"
}

remove_mounts_only() {
  local dir mp
  dir=$(realpath -m "$1")
  while read -r mp; do
    umount -l "$mp" 2>/dev/null || true
  done < <(awk -v d="$dir/" '{ gsub(/\\040/, " ", $5); if (index($5 "/", d) == 1) print $5 }' \
    /proc/self/mountinfo | sort -r)
}

do_base() {
  local thash hash c t mirror t0=$EPOCHREALTIME
  thash=$(tree_hash)
  hash=$({
    printf 'base tree=%s headroom=%s payload=%s\n' "$thash" "$BASE_HEADROOM_MIB" "$(payload_hash)"
    guest_sources "$(host_mirror)" || true
    cat "$SCRIPT"
  } | sha_text)
  lock "$ROOT/.lock-base"
  sweep_stale "$ROOT" base
  if image_current "$hash"; then
    say "up to date (input ${hash:0:12})"
    return 0
  fi
  c="$CACHE/debootstrap-$thash"
  lock "$CACHE/.lock-debootstrap"
  sweep_stale "$CACHE" debootstrap
  mirror=$(host_mirror) || die "no apt source for $DEBIAN_SUITE in /etc/apt/sources.list{,.d} (set WRENN_DEBIAN_MIRROR)"
  if [ -d "$c/tree" ]; then
    say "reusing cached debootstrap tree $c"
    touch "$c"
  else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/deps.sh)"
    local tt
    new_tmp "$CACHE" debootstrap tt
    build_tree_into "$tt" "$mirror"
    printf 'mirror=%s\nsuite=%s\npackages=%s\nbuilt_at=%s\n' "$mirror" "$DEBIAN_SUITE" \
      "$BASE_PACKAGES" "$(now_utc)" >"$tt/meta"
    mkdir -p "$tt/entry"
    mv "$tt/tree" "$tt/meta" "$tt/entry/"
    mv -T "$tt/entry" "$c"
    prune_cache debootstrap
  fi
  new_tmp "$ROOT" base t
  say "staging the Debian tree"
  # Hard links cost nothing; only new files are written into the stage (add_envd removes before
  # it writes), so the cached tree is never changed through them.
  run cp -al "$c/tree" "$t/tree" 2>/dev/null || {
    rm -rf "$t/tree"
    run cp -a "$c/tree" "$t/tree"
  }
  unlock_all
  rm -f "$t/tree/etc/apt/sources.list"
  guest_sources "$mirror" >"$t/tree/etc/apt/sources.list"
  add_envd "$t/tree" 1
  mkfs_image "$t/tree" "$t/rootfs.ext4" "$BASE_HEADROOM_MIB"
  finish_image "$t" "$hash" "$t0" "debootstrap_hash=$(json_str "$thash")" \
    "suite=$(json_str "$DEBIAN_SUITE")" "packages=$(json_str "$BASE_PACKAGES")" \
    "mirror=$(json_str "$mirror")"
  install_image "$t"
}

# ---- Main --------------------------------------------------------------------------------------
usage() {
  echo "usage: $0 {kernel|minimal|base} ROOT [--envd PATH] [--check]" >&2
  exit 2
}

# --check: can NAME be built on this machine? Prints the reason and exits 3 when it cannot.
check_buildable() {
  local mirror c
  cannot() {
    printf 'images %s: cannot build: %s\n' "$NAME" "$*"
    exit 3
  }
  [ "$(id -u)" = 0 ] || cannot "not running as root"
  if [ "$NAME" = base ]; then
    command -v debootstrap >/dev/null || cannot "debootstrap is not installed"
    mirror=$(host_mirror) || cannot "no apt source for $DEBIAN_SUITE in /etc/apt (set WRENN_DEBIAN_MIRROR)"
    c="$CACHE/debootstrap-$(tree_hash)"
    if [ ! -d "$c/tree" ]; then
      if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 30 "$mirror/dists/$DEBIAN_SUITE/Release" ||
          cannot "mirror $mirror does not answer for $DEBIAN_SUITE"
      elif command -v wget >/dev/null; then
        wget -q -O /dev/null -T 30 "$mirror/dists/$DEBIAN_SUITE/Release" ||
          cannot "mirror $mirror does not answer for $DEBIAN_SUITE"
      fi
    fi
  fi
  printf 'images %s: can be built\n' "$NAME"
  exit 0
}
main() {
  (($# >= 2)) || usage
  NAME=$1
  ROOT=$2
  shift 2
  ENVD_ARG=
  CHECK=0
  while (($#)); do
    case "$1" in
    --check)
      CHECK=1
      shift
      ;;
    --envd)
      (($# >= 2)) || usage
      ENVD_ARG=$2
      shift 2
      ;;
    --envd=*)
      ENVD_ARG=${1#--envd=}
      shift
      ;;
    *) usage ;;
    esac
  done
  case "$NAME" in kernel | minimal | base) ;; *) usage ;; esac
  if ((CHECK)); then check_buildable; fi
  [ "$(id -u)" = 0 ] || die "run as root (mknod, chown and debootstrap need it)"
  for tool in apt-get dpkg cpio lz4 mkfs.ext4 flock setsid sha256sum od; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/deps.sh installs it)"
  done
  BUSYBOX=${WRENN_BUSYBOX:-/bin/busybox}
  [ -x "$BUSYBOX" ] || die "$BUSYBOX is missing (apt-get install busybox-static)"
  if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked: install busybox-static"; fi
  mkdir -p "$ROOT"
  ROOT=$(realpath "$ROOT")
  mkdir -p "$CACHE"

  do_kernel
  if [ "$NAME" != kernel ]; then
    ENVD_BIN=${ENVD_ARG:-${WRENN_ENVD_BIN:-$HERE/../build/src/envd/wrenn-envd}}
    [ -x "$ENVD_BIN" ] || die "wrenn-envd not found at $ENVD_BIN (build it, or pass --envd PATH)"
    ENVD_BIN=$(realpath "$ENVD_BIN")
    local closure
    closure=$(envd_closure) || exit 1
    mapfile -t CLOSURE <<<"$closure"
    [ -n "$closure" ] || CLOSURE=()
    "do_$NAME"
  fi
  say "done"
}

# Everything above is parsed before anything runs, so editing this file during a build is safe.
main "$@"
