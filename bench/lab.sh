#!/usr/bin/env bash
# lab.sh — benchmark `popvmm lab run -- true` end to end, N times (default
# 5), and print where each run spent its time, from popvmm's own split
# ("lab: ready in ...") plus the wall time measured here. Not a timed test:
# numbers depend on the machine and its load (the load average is printed).
#
#   bench/lab.sh [N]            uses bin/popvmm (make build, make lab)
#   POPVMM=path bench/lab.sh    another binary
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
popvmm=${POPVMM:-bin/popvmm}
"$popvmm" lab build --check || { echo "lab.sh: no lab image (make lab)" >&2; exit 1; }
echo "==> popvmm lab run -- true, $n runs; load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
printf '%-4s %8s %8s %8s %8s %8s %8s %8s %8s\n' run qemu kernel modules mounts command poweroff cpu wall
walls=()
for i in $(seq "$n"); do
  t0=$(date +%s.%N)
  line=$("$popvmm" lab run --timing -- true 2>&1 >/dev/null | grep '^lab: timing' || true)
  t1=$(date +%s.%N)
  wall=$(echo "$t1 - $t0" | bc)
  walls+=("$wall")
  # lab: timing qemu=0.1 kernel=5.2 modules=1.9 mounts=0.6 command=0.3 poweroff=0.2 cpu=6.5
  eval "$(echo "${line#lab: timing }" | tr ' ' '\n' | sed 's/^/t_/')"
  printf '%-4s %8s %8s %8s %8s %8s %8s %8s %8.1f\n' "$i" "$t_qemu" "$t_kernel" "$t_modules" "$t_mounts" "$t_command" "$t_poweroff" "$t_cpu" "$wall"
done
sorted=$(printf '%s\n' "${walls[@]}" | sort -n)
echo "==> wall: min $(echo "$sorted" | head -1 | xargs printf '%.1f') s, median $(echo "$sorted" | sed -n "$(( (n + 1) / 2 ))p" | xargs printf '%.1f') s, max $(echo "$sorted" | tail -1 | xargs printf '%.1f') s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
