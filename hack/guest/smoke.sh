#!/usr/bin/env bash
# Smoke test of the test guest without libvirt: boot it with plain QEMU (TCG), talk to
# qemu-ga over the virtio-serial UNIX socket and shut it down; QEMU must exit with 0.
#
# usage: hack/guest/smoke.sh [--agent | --acpi | --ignore-acpi] [OUTDIR]
#   --agent        (default) checks, then guest-shutdown via the agent
#   --acpi         checks, then QMP system_powerdown (ACPI power button)
#   --ignore-acpi  boots with pvl.ignore_acpi=1: system_powerdown must not stop the guest
#                  for 15 s, then guest-shutdown via the agent must
# OUTDIR defaults to <repo>/.cache/guest; hack/build-guest.sh runs first (cached).
# KEEP=1 keeps the temp dir (console log, disk copy); AGENT_TIMEOUT (s, default 90) bounds
# the wait for the guest agent.
set -euo pipefail

HERE=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
REPO=$(realpath "$HERE/../..")

MODE=agent
while (($#)); do
  case "$1" in
    --agent) MODE=agent ;;
    --acpi) MODE=acpi ;;
    --ignore-acpi) MODE=ignore-acpi ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "smoke: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
OUT=${1:-"$REPO/.cache/guest"}
EXIT_TIMEOUT=60
GUEST_IP=192.0.2.10

"$REPO/hack/build-guest.sh" "$OUT"
OUT=$(realpath "$OUT")
# shellcheck source=/dev/null
source "$OUT/guest.env"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pvl-smoke.XXXXXX")
QEMU_PID=
CLIENT_PID=
OK=0
cleanup() {
  local rc=$?
  set +e
  if [[ -n $CLIENT_PID ]]; then kill "$CLIENT_PID" 2> /dev/null; fi
  if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2> /dev/null; then
    echo "smoke: killing QEMU (pid $QEMU_PID)" >&2
    kill -TERM "$QEMU_PID" 2> /dev/null
    for _ in $(seq 50); do
      kill -0 "$QEMU_PID" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$QEMU_PID" 2> /dev/null
    wait "$QEMU_PID" 2> /dev/null
  fi
  if ((!OK)); then
    echo "smoke: FAILED ($MODE); last console lines ($TMP/console.log):" >&2
    tail -n 40 "$TMP/console.log" 2> /dev/null | sed 's/^/  | /' >&2
    [[ -s $TMP/qemu.log ]] && sed 's/^/  qemu: /' "$TMP/qemu.log" >&2
  fi
  if [[ ${KEEP:-0} == 1 ]]; then
    echo "smoke: kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$GUEST_DATA_DISK" "$TMP/data.ext4"
CMDLINE="$GUEST_CMDLINE_BASE pvl.ip=$GUEST_IP/24"
[[ $MODE == ignore-acpi ]] && CMDLINE+=" pvl.ignore_acpi=1"

# shellcheck disable=SC2054 # the commas are inside QEMU option values
QEMU_ARGS=(
  -name pvl-smoke -accel tcg -machine q35 -m 256 -smp 1
  -nodefaults -no-user-config -display none
  -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "$CMDLINE"
  -drive "file=$TMP/data.ext4,format=raw,if=virtio"
  -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0,romfile=
  -device virtio-serial-pci,id=vser0
  -chardev "socket,id=qga0,path=$TMP/qga.sock,server=on,wait=off"
  -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0
  -serial "file:$TMP/console.log"
  -qmp "unix:$TMP/qmp.sock,server=on,wait=off"
)

echo "smoke: mode $MODE, kernel $GUEST_KERNEL_VERSION, cmdline: $CMDLINE"
T0=$(date +%s.%N)
qemu-system-x86_64 "${QEMU_ARGS[@]}" > "$TMP/qemu.log" 2>&1 &
QEMU_PID=$!

# In the background + wait, so that a signal to this script is handled at once.
python3 "$HERE/smoke_qga.py" --mode "$MODE" --qga "$TMP/qga.sock" --qmp "$TMP/qmp.sock" \
  --console "$TMP/console.log" --qemu-pid "$QEMU_PID" --t0 "$T0" \
  --agent-timeout "${AGENT_TIMEOUT:-90}" \
  --expect-ip "$GUEST_IP" --kernel-version "$GUEST_KERNEL_VERSION" &
CLIENT_PID=$!
wait "$CLIENT_PID"
CLIENT_PID=

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}'; }
T_REQ=$(date +%s.%N)
for _ in $(seq $((EXIT_TIMEOUT * 10))); do
  kill -0 "$QEMU_PID" 2> /dev/null || break
  # kill -0 also succeeds for a zombie; stop polling once it has exited.
  [[ $(ps -o stat= -p "$QEMU_PID" 2> /dev/null) == Z* ]] && break
  sleep 0.1
done
if [[ $(ps -o stat= -p "$QEMU_PID" 2> /dev/null) != Z* ]] && kill -0 "$QEMU_PID" 2> /dev/null; then
  echo "smoke: FAIL: QEMU still running ${EXIT_TIMEOUT} s after the shutdown request" >&2
  exit 1
fi
rc=0
wait "$QEMU_PID" || rc=$?
QEMU_PID=
echo "smoke: QEMU exited with $rc, $(elapsed "$T_REQ") s after the shutdown request, $(elapsed "$T0") s after start"
if ((rc != 0)); then
  sed 's/^/  qemu: /' "$TMP/qemu.log" >&2
  exit 1
fi

case "$MODE" in
  acpi) expect="PVL: ACPI power button, powering off" ;;
  *) expect="PVL: /sbin/shutdown" ;;
esac
grep -q "$expect" "$TMP/console.log" || { echo "smoke: FAIL: no '$expect' on the console" >&2; exit 1; }
grep -q "PVL: shutting down" "$TMP/console.log" || { echo "smoke: FAIL: rc.shutdown did not run" >&2; exit 1; }
grep -o 'PVL: sysinit done [0-9.]*s' "$TMP/console.log" | sed 's/^/smoke: guest: /'
OK=1
echo "smoke: PASS ($MODE)"
