#!/usr/bin/env bash
# window-doorbell.sh — doorbell round trip guest↔guest: popvmm's window
# device (ioeventfd → eventfd → irqfd, MSI-X) against QEMU's
# ivshmem-doorbell (two QEMU processes on one ivshmem server; Debian ships
# no ivshmem-server, so the server is popvmm's, which speaks QEMU's
# protocol). Both run the same freestanding guest (tests/guests/window.c):
# peer 0 writes a sequence number into its section and rings peer 1, which
# echoes it and rings back; ROUNDS round trips, timed from the guests'
# console lines. Both are measured in one run on the same KVM: directly
# where /dev/kvm runs guests, else in the lab (KVM inside an emulator: the
# ratio means something, the absolute numbers do not).
#   ROUNDS=20000 bench/window-doorbell.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
rounds=${ROUNDS:-20000}
out=bin/bench-window

if [ "${1:-}" = --run ]; then
  echo "==> popvmm: window device, $rounds round trips"
  (cd supervisor && POPVMM_REQUIRE_KVM=1 POPVMM_WINDOW_ROUNDS=$rounds "$top/$out/supervisor.test" \
    -test.run '^TestKVMWindowDoorbells$' -test.v -test.count=1 -test.timeout 30m) 2>&1 | grep -E 'round trip|exits|_test.go|PASS|FAIL|ok' || true
  echo "==> QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'): ivshmem-doorbell, $rounds round trips"
  (cd bench/qemu-window && POPVMM_BENCH_QEMU=1 POPVMM_WINDOW_ROUNDS=$rounds QEMU_ACCEL=kvm "$top/$out/qemuwindow.test" \
    -test.run '^TestQEMUWindowDoorbells$' -test.v -test.count=1 -test.timeout 30m) 2>&1 | grep -E 'round trip|interrupts|lost|_test.go|PASS|FAIL|ok' || true
  exit
fi

mkdir -p "$out"
sh tests/guests/build.sh
sh bench/qemu-window/build.sh
go test -c -o "$out/supervisor.test" ./supervisor
go test -c -o "$out/qemuwindow.test" ./bench/qemu-window
popvmm=bin/popvmm
[ -x "$popvmm" ] || go build -o "$popvmm" ./cmd/popvmm
if "$popvmm" check-kvm --quiet; then
  echo "doorbell benchmark: directly on this machine's /dev/kvm"
  ROUNDS=$rounds bench/window-doorbell.sh --run
else
  echo "doorbell benchmark: in the lab (KVM under QEMU TCG), both VMMs in the same run"
  "$popvmm" lab run --cpus "${LAB_CPUS:-2}" --memory "${LAB_MEMORY:-4G}" -- env ROUNDS="$rounds" bench/window-doorbell.sh --run
fi
