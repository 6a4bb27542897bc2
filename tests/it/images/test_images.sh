#!/usr/bin/env bash
# Guest images, end to end: build `minimal` (and `base`) with images/build.sh into a temp ROOT,
# boot each under QEMU microvm/TCG in a network namespace of our own exactly as the host agent
# does (qcow2 overlay over the read-only image, tap0 169.254.0.22/30, static neighbours), wait for
# wrenn-envd's /health, and run commands through its process.Process/Start stream. Prints TAP.
#
# Environment: WRENN_ENVD_BIN (the envd binary to put in the images; meson passes the build's),
# WRENN_IMAGES_DIR (default: images/ of this source tree), WRENN_IMAGE_CACHE (passed through to
# build.sh; default /var/cache/wrenn/images, shared with every other build so the kernel and the
# debootstrap tree are reused). Needs root, qemu-system-x86_64, qemu-img, curl and iproute2.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGES_DIR=${WRENN_IMAGES_DIR:-$HERE/../../../images}
BUILD=$IMAGES_DIR/build.sh
ENVD=${WRENN_ENVD_BIN:-$HERE/../../../build/src/envd/wrenn-envd}
HEALTH_TIMEOUT=${WRENN_TEST_HEALTH_TIMEOUT:-120}

PLAN=14
N=0
FAILED=0
ok() {
  N=$((N + 1))
  echo "ok $N - $*"
}
not_ok() {
  N=$((N + 1))
  FAILED=$((FAILED + 1))
  echo "not ok $N - $*"
}
skip() { # skip REASON DESC
  N=$((N + 1))
  echo "ok $N - $2 # SKIP $1"
}
diag() { sed 's/^/# /'; }
now() { echo "${EPOCHREALTIME/./}"; }
secs() { # secs FROM_US [TO_US]: seconds with two decimals
  local us=$((${2:-$(now)} - $1))
  printf '%d.%02d' $((us / 1000000)) $((us / 10000 % 100))
}
# check DESC [ TEST ] [ TEST ]...: one TAP line, ok when every bracketed test holds.
check() {
  local desc=$1 args=() good=1
  shift
  while (($#)); do
    if [ "$1" = "]" ]; then
      [ "${args[@]}" ] || good=0
      args=()
    elif [ "$1" != "[" ]; then
      args+=("$1")
    fi
    shift
  done
  if ((good)); then ok "$desc"; else not_ok "$desc"; fi
}

echo "1..$PLAN"
if [ "$(id -u)" != 0 ]; then
  for ((i = 1; i <= PLAN; i++)); do skip "needs root (namespaces, tap devices, image builds)" "images $i"; done
  exit 0
fi
for tool in qemu-system-x86_64 qemu-img curl ip; do
  if ! command -v "$tool" >/dev/null; then
    for ((i = 1; i <= PLAN; i++)); do skip "$tool is not installed" "images $i"; done
    exit 0
  fi
done

WORK=$(mktemp -d /tmp/wrenn-images-test.XXXXXX)
ROOT=$WORK/root
VM_PID=
NS=
cleanup() {
  vm_stop
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- One VM at a time: its namespace, overlay and QEMU process ---------------------------------
vm_stop() {
  if [ -n "$VM_PID" ]; then
    kill -TERM "$VM_PID" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "$VM_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$VM_PID" 2>/dev/null
    wait "$VM_PID" 2>/dev/null
    VM_PID=
  fi
  if [ -n "$NS" ]; then
    ip netns del "$NS" 2>/dev/null
    NS=
  fi
}

# vm_start IMAGE: boot ROOT/images/IMAGE/rootfs.ext4 through a fresh overlay; sets VM_PID, NS,
# VM_DIR, and BOOT_SECS once /health answered 204 (returns 1 if it did not in time).
vm_start() {
  local image=$1 khz t0 code=
  VM_DIR=$WORK/vm-$image
  NS=wimg-$$-$image
  mkdir -p "$VM_DIR"
  ip netns add "$NS" || return 1
  ip -n "$NS" link set lo up &&
    ip -n "$NS" tuntap add dev tap0 mode tap &&
    ip -n "$NS" link set tap0 address 02:fc:00:00:00:02 &&
    ip -n "$NS" addr add 169.254.0.22/30 dev tap0 &&
    ip -n "$NS" link set tap0 up &&
    ip -n "$NS" neigh replace 169.254.0.21 lladdr 02:fc:00:00:00:01 nud permanent dev tap0 || return 1
  qemu-img create -q -f qcow2 -b "$ROOT/images/$image/rootfs.ext4" -F raw "$VM_DIR/overlay.qcow2" ||
    return 1
  # The host's TSC frequency: without it TCG guests sometimes fail to calibrate and hang.
  khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
  t0=$(now)
  ip netns exec "$NS" qemu-system-x86_64 -M microvm,acpi=on -accel tcg -cpu max -m 256M -smp 1 \
    -nodefaults -no-user-config -display none -no-reboot -serial "file:$VM_DIR/console.log" \
    -kernel "$ROOT/kernels/current/vmlinux" -initrd "$ROOT/kernels/current/initramfs.cpio" \
    -append "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests mitigations=off audit=0 no_timer_check tsc=reliable tsc_early_khz=$khz lpj=$((4 * khz))" \
    -drive "id=root,file=$VM_DIR/overlay.qcow2,format=qcow2,if=none,cache=unsafe" \
    -device virtio-blk-device,drive=root \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-device,netdev=n0,mac=02:fc:00:00:00:01 \
    </dev/null >"$VM_DIR/qemu.log" 2>&1 &
  VM_PID=$!
  while (($(now) - t0 < HEALTH_TIMEOUT * 1000000)); do
    if ! kill -0 "$VM_PID" 2>/dev/null; then
      echo "QEMU exited before envd answered" | diag
      break
    fi
    code=$(ip netns exec "$NS" curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
      http://169.254.0.21:49983/health 2>/dev/null)
    if [ "$code" = 204 ]; then
      BOOT_SECS=$(secs "$t0")
      return 0
    fi
    sleep 0.05
  done
  {
    echo "no /health answer (last code '$code'); console:"
    tail -n 30 "$VM_DIR/console.log" "$VM_DIR/qemu.log" 2>/dev/null
  } | diag
  return 1
}

# envd GET PATH
envd_get() { ip netns exec "$NS" curl -s --max-time 10 "http://169.254.0.21:49983$1"; }

# vm_exec [-u USER] CMD ARG...: run through process.Process/Start (Connect server stream, one
# enveloped JSON request). Sets OUT (stdout), ERR (stderr), CODE (exit code); returns 1 if the
# stream did not end with an exit.
vm_exec() {
  local user='' json sep='' a n resp
  if [ "$1" = -u ]; then
    user=$2
    shift 2
  fi
  json="{\"process\":{\"cmd\":\"$1\",\"args\":["
  shift
  for a in "$@"; do
    a=${a//\\/\\\\}
    a=${a//\"/\\\"}
    json+="$sep\"$a\""
    sep=,
  done
  json+="]}}"
  n=${#json}
  resp=$VM_DIR/resp.bin
  {
    printf '\x00'
    printf "\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))"
    printf "\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))"
    printf '%s' "$json"
  } >"$VM_DIR/req.bin"
  local auth=()
  [ -n "$user" ] && auth=(-H "Authorization: Basic $(printf '%s:' "$user" | base64)")
  ip netns exec "$NS" curl -s --max-time 60 -H 'Content-Type: application/connect+json' \
    "${auth[@]}" --data-binary "@$VM_DIR/req.bin" \
    http://169.254.0.21:49983/process.Process/Start >"$resp"
  local f
  for f in stdout stderr; do
    grep -ao "\"$f\":\"[^\"]*\"" "$resp" | sed "s/^\"$f\":\"//; s/\"\$//" |
      while read -r b; do printf '%s' "$b" | base64 -d; done >"$VM_DIR/$f"
  done
  OUT=$(cat "$VM_DIR/stdout")
  ERR=$(cat "$VM_DIR/stderr")
  if ! grep -aq '"end":{' "$resp"; then
    echo "no end event in the Start stream:" | diag
    tr -c '[:print:]\n' '.' <"$resp" | head -c 600 | diag
    CODE=
    return 1
  fi
  CODE=$(grep -ao '"exitCode":[0-9-]*' "$resp" | tail -n1 | cut -d: -f2)
  CODE=${CODE:-0}
  [ -n "$ERR" ] && printf '%s\n' "$ERR" | diag
  return 0
}

# ---- minimal ------------------------------------------------------------------------------------
t0=$(now)
if "$BUILD" minimal "$ROOT" --envd "$ENVD" >"$WORK/build-minimal.log" 2>&1; then
  diag <"$WORK/build-minimal.log"
  ok "minimal: kernel + minimal image built in $(secs "$t0") s"
  MINIMAL=1
else
  diag <"$WORK/build-minimal.log"
  not_ok "minimal: kernel + minimal image built"
  MINIMAL=0
fi

# A second build of the same inputs is a cache hit: no work, nothing rewritten.
if ((MINIMAL)); then
  ino=$(stat -c %i "$ROOT/images/minimal/rootfs.ext4")
  t0=$(now)
  "$BUILD" minimal "$ROOT" --envd "$ENVD" >"$WORK/rebuild.log" 2>&1
  rc=$?
  if [ $rc = 0 ] && grep -q 'minimal .*up to date' "$WORK/rebuild.log" &&
    [ "$(stat -c %i "$ROOT/images/minimal/rootfs.ext4")" = "$ino" ]; then
    ok "minimal: rebuild with the same inputs reuses the image ($(secs "$t0") s)"
  else
    diag <"$WORK/rebuild.log"
    not_ok "minimal: rebuild with the same inputs reuses the image"
  fi
else
  not_ok "minimal: rebuild reuses the image (no image)"
fi

# A failed build (bad envd path) and an interrupted one leave nothing half-made behind.
R2=$WORK/root2
"$BUILD" minimal "$R2" --envd "$WORK/no-such-envd" >"$WORK/fail.log" 2>&1
rc=$?
"$BUILD" minimal "$R2" --envd "$ENVD" >"$WORK/int.log" 2>&1 &
bpid=$!
for _ in $(seq 400); do
  compgen -G "$R2/.tmp-minimal-*" >/dev/null && break
  kill -0 "$bpid" 2>/dev/null || break
  sleep 0.01
done
kill -TERM "$bpid" 2>/dev/null
wait "$bpid"
irc=$?
left=$(find "$R2" "${WRENN_IMAGE_CACHE:-/var/cache/wrenn/images}" -maxdepth 1 -name ".tmp-*-$bpid" 2>/dev/null)
img_ok=1
if [ -e "$R2/images/minimal/rootfs.ext4" ] || [ -e "$R2/images/minimal/image.json" ]; then
  # Finished before the signal: then it must be complete.
  grep -q '"input_hash"' "$R2/images/minimal/image.json" 2>/dev/null &&
    [ -s "$R2/images/minimal/rootfs.ext4" ] || img_ok=0
fi
if [ $rc != 0 ] && grep -q 'wrenn-envd not found' "$WORK/fail.log" && [ -z "$left" ] &&
  ((img_ok)); then
  ok "minimal: failed and interrupted builds leave no temp dir or partial image (TERM exit $irc)"
else
  { cat "$WORK/fail.log" "$WORK/int.log"; echo "left: $left"; } | diag
  not_ok "minimal: failed and interrupted builds leave no temp dir or partial image"
fi

if ((MINIMAL)) && vm_start minimal; then
  ok "minimal: boots to envd /health in $BOOT_SECS s"
  BOOTED=1
else
  not_ok "minimal: boots to envd /health"
  BOOTED=0
fi
if ((BOOTED)); then
  envs=$(envd_get /envs)
  check "minimal: GET /envs answers a JSON object ($envs)" [ "${envs:0:1}" = "{" ]
  kver=$(sed -n 's/^  "kernel_version": "\(.*\)",$/\1/p' "$ROOT/images/minimal/image.json")
  if vm_exec /bin/sh -c 'uname -r; tr "\000" " " </proc/1/cmdline; echo; hostname' &&
    [ "$CODE" = 0 ]; then
    printf '%s\n' "$OUT" | diag
    mapfile -t lines <<<"$OUT"
    check "minimal: Start runs uname -r in the guest (kernel $kver)" [ "${lines[0]:-}" = "$kver" ]
    check "minimal: PID 1 is wrenn-envd" [ "${lines[1]:-}" = "/usr/local/bin/wrenn-envd " ]
  else
    not_ok "minimal: Start runs uname -r in the guest (exit '$CODE')"
    not_ok "minimal: PID 1 is wrenn-envd"
  fi
  if vm_exec -u user /bin/bash -l -c 'id -u; echo $HOME; cat /proc/net/arp | grep -c 169.254.0.22' &&
    [ "$CODE" = 0 ] && [ "$OUT" = $'1000\n/home/user\n1' ]; then
    ok "minimal: runs as user (uid 1000, home /home/user) through /bin/bash; gateway neighbour set"
  else
    printf 'exit %s, output:\n%s\n' "$CODE" "$OUT" | diag
    not_ok "minimal: runs as user (uid 1000, home /home/user) through /bin/bash; gateway neighbour set"
  fi
else
  for d in "GET /envs" "Start uname -r" "PID 1 is wrenn-envd" "runs as user"; do
    not_ok "minimal: $d (not booted)"
  done
fi
vm_stop

# ---- base ----------------------------------------------------------------------------------------
# Skipped only when the build cannot happen on this machine (build.sh --check says why).
why=$("$BUILD" base "$ROOT" --check 2>&1)
if [ $? != 0 ]; then
  for d in "built" "boots to /health" "python3 prints 42" "user with sudo" "bash, curl, CA certificates"; do
    skip "${why#*: }" "base: $d"
  done
else
  t0=$(now)
  if "$BUILD" base "$ROOT" --envd "$ENVD" >"$WORK/build-base.log" 2>&1; then
    grep -v '^I: ' "$WORK/build-base.log" | diag
    ok "base: image built in $(secs "$t0") s"
    BASE=1
  else
    tail -n 40 "$WORK/build-base.log" | diag
    not_ok "base: image built"
    BASE=0
  fi
  if ((BASE)) && vm_start base; then
    ok "base: boots to envd /health in $BOOT_SECS s"
    if vm_exec /bin/bash -l -c "python3 -c 'print(6*7)'" && [ "$CODE" = 0 ] && [ "$OUT" = 42 ]; then
      ok "base: python3 -c 'print(6*7)' prints 42"
    else
      printf 'exit %s, output: %s\n' "$CODE" "$OUT" | diag
      not_ok "base: python3 -c 'print(6*7)' prints 42"
    fi
    if vm_exec -u user /bin/bash -l -c 'id -un; echo $HOME; sudo -n id -u' && [ "$CODE" = 0 ] &&
      [ "$OUT" = $'user\n/home/user\n0' ]; then
      ok "base: user account with passwordless sudo"
    else
      printf 'exit %s, output:\n%s\n' "$CODE" "$OUT" | diag
      not_ok "base: user account with passwordless sudo"
    fi
    if vm_exec /bin/bash -c 'echo $BASH_VERSION; command -v curl; ls /etc/ssl/certs/ca-certificates.crt' &&
      [ "$CODE" = 0 ] && [[ "$OUT" == *curl*ca-certificates.crt* ]]; then
      ok "base: bash, curl and CA certificates are installed"
    else
      printf 'exit %s, output:\n%s\n' "$CODE" "$OUT" | diag
      not_ok "base: bash, curl and CA certificates are installed"
    fi
  else
    not_ok "base: boots to /health"
    not_ok "base: python3 prints 42 (not booted)"
    not_ok "base: user with sudo (not booted)"
    not_ok "base: bash, curl, CA certificates (not booted)"
  fi
  vm_stop
fi

# ---- nothing left behind -------------------------------------------------------------------------
leaks=$(ip netns list | grep -c "^wimg-$$-")
check "no VM process or namespace of this test is left" [ "$leaks" = 0 ] [ -z "$VM_PID" ]
((FAILED == 0))
