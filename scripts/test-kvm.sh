#!/usr/bin/env bash
# test-kvm.sh — the KVM-tier pass of `make test`: every test whose name
# contains KVM, in every package whose tests call testenv.RequireKVM, built
# here (go test -c) and run directly where /dev/kvm works, in the lab
# (popvmm lab run) elsewhere, with POPVMM_REQUIRE_KVM=1 so none can skip.
# Ends with one summary line saying where the tests ran.
#
#   scripts/test-kvm.sh            build, then run (directly or in the lab)
#   scripts/test-kvm.sh --run      run what is built, here (the lab calls this)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# Each run builds into a directory of its own with its own copy of
# bin/popvmm (POPVMM_BIN, which the tier-3 tests run): a rebuild of
# bin/popvmm or a second run meanwhile cannot change what this run executes.
out=${KVM_OUT:-}
run_filter=${KVM_RUN:-KVM}

if [ "${1:-}" = --run ]; then
  [ -n "$out" ] || { echo "test-kvm.sh --run: KVM_OUT not set" >&2; exit 2; }
  # The executables run from a local copy: in the lab the work tree is a
  # 9p share, and a binary paged in from it stalls whenever the share does.
  exe=$(mktemp -d "${TMPDIR:-/tmp}/popvmm-kvm.XXXXXX")
  trap 'rm -rf "$exe"' EXIT
  cp "$out"/popvmm "$out"/*.test "$exe"/
  export POPVMM_REQUIRE_KVM=1 POPVMM_BIN="$exe/popvmm"
  pass=0 fail=0 skip=0 failed=() flaky=()
  for bin in "$out"/*.test; do
    [ -e "$bin" ] || continue
    pkg=$(cat "$bin.pkg")
    echo "==> $pkg (KVM tier)"
    set +e
    (cd "$pkg" && "$exe/${bin##*/}" -test.run "$run_filter" -test.v -test.count=1 -test.timeout 30m) 2>&1 | tee "$bin.log"
    rc=${PIPESTATUS[0]}
    set -e
    p=$(grep -c '^--- PASS' "$bin.log" || true); f=$(grep -c '^--- FAIL' "$bin.log" || true); s=$(grep -c '^--- SKIP' "$bin.log" || true)
    names=$(sed -n 's/^--- FAIL: \([^ ]*\).*/\1/p' "$bin.log" | sort -u | paste -sd'|')
    if [ "$rc" != 0 ] && [ -n "$names" ] && [ "${KVM_RETRY:-1}" = 1 ]; then
      # A real kernel in emulated KVM now and then dies early in boot
      # (seen: a triple fault, a stall, in one run of several identical
      # ones). A failed test runs once more; one that then passes counts
      # as passed and is named as flaky in the summary, never hidden.
      echo "==> $pkg: $names failed; running them once more"
      set +e
      (cd "$pkg" && "$exe/${bin##*/}" -test.run "^($names)\$" -test.v -test.count=1 -test.timeout 30m) 2>&1 | tee "$bin.retry.log"
      rrc=${PIPESTATUS[0]}
      set -e
      if [ "$rrc" = 0 ]; then
        flaky+=("${names//|/ }")
        p=$((p + f)) f=0 rc=0
      fi
    fi
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
    if [ "$rc" != 0 ]; then
      failed+=("$pkg")
      [ "$f" != 0 ] || fail=$((fail + 1)) # a crash or timeout outside any test
    fi
  done
  echo "$pass $fail $skip ${failed[*]:-}" > "$out/summary"
  echo "${flaky[*]:-}" > "$out/flaky"
  [ ${#failed[@]} = 0 ]
  exit
fi

echo "==> KVM tier: tier-2 freestanding guests (tests/guests/build.sh)"
tests/guests/build.sh
mkdir -p bin
out=$(mktemp -d bin/kvmtests.XXXXXX)
export KVM_OUT=$out
trap 'rm -rf "$out"' EXIT
cp "${POPVMM:-bin/popvmm}" "$out/popvmm"
pkgs=$(grep -rl --include='*_test.go' 'testenv.RequireKVM(' . | grep -v '^./internal/testenv/' | xargs -r -n1 dirname | sort -u)
echo "==> KVM tier: building test binaries for $(echo $pkgs | wc -w) packages"
for p in $pkgs; do
  p=${p#./}
  name=$(echo "$p" | tr / _)
  go test -c -o "$out/$name.test" "./$p"
  echo "$p" > "$out/$name.test.pkg"
done

popvmm=$out/popvmm
if "$popvmm" check-kvm --quiet; then
  where="directly on this machine's /dev/kvm ($("$popvmm" check-kvm))"
  set +e; scripts/test-kvm.sh --run; rc=$?; set -e
else
  where="in the lab (kvm_amd under QEMU TCG; here: $("$popvmm" check-kvm | head -1 || true))"
  lab() { # $1: which lab run; its host's whole console is kept in bin/
    set +e; "$popvmm" lab run --cpus "${LAB_CPUS:-2}" --memory "${LAB_MEMORY:-4G}" --console-log "bin/kvm-lab-console.$1.log" -- scripts/test-kvm.sh --run; rc=$?; set -e
    if [ "$rc" = 125 ] && [ ! -f "$out/summary" ]; then
      # The first report of a lab kernel fault, not just the panic's tail.
      echo "==> KVM tier: the lab host died; its first fault report (whole console: bin/kvm-lab-console.$1.log):"
      grep -m1 -A40 -E 'BUG:|WARNING:|general protection|Oops|double fault|panic' "bin/kvm-lab-console.$1.log" || true
    fi
  }
  lab 1
  if [ "$rc" = 125 ] && [ ! -f "$out/summary" ] && [ "${KVM_RETRY:-1}" = 1 ]; then
    # The lab host itself died under the tests (its kernel, emulated,
    # running nested guests, has been seen to panic in its #GP handler):
    # that says nothing about popvmm, so the tier runs once more in a
    # fresh lab, and the summary line says so.
    echo "==> KVM tier: the lab host died under the tests (its console is above); running the tier again in a fresh lab"
    relab="; the lab host died once and the tier ran again"
    lab 2
  fi
fi
if [ -f "$out/summary" ]; then
  read -r pass fail skip failed < "$out/summary" || true
  flaky=$(cat "$out/flaky" 2>/dev/null || true)
  echo "==> KVM tiers: $pass passed, $fail failed, $skip skipped, $where${failed:+; failing: $failed}${flaky:+; passed only on a second run (flaky): $flaky}${relab:-}"
else
  echo "==> KVM tiers: did not run $where (exit status $rc)${relab:-}"
fi
exit "$rc"
