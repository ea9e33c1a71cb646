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

boot_once() { # flavour → seconds to "Run /init", or "timeout"
  local f=$1 log start line
  log=$(mktemp)
  start=$(date +%s.%N)
  timeout "$limit" qemu-system-x86_64 -M microvm,acpi=off -accel "$accel" \
    -cpu kvm64,-cx16,-xsave,-popcnt -m 256 -smp 1 -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$out/$f/vmlinux" -initrd "$out/$f/initramfs.cpio" -append "$cmdline" </dev/null >"$log" 2>&1 &
  local qpid=$!
  while kill -0 "$qpid" 2>/dev/null; do
    if grep -q "Run /init as init process" "$log"; then
      line=$(date +%s.%N)
      kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null || true
      echo "$line - $start" | bc
      cp "$log" "/tmp/popvmm-boot-$f.log"; rm -f "$log"
      return
    fi
    sleep 0.2
  done
  cp "$log" "/tmp/popvmm-boot-$f.log"; rm -f "$log"
  echo timeout
}

declare -A best size_bz size_vm
for f in light full; do
  for file in vmlinux initramfs.cpio bzImage; do
    [ -f "$out/$f/$file" ] || { echo "missing $out/$f/$file: run make images" >&2; exit 1; }
  done
  size_bz[$f]=$(stat -c %s "$out/$f/bzImage")
  size_vm[$f]=$(stat -c %s "$out/$f/vmlinux")
  best[$f]=
  for i in $(seq "$runs"); do
    t=$(boot_once "$f")
    echo "  $f run $i: $t s"
    [ "$t" = timeout ] && { echo "  $f did not reach Run /init in ${limit}s; console in /tmp/popvmm-boot-$f.log" >&2; exit 1; }
    if [ -z "${best[$f]}" ] || [ "$(echo "$t < ${best[$f]}" | bc)" = 1 ]; then best[$f]=$t; fi
  done
done
printf "\n%-8s %12s %12s %14s\n" flavour bzImage vmlinux "to Run /init"
for f in light full; do
  printf "%-8s %12d %12d %13.2fs\n" "$f" "${size_bz[$f]}" "${size_vm[$f]}" "${best[$f]}"
done
printf "light/full: bzImage %.2f, vmlinux %.2f, boot time %.2f (best of %d, accel=%s)\n" \
  "$(echo "${size_bz[light]} / ${size_bz[full]}" | bc -l)" "$(echo "${size_vm[light]} / ${size_vm[full]}" | bc -l)" \
  "$(echo "${best[light]} / ${best[full]}" | bc -l)" "$runs" "$accel"
