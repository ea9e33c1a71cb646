#!/usr/bin/env bash
# boot-count.sh — boot each flavour's kernel N times under popvmm and N
# times under QEMU (-enable-kvm -cpu host -M microvm), all in ONE lab run
# (same lab kernel, same KVM, same nested-paging setting), and tally how
# each boot ended: reached init ("Run /init" on the console), triple fault,
# another crash, or hung. Issue 20: under nested paging popvmm's bzImage
# boots triple-faulted about one boot in two while QEMU's never did.
#
#   bench/boot-count.sh [N]          N boots per kernel and VMM (default 10)
#
# Environment:
#   FLAVOURS="full light"   images/out/<flavour> to boot (make images)
#   FORMAT=bzImage|pvh      popvmm's boot protocol (QEMU boots the same file)
#   APPEND="..."            added to the guests' "console=ttyS0 panic=-1"
#   TIMEOUT=240             seconds to init before a boot counts as hung
#   NPT=1                   the lab KVM's nested paging (lab.kvm_amd=npt=N)
#   VMMS="popvmm qemu"      which VMMs to run: popvmm (the vmm package alone,
#                           TestKVMBootCount), qemu, and cluster (a one-kernel
#                           cluster through `popvmm up -d` and `popvmm down`, as
#                           a new user runs it: supervisor, UART log, PCI
#                           devices, network; the kernel pinned to CPU, default 0)
#   POPULATE=1, HUGEPAGES=1 popvmm's guest RAM faulted in before boot, or on
#                           2 MiB hugetlbfs pages (the lab reserves 300)
#   CPU=C                   the lab core popvmm's vCPU is pinned to (default the last;
#                           with PARALLEL, boot I runs on core I mod the lab's cores)
#   PROTECT=true, WINDOW=1M, MEMORY=256M
#                           cluster mode: window.protect, the window's size, the
#                           kernel's memory (defaults false, 16M, 512M)
#   PARALLEL=K              cluster and qemu boots K at a time (separate clusters,
#                           separate QEMUs), as CI's cluster tests boot kernels side by side;
#                           at most the lab's core count with cluster (a core is one kernel's)
#   NOHOLD=1                end the lab job's KVM hold (lab hold-kvm) first, so
#                           that the boots switch the lab kernel's static keys
#                           (text patching) as they did before the hold existed
#   LOAD=1                  the lab host's devices busy meanwhile (16 MiB written
#                           and synced to the 9p share in a loop): device interrupts
#   HOUSEKEEPING=1          all but the vCPU threads, and the lab's device
#                           interrupts, on lab CPU 0; the boots on the other CPUs
#   IRQS=LIST               the lab host's device interrupts go to these CPUs
#                           (/proc/irq/*/smp_affinity_list), e.g. the last one
#   TRACE=1                 keep the KVM trace (kvm_exit, kvm_inj_*, kvm_entry)
#                           of every failed popvmm or cluster boot (cluster: the
#                           last 5000 events of the core its vCPU ran on)
#   OUT=DIR                 where logs and the tally go (default a new dir
#                           under /var/tmp); POPVMM=path: another popvmm;
#                           VMMTEST=path: a vmm test binary built elsewhere
#                           (go test -c -tags bootcount ./vmm), e.g. from another commit
#
# Prints one line per boot and a table; exits 0 only if every boot
# reached init. Failed boots' consoles (and traces) are kept in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${1:-}" = --in-lab ]; then
  n=$2 out=$3
  tally() { echo "boot-count: $*" | tee -a "$out/tally.txt"; }
  tracing=/sys/kernel/tracing
  trace_on() {
    [ "${TRACE:-0}" = 1 ] || return 0
    [ -d "$tracing/events" ] || mount -t tracefs nodev "$tracing"
    echo 0 >"$tracing/tracing_on"
    echo 8192 >"$tracing/buffer_size_kb"
    : >"$tracing/trace"
    for e in kvm/kvm_exit kvm/kvm_entry kvm/kvm_inj_exception kvm/kvm_inj_virq kvm/kvm_pio kvm/kvm_mmio kvm/kvm_msr kvm/kvm_cr; do
      [ -e "$tracing/events/$e/enable" ] && echo 1 >"$tracing/events/$e/enable"
    done
    echo 1 >"$tracing/tracing_on"
  }
  trace_keep() {
    [ "${TRACE:-0}" = 1 ] || return 0
    echo 0 >"$tracing/tracing_on"
    tail -n 3000 "$tracing/trace" >"$1"
  }
  [ "${HUGEPAGES:-0}" = 1 ] && echo 300 >/proc/sys/vm/nr_hugepages
  if [ "${NOHOLD:-0}" = 1 ]; then
    for p in $(pgrep -f 'popvmm lab hold-kvm' || true); do kill "$p" && echo "lab: ended the KVM hold (pid $p)"; done
  fi
  irqs() { # the lab host's busy interrupt lines, per CPU
    echo "lab: /proc/interrupts $1:"
    grep -E '^ *([0-9]+|LOC|RES|CAL):' /proc/interrupts | awk '{t=0; for (i=2; i<=NF && $i ~ /^[0-9]+$/; i++) t+=$i; if (t > 100) print "  " $0}'
  }
  hk=
  if [ "${HOUSEKEEPING:-0}" = 1 ]; then
    # This script, popvmm's and QEMU's other threads and the lab's device
    # interrupts on CPU 0 (where the KVM tier's faults were, issue 20); the
    # vCPU threads alone on the others, in turn.
    hk=0
    IRQS=$hk
    taskset -p -c "$hk" $$ >/dev/null
    echo "lab: housekeeping on CPU $hk"
  fi
  if [ -n "${IRQS:-}" ]; then
    # Every device interrupt of the lab host to the CPUs IRQS lists.
    for f in /proc/irq/*/smp_affinity_list; do echo "$IRQS" >"$f" 2>/dev/null || true; done
  fi
  irqs before
  loadpid=
  if [ "${LOAD:-0}" = 1 ]; then
    # Device interrupts in the lab host while the guests boot, as a test
    # run makes them (its logs and images go over the 9p share): 16 MiB
    # written and synced to the share again and again. They land on the
    # CPUs /proc/irq says (CPU 0 unless IRQS moves them).
    ( while :; do dd if=/dev/zero of="$out/load.tmp" bs=1M count=16 conv=fsync status=none; done ) &
    loadpid=$!
  fi
  trap '[ -z "$loadpid" ] || { kill $loadpid; wait $loadpid; rm -f "$out/load.tmp"; }; irqs after' EXIT
  par=${PARALLEL:-1}
  ncpu=$(nproc --all) # every lab CPU, whatever this script runs on
  guestcpus=$ncpu
  [ -z "$hk" ] || guestcpus=$(( ncpu - 1 ))
  if [ "$par" -gt "$guestcpus" ] && [[ " ${VMMS:-} " == *" cluster "* ]]; then
    echo "boot-count: PARALLEL=$par clusters need $par lab cores, the lab has $ncpu (popvmm gives each kernel its own cores)" >&2
    exit 2
  fi
  # boot_one VMM FLAVOUR KERNEL I: boot I of FLAVOUR under VMM (cluster or
  # qemu); writes "KIND DETAIL" to $out/result.VMM.FLAVOUR.I. Boots that run
  # at once (PARALLEL) are separate clusters (names, bridges, subnets of
  # their own) or QEMUs, spread over the lab's CPUs.
  boot_one() {
    local vmm=$1 f=$2 kernel=$3 i=$4 kind detail t0 log cpu
    log=$out/$vmm-$f-$(basename "$kernel")-$i.log
    cpu=${CPU:-$(( par > 1 ? i % ncpu : 0 ))}
    # With housekeeping on CPU 0, the boots take the other CPUs in turn.
    [ -z "$hk" ] || [ -n "${CPU:-}" ] || cpu=$(( 1 + i % guestcpus ))
    t0=$(date +%s.%N)
    kind=hung
    local deadline=$(( $(date +%s) + ${TIMEOUT:-240} ))
    if [ "$vmm" = cluster ]; then
      local name=bootcount$i cfg=$out/cluster-$f-$i.toml popvmm=$root/bin/popvmm st
      cat >"$cfg" <<EOT
[cluster]
name = "$name"
images = "$root/images/out"
run_dir = "/run/popvmm-bootcount/$name"
[cluster.window]
size = "${WINDOW:-16M}"
protect = ${PROTECT:-false}
[cluster.network]
bridge = "pv-bc$i"
subnet = "10.198.$i.0/24"
[[kernel]]
name = "k"
flavour = "$f"
cpus = "$cpu"
memory = "${MEMORY:-512M}"
backing = "memfd"
boot = "up"
ip = "10.198.$i.2"
cmdline = "loglevel=6 ${APPEND:-}"
console_log = "$log"
EOT
      if ! "$popvmm" up -d "$cfg" >"$log.up" 2>&1; then
        # Refused or failed before the kernel ran: not a boot at all.
        kind=up-failed
        deadline=0
      fi
      while [ "$(date +%s)" -lt "$deadline" ]; do
        # loglevel=6 hides "Run /init" (KERN_INFO); the initramfs's /init
        # announces itself.
        if grep -q "Run /init\|popvmm-init:" "$log" 2>/dev/null; then kind=init; break; fi
        st=$("$popvmm" status -c "$name" --json 2>/dev/null || true)
        if grep -q '"crashed"\|"stopped"' <<<"$st"; then
          kind=crash
          grep -q "triple fault" <<<"$st" && kind=triple-fault
          echo "$st" >"$log.status"
          # The vCPU ran pinned to $cpu: that CPU's trace buffer ends at
          # its crash (read without stopping the other boots' tracing).
          [ "${TRACE:-0}" = 1 ] && tail -n 5000 "$tracing/per_cpu/cpu$cpu/trace" >"$log.trace"
          break
        fi
        sleep 1 # polling the console log and status, bounded by the deadline
      done
      "$popvmm" down -c "$name" >>"$log.up" 2>&1 || true
      [ "$kind" = init ] && rm -f "$log" "$log.up" "$log.status" "$cfg"
    else
      local pin=(taskset -c "$cpu")
      [ -n "$hk" ] && pin=() # its vCPU thread alone goes to $cpu, below
      "${pin[@]}" qemu-system-x86_64 -name "bootcount$i,debug-threads=on" -M microvm,acpi=off -enable-kvm -cpu host -m 512 -smp 1 \
        -nodefaults -nographic -no-reboot -serial "file:$log" \
        -kernel "$kernel" -initrd "$(dirname "$kernel")/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 ${APPEND:-}" </dev/null >"$log.qemu" 2>&1 &
      local q=$!
      if [ -n "$hk" ]; then
        # As popvmm pins its vCPU thread and leaves the rest on the
        # housekeeping CPU: QEMU's vCPU thread ("CPU 0/KVM", named with
        # debug-threads=on) to $cpu.
        local vt=
        while [ -z "$vt" ] && kill -0 "$q" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
          vt=$(grep -l '^CPU 0/KVM' /proc/"$q"/task/*/comm 2>/dev/null | head -1 || true)
          [ -n "$vt" ] || sleep 0.05 # the thread appears within QEMU's start
        done
        [ -z "$vt" ] || taskset -p -c "$cpu" "$(basename "$(dirname "$vt")")" >/dev/null
      fi
      while [ "$(date +%s)" -lt "$deadline" ]; do
        if grep -q "Run /init" "$log" 2>/dev/null; then kind=init; break; fi
        if ! kill -0 "$q" 2>/dev/null; then
          # -no-reboot: a triple fault (a reset) or a panic ends QEMU.
          kind=triple-fault
          grep -q "Kernel panic" "$log" && kind=crash
          break
        fi
        sleep 1 # polling a log file, bounded by the deadline
      done
      kill "$q" 2>/dev/null || true
      wait "$q" 2>/dev/null || true
      [ "$kind" = init ] && rm -f "$log" "$log.qemu"
    fi
    detail="$kind $(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f')s"
    echo "$kind $detail" >"$out/result.$vmm.$f.$i"
  }
  echo "lab: $(uname -r), kvm_amd npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo ?), $(qemu-system-x86_64 --version | head -1)"
  for f in ${FLAVOURS:-full light}; do
    dir=$root/images/out/$f
    file=bzImage
    [ "${FORMAT:-bzImage}" = pvh ] && file=vmlinux
    for vmm in ${VMMS:-popvmm qemu}; do
      declare -A c=([init]=0 [triple-fault]=0 [crash]=0 [hung]=0 [up-failed]=0)
      [ "$vmm" = cluster ] && trace_on # each failed boot keeps its CPU's buffer
      for i in $(seq "$n"); do
        log=$out/$vmm-$f-$file-$i.log
        if [ "$vmm" = popvmm ]; then
          trace_on
          # One boot per test run, so that a failed boot's trace ends at it.
          set +e
          (cd "$root/vmm" && POPVMM_REQUIRE_KVM=1 POPVMM_BOOT_COUNT=1 POPVMM_BOOT_FLAVOURS=$f \
            POPVMM_BOOT_FORMAT=${FORMAT:-bzImage} POPVMM_BOOT_APPEND="${APPEND:-}" \
            POPVMM_BOOT_TIMEOUT=${TIMEOUT:-240} POPVMM_BOOT_LOGDIR=$out \
            POPVMM_BOOT_POPULATE=${POPULATE:-0} POPVMM_BOOT_HUGEPAGES=${HUGEPAGES:-0} POPVMM_BOOT_CPU=${CPU:-} \
            "$out/vmm.test" -test.run '^TestKVMBootCount$' -test.v -test.count 1 -test.timeout 0) >"$log.test" 2>&1
          set -e
          line=$(grep -o 'boot-count: popvmm [^:]*: [a-z-]* .*' "$log.test" | head -1 || true)
          detail=${line#boot-count: popvmm *: }
          kind=${detail%% *}
          [ -n "$line" ] || { kind=crash detail="crash: the test did not run ($log.test)"; }
          if [ "$kind" != init ]; then
            mv "$out/popvmm-$f-${FORMAT:-bzImage}-1.log" "$log" 2>/dev/null || true
            trace_keep "$log.trace"
          else
            rm -f "$log.test"
          fi
        else
          # cluster and qemu: PARALLEL boots at once (boot_one below),
          # each its own result file; tallied as they finish.
          if [ $(( (i - 1) % par )) -eq 0 ]; then
            boots=()
            for j in $(seq "$i" $(( i + par - 1 < n ? i + par - 1 : n ))); do
              boot_one "$vmm" "$f" "$dir/$file" "$j" &
              boots+=($!)
            done
            wait "${boots[@]}" # these boots only: LOAD's loop runs on
          fi
          read -r kind detail <"$out/result.$vmm.$f.$i"
        fi
        c[$kind]=$(( ${c[$kind]:-0} + 1 ))
        last=""
        [ "$kind" != init ] && [ -f "$log" ] && last=$(tr -d '\r' <"$log" | grep -v '^\s*$' | tail -1)
        tally "$vmm $f $file $i/$n: $detail${last:+; last line: $last}"
      done
      tally "TOTAL $vmm $f $file: $n boots: ${c[init]} init, ${c[triple-fault]} triple fault, ${c[crash]} crash, ${c[hung]} hung${c[up-failed]:+, ${c[up-failed]} up failed}"
      unset c
    done
  done
  exit 0
fi

n=${1:-10}
popvmm=${POPVMM:-bin/popvmm}
out=${OUT:-$(mktemp -d /var/tmp/popvmm-boot-count.XXXXXX)}
mkdir -p "$out"
"$popvmm" lab build --check >/dev/null || { echo "boot-count.sh: no lab image (make lab)" >&2; exit 1; }
for f in ${FLAVOURS:-full light}; do
  [ -f "images/out/$f/bzImage" ] || { echo "boot-count.sh: no images/out/$f (make images)" >&2; exit 1; }
done
if [ -n "${VMMTEST:-}" ]; then cp "$VMMTEST" "$out/vmm.test"; else go test -c -tags bootcount -o "$out/vmm.test" ./vmm; fi
echo "==> $n boots per kernel of ${FLAVOURS:-full light} (${FORMAT:-bzImage}) under ${VMMS:-popvmm qemu}, lab npt=${NPT:-1}; logs in $out"
POPVMM_LAB_APPEND="${POPVMM_LAB_APPEND:-} lab.kvm_amd=npt=${NPT:-1}" \
  "$popvmm" lab run --cpus "${LAB_CPUS:-2}" --share "$out" -- env HOUSEKEEPING="${HOUSEKEEPING:-0}" LOAD="${LOAD:-0}" IRQS="${IRQS:-}" TRACE="${TRACE:-0}" NOHOLD="${NOHOLD:-0}" CPU="${CPU:-}" POPULATE="${POPULATE:-0}" HUGEPAGES="${HUGEPAGES:-0}" FLAVOURS="${FLAVOURS:-full light}" \
  FORMAT="${FORMAT:-bzImage}" APPEND="${APPEND:-}" TIMEOUT="${TIMEOUT:-240}" PARALLEL="${PARALLEL:-1}" PROTECT="${PROTECT:-false}" WINDOW="${WINDOW:-16M}" MEMORY="${MEMORY:-512M}" VMMS="${VMMS:-popvmm qemu}" \
  bench/boot-count.sh --in-lab "$n" "$out"
echo "==> tally (one lab run, npt=${NPT:-1})"
grep '^boot-count: TOTAL' "$out/tally.txt" | sed 's/^boot-count: TOTAL //'
! grep '^boot-count: TOTAL' "$out/tally.txt" | grep -vq " $n init,"
