#!/usr/bin/env bash
# demo.sh — the Popcorn story on popvmm's own kernels, narrated step by step
# for a person to watch (`make demo`):
#
#   1. up a two-kernel cluster (primary: full flavour, secondary: light),
#      the shared window protected (window.protect = true);
#   2. popvmm's own node pings both kernels' agents over the window and asks
#      them for facts (msg ping, msg info);
#   3. a shell of the secondary over the window, no network (msg tty);
#   4. a host process joins the window (popagent -window) and answers;
#   5. the secondary crashes on purpose (pvpanic from inside the guest);
#      the primary runs on and the peer table says "crashed" at once;
#   6. the secondary boots again and rejoins;
#   7. down leaves nothing behind.
#
# Needs bin/popvmm, bin/popagent (make build) and the images (make images).
# Where /dev/kvm cannot run guests (kvm_pvm, no KVM) the demo runs itself in
# the lab (popvmm lab run), which is slower: minutes to boot.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
popvmm=$top/bin/popvmm
popagent=$top/bin/popagent

if [ "${1:-}" != --here ] && ! "$popvmm" check-kvm --quiet; then
  echo "demo: this machine's KVM cannot run guests ($("$popvmm" check-kvm | head -1 || true)); running the demo in the lab"
  exec "$popvmm" lab run --cpus "${LAB_CPUS:-2}" --memory "${LAB_MEMORY:-4G}" -- scripts/demo.sh --here
fi

bold=$(printf '\033[1m') plain=$(printf '\033[0m')
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }

# The two kernels' cores: DEMO_CPUS (the KVM tier's test passes the cores
# it keeps free of housekeeping), else 0 and 1.
read -r core0 core1 _ <<<"${DEMO_CPUS:-0 1}"
core1=${core1:-$core0}
dir=$(mktemp -d /tmp/popvmm-demo.XXXXXX)
cfg=$dir/cluster.toml
agentpid=
cleanup() {
  [ -n "$agentpid" ] && kill "$agentpid" 2>/dev/null || true
  "$popvmm" down -c "$cfg" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cat > "$cfg" <<EOF
[cluster]
name = "demo"
run_dir = "$dir/run"
[cluster.window]
size = "1M"
protect = true
[cluster.network]
subnet = "10.196.0.0/24"

[[kernel]]
name = "primary"
flavour = "full"
cpus = "$core0"
memory = "256M"
kernel = "$top/images/out/full/bzImage"
initrd = "$top/images/out/full/initramfs.cpio"

[[kernel]]
name = "secondary"
flavour = "light"
cpus = "$core1"
memory = "256M"
kernel = "$top/images/out/light/bzImage"
initrd = "$top/images/out/light/initramfs.cpio"
EOF

# wait_for DESC SECONDS CMD...: runs CMD until it succeeds (quietly). When
# the last word of CMD names a kernel, every 10 s it shows how long it has
# waited and that kernel's last console line, so a slow boot shows progress.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local start=$SECONDS end=$((SECONDS + secs)) next=$((SECONDS + 10)) name=${*: -1} line
  printf '   waiting for %s' "$desc"
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo " — gave up after ${secs}s"; return 1; fi
    if [ $SECONDS -ge $next ]; then
      next=$((SECONDS + 10))
      line=$("$popvmm" logs -c "$cfg" "$name" 2>/dev/null | sed $'s/\x1b\\[[0-9;?]*[A-Za-z]//g; s/\r//g' | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-90)
      printf '\n     %3ds%s' $((SECONDS - start)) "${line:+  $name: $line}"
    else
      printf .
    fi
    sleep 2
  done
  echo " ok"
}
state_is() { [ "$("$popvmm" status -c "$cfg" | awk -v k="$1" '$1 == k { print $3 }')" = "$2" ]; }

step "1. A cluster of two kernels, each on its own core, one shared window ($cfg)"
sed -n '1,12p' "$cfg"
run "$popvmm" up -d "$cfg"
run "$popvmm" status -c "$cfg"

step "2. popvmm's node reaches each kernel's agent through the window device"
echo "   (popagent starts from /etc/popvmm/init.d/50-popagent in both flavours, bound to 1af4:1110 with uio_pci_generic)"
wait_for "the primary's agent" 600 "$popvmm" msg ping -c "$cfg" primary
wait_for "the secondary's agent" 600 "$popvmm" msg ping -c "$cfg" secondary
run "$popvmm" msg ping -c "$cfg" primary
run "$popvmm" msg ping -c "$cfg" secondary
run "$popvmm" msg info -c "$cfg" primary
run "$popvmm" msg info -c "$cfg" secondary
echo "   Every doorbell went guest → KVM ioeventfd → eventfd → KVM irqfd: the window device's counters:"
"$popvmm" status -c "$cfg" --json | grep -E '"(peer [0-9]|soft doorbells)' | sed 's/^ */     /'

step "3. A shell of the secondary over the window (no network involved)"
printf '%s$ popvmm msg tty secondary   (typing: hostname; uname -r; cat /proc/loadavg)%s\n' "$bold" "$plain"
{ echo 'echo "I am $(hostname), kernel $(uname -r), load $(cut -d" " -f1-3 /proc/loadavg)"'; sleep 5; } |
  timeout 30 "$popvmm" msg tty -c "$cfg" secondary || true

step "4. A host process joins the window as a peer"
# The window's ivshmem socket, as the supervisor reports it (status --json).
sock=$("$popvmm" status -c "$cfg" --json | sed -n 's/^ *"window_socket": *"\(.*\)",*$/\1/p')
[ -S "$sock" ] || { echo "demo: no window socket in popvmm status --json (got '$sock')"; exit 1; }
printf '%s$ popagent -window %s -name hostpeer &%s\n' "$bold" "$sock" "$plain"
"$popagent" -window "$sock" -name hostpeer -local "" &
agentpid=$!
wait_for "the host peer" 60 "$popvmm" msg ping -c "$cfg" hostpeer
run "$popvmm" msg ping -c "$cfg" hostpeer
run "$popvmm" msg stat -c "$cfg"

step "5. The secondary crashes on purpose (pvpanic from inside it); the primary runs on"
printf '%s$ echo %q | popvmm msg tty secondary%s\n' "$bold" "printf '\\001' | dd of=/dev/port bs=1 seek=1285 count=1" "$plain"
{ echo "printf '\\001' | dd of=/dev/port bs=1 seek=1285 count=1"; sleep 5; } |
  timeout 20 "$popvmm" msg tty -c "$cfg" secondary >/dev/null 2>&1 || true
wait_for "the secondary to be marked crashed" 60 state_is secondary crashed
run "$popvmm" status -c "$cfg"
echo "   The peer table says so at once (popvmm marks a VM that ended; no heartbeat timeout):"
run "$popvmm" msg stat -c "$cfg"
run "$popvmm" msg ping -c "$cfg" primary

step "6. The secondary boots again and rejoins the window"
run "$popvmm" boot -c "$cfg" secondary
wait_for "the secondary's agent to rejoin" 600 "$popvmm" msg ping -c "$cfg" secondary
run "$popvmm" msg ping -c "$cfg" secondary
run "$popvmm" msg stat -c "$cfg"

step "7. down leaves nothing behind"
kill "$agentpid" 2>/dev/null || true
agentpid=
supervisor=$("$popvmm" status -c "$cfg" --json | sed -n 's/^  "pid": *\([0-9]*\),*$/\1/p')
run "$popvmm" down -c "$cfg"
ls -A "$dir/run" 2>/dev/null | grep -E '\.sock$' && echo "   sockets left behind!" && exit 1
# down returns once the supervisor has let its run directory go; its
# process ends just after.
for _ in $(seq 50); do [ -n "$supervisor" ] && kill -0 "$supervisor" 2>/dev/null || break; sleep 0.2; done
[ -n "$supervisor" ] && kill -0 "$supervisor" 2>/dev/null && echo "   the supervisor (pid $supervisor) is left 10 s after down!" && exit 1
echo "   no supervisor, no sockets: done."
