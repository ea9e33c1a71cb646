#!/usr/bin/env bash
# boot-qemu.sh — boot each flavour's kernel (PVH entry, ELF vmlinux) with its
# initramfs under QEMU's microvm, the reference VMM, and time it from QEMU's
# start to the console line "Run /init as init process". Prints sizes, times
# and the light/full ratios, measured in the same run. Uses KVM when
# /dev/kvm works, else TCG (said in the output).
#   RUNS=3 bench/boot-qemu.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/images/out"
runs=${RUNS:-3}
limit=${LIMIT:-600}

accel=tcg
if [ -c /dev/kvm ] && exec 3<>/dev/kvm 2>/dev/null; then accel=kvm; exec 3>&-; fi
cmdline="console=ttyS0 panic=-1 noxsave nosmap clearcpuid=cx16,smap,umip,popcnt"
echo "boot benchmark: QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') microvm, accel=$accel, $runs run(s) per flavour"

# boot_once FLAVOUR → "WALL GUEST": seconds from QEMU's start to the
# console line "Run /init as init process" as the host saw it, and the
# kernel's own printk time on that line; "timeout" if it never came.
boot_once() {
  local f=$1 log start line end
  log="/tmp/popvmm-boot-$f.log"
  : >"$log"
  start=$(date +%s.%N)
  coproc Q { exec timeout "$limit" qemu-system-x86_64 -M microvm,acpi=off -accel "$accel" \
    -cpu kvm64,-cx16,-xsave,-popcnt -m 256 -smp 1 -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$out/$f/vmlinux" -initrd "$out/$f/initramfs.cpio" -append "$cmdline" </dev/null 2>&1; }
  local qpid=$Q_PID result=timeout
  while IFS= read -r line <&"${Q[0]}"; do
    echo "$line" >>"$log"
    if [[ $line == *"Run /init as init process"* ]]; then
      end=$(date +%s.%N)
      result="$(echo "$end - $start" | bc) $(sed 's/^\[ *\([0-9.]*\)\].*/\1/' <<<"$line")"
      break
    fi
  done
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  echo "$result"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A wall guest size_bz size_vm
for f in light full; do
  for file in vmlinux initramfs.cpio bzImage; do
    [ -f "$out/$f/$file" ] || { echo "missing $out/$f/$file: run make images" >&2; exit 1; }
  done
  size_bz[$f]=$(stat -c %s "$out/$f/bzImage")
  size_vm[$f]=$(stat -c %s "$out/$f/vmlinux")
  walls=() guests=()
  for i in $(seq "$runs"); do
    r=$(boot_once "$f")
    [ "$r" = timeout ] && { echo "  $f did not reach Run /init in ${limit}s; console in /tmp/popvmm-boot-$f.log" >&2; exit 1; }
    read -r w g <<<"$r"
    echo "  $f run $i: ${w}s wall, ${g}s kernel time"
    walls+=("$w") guests+=("$g")
  done
  wall[$f]=$(printf '%s\n' "${walls[@]}" | median)
  guest[$f]=$(printf '%s\n' "${guests[@]}" | median)
done
printf "\n%-8s %12s %12s %16s %18s\n" flavour bzImage vmlinux "Run /init, wall" "Run /init, kernel"
for f in light full; do
  printf "%-8s %12d %12d %15.3fs %17.3fs\n" "$f" "${size_bz[$f]}" "${size_vm[$f]}" "${wall[$f]}" "${guest[$f]}"
done
printf "light/full: bzImage %.2f, vmlinux %.2f, wall time to Run /init %.2f, kernel time %.2f (medians of %d, accel=%s)\n" \
  "$(echo "${size_bz[light]} / ${size_bz[full]}" | bc -l)" "$(echo "${size_vm[light]} / ${size_vm[full]}" | bc -l)" \
  "$(echo "${wall[light]} / ${wall[full]}" | bc -l)" "$(echo "${guest[light]} / ${guest[full]}" | bc -l)" "$runs" "$accel"
