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
  attempt=${KVM_ATTEMPT:-1}
  # The executables run from a local copy: in the lab the work tree is a
  # 9p share, and a binary paged in from it stalls whenever the share does.
  exe=$(mktemp -d "${TMPDIR:-/tmp}/popvmm-kvm.XXXXXX")
  trap 'rm -rf "$exe"' EXIT
  cp "$out"/popvmm "$out"/*.test "$exe"/
  export POPVMM_REQUIRE_KVM=1 POPVMM_BIN="$exe/popvmm"
  if [ "${POPVMM_IN_LAB:-}" = 1 ] && [ "${KVM_HOUSEKEEPING:-1}" = 1 ] && [ "$(nproc --all)" -gt 2 ]; then
    # Housekeeping on lab CPU 0: its device interrupts and every process
    # of the tier (tests, popvmm's supervisors and their device threads,
    # ssh; children inherit the mask) run there, and the tests pin their
    # kernels' vCPUs to the other CPUs (testenv.GuestCPUs), which they
    # have alone, as on an HPC node with isolated cores. With nested
    # paging on, every triple fault of a nested kernel and every lab-host
    # death of a KVM-tier run was on lab CPU 0, in the vCPU thread of the
    # kernel pinned there (docs/kvm-backends.md, issue 20).
    hk=0
    for f in /proc/irq/*/smp_affinity_list; do echo "$hk" >"$f" 2>/dev/null || true; done
    taskset -p -c "$hk" $$ >/dev/null
    echo "==> KVM tier: housekeeping (interrupts, tests, supervisors) on lab CPU $hk"
  fi
  pass=0 fail=0 skip=0 failed=() flaky=()
  for bin in "$out"/*.test; do
    [ -e "$bin" ] || continue
    pkg=$(cat "$bin.pkg")
    if [ -f "$bin.result" ]; then
      # Finished in an earlier lab run (one the lab host died after).
      read -r p f s rc names <"$bin.result"
    else
      # Tests that passed in an earlier lab run before its host died are
      # not run again; the one it died in, and those after, are.
      done=$({ cat "$bin".log.* 2>/dev/null || true; } | sed -n 's/^--- PASS: \([^ ]*\).*/\1/p' | sort -u | paste -sd'|')
      log="$bin.log.$attempt"
      echo "==> $pkg (KVM tier)${done:+; passed before the lab host died, not run again: ${done//|/ }}"
      set +e
      (cd "$pkg" && "$exe/${bin##*/}" -test.run "$run_filter" ${done:+-test.skip "^($done)\$"} -test.v -test.count=1 -test.timeout 30m) 2>&1 | tee "$log"
      rc=${PIPESTATUS[0]}
      set -e
      p=$(( $(grep -c '^--- PASS' "$log" || true) + $(echo "${done:+$done}" | awk -F'|' '{print NF}') ))
      f=$(grep -c '^--- FAIL' "$log" || true); s=$(grep -c '^--- SKIP' "$log" || true)
      names=$(sed -n 's/^--- FAIL: \([^ ]*\).*/\1/p' "$log" | sort -u | paste -sd'|')
      # A real kernel in emulated KVM now and then triple-faults or stalls
      # (docs/lab.md). A failed test runs again, up to KVM_RERUNS (2) more
      # times; one that then passes counts as passed and is named as flaky
      # in the summary, never hidden.
      # A test that failed in an earlier lab run (one whose host then died)
      # and passes now is flaky too.
      earlier=$({ cat "$bin".log.* 2>/dev/null || true; } | sed -n 's/^--- FAIL: \([^ ]*\).*/\1/p' | sort -u)
      flakyhere=$(sed -n 's/^--- PASS: \([^ ]*\).*/\1/p' "$log" | sort -u | grep -xF -f <(echo "$earlier") 2>/dev/null | paste -sd'|' || true)
      failing=$names try=0
      [ "${KVM_RETRY:-1}" = 1 ] || failing=
      while [ "$rc" != 0 ] && [ -n "$failing" ] && [ "$try" -lt "${KVM_RERUNS:-2}" ]; do
        try=$((try + 1))
        echo "==> $pkg: ${failing//|/ } failed; running them again ($try of ${KVM_RERUNS:-2})"
        set +e
        (cd "$pkg" && "$exe/${bin##*/}" -test.run "^($failing)\$" -test.v -test.count=1 -test.timeout 30m) 2>&1 | tee "$bin.retry$try.log"
        rrc=${PIPESTATUS[0]}
        set -e
        passed=$(sed -n 's/^--- PASS: \([^ ]*\).*/\1/p' "$bin.retry$try.log" | sort -u | paste -sd'|')
        if [ -n "$passed" ]; then
          n=$(echo "$passed" | awk -F'|' '{print NF}')
          p=$((p + n)) f=$((f - n))
          flakyhere=${flakyhere:+$flakyhere|}$passed
          failing=$(echo "$failing" | tr '|' '\n' | grep -vxF -f <(echo "$passed" | tr '|' '\n') | paste -sd'|' || true)
        fi
        if [ "$rrc" = 0 ] && [ -z "$failing" ]; then
          rc=0
        fi
      done
      names=$flakyhere
      echo "$p $f $s $rc ${names//|/ }" >"$bin.result"
    fi
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
    [ -z "$names" ] || flaky+=("${names//|/ }")
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
  # The lab host itself can die under the tests (QEMU's SVM emulation
  # delivers an interrupt after #VMEXIT with GIF clear: docs/lab.md). That
  # says nothing about popvmm: the tier resumes in a fresh lab, where the
  # tests that passed are not run again, as long as one of every six lab
  # runs in a row finishes one more test (for KVM_LAB_RUNS boots and
  # KVM_LAB_SECONDS at most, so that CI ends in time); the summary line
  # says how many died.
  runs=0 deaths=0 finished=0 barren=0 tier_start=$SECONDS
  rm -f bin/kvm-lab-console.*.log # this tier's lab consoles only
  while :; do
    runs=$((runs + 1))
    # A watchdog for a lab host that wedges instead of dying (seen: its
    # command and the nested guests frozen, one emulated CPU never leaving
    # a nested guest): when no test log in $out has grown for
    # KVM_LAB_SILENCE minutes (10; a test's own waits give up after at most
    # 6), or for KVM_LAB_STALL_SILENCE minutes (2) after the lab host's
    # console (written as it comes) reported an RCU stall, a soft lockup or
    # a lost CPU (the CPU watchers' NMI line: a lost CPU that deadlocks the
    # other too leaves its watcher no time to end the lab, seen in CI),
    # the lab run is stopped and counts as a death.
    set +e
    console="bin/kvm-lab-console.$runs.log"
    # Four lab CPUs (on this machine's two cores: QEMU's emulated CPUs
    # are threads, idle ones cost nothing): one for housekeeping, and a
    # core each for TestKVMWinnetThree's kernels.
    # Nested paging on, as on every real KVM host (issue 20; KVM_NPT=0
    # turns it off; a value in POPVMM_LAB_APPEND wins).
    KVM_ATTEMPT=$runs POPVMM_LAB_APPEND="lab.kvm_amd=npt=${KVM_NPT:-1} ${POPVMM_LAB_APPEND:-}" "$popvmm" lab run --cpus "${LAB_CPUS:-4}" --memory "${LAB_MEMORY:-4G}" --console-log "$console" -- scripts/test-kvm.sh --run &
    lpid=$! lstart=$SECONDS wedged=
    while kill -0 "$lpid" 2>/dev/null; do
      sleep 15
      silence=${KVM_LAB_SILENCE:-10} why="no test output for ${KVM_LAB_SILENCE:-10} minutes"
      if grep -q -E 'rcu.*(stall|starved)|soft lockup|popvmm-lab: CPU [0-9]+ ran nothing' "$console" 2>/dev/null; then
        silence=${KVM_LAB_STALL_SILENCE:-2} why="the lab host reported a stall, then no test output for ${KVM_LAB_STALL_SILENCE:-2} minutes"
      fi
      if [ $((SECONDS - lstart)) -gt $((silence * 60)) ] && [ -z "$(find "$out" -maxdepth 1 -name '*.log*' -mmin "-$silence" | head -1)" ] && kill -0 "$lpid" 2>/dev/null; then
        echo "==> KVM tier: $why: the lab host is wedged; stopping it"
        # What the emulator's threads do on this machine: all asleep in
        # ppoll/futex with the vCPUs halted says the lab host is idle and
        # its job blocked inside it; a thread in R state or deep in a
        # host file system call says the emulator itself is stuck.
        for q in $(pgrep -P "$lpid" 2>/dev/null); do
          for task in /proc/"$q"/task/*; do
            printf '    qemu thread %s (%s): state %s, wchan %s, cpu time %s ticks\n' "${task##*/}" "$(cat "$task/comm" 2>/dev/null)" \
              "$(awk '{print $3}' "$task/stat" 2>/dev/null)" "$(cat "$task/wchan" 2>/dev/null)" "$(awk '{print $14+$15}' "$task/stat" 2>/dev/null)"
          done
        done
        wedged=1
        kill -TERM "$lpid"
        break
      fi
    done
    wait "$lpid"; rc=$?
    set -e
    [ -z "$wedged" ] || rc=125
    [ "$rc" = 125 ] && [ ! -f "$out/summary" ] || break
    deaths=$((deaths + 1))
    echo "==> KVM tier: the lab host died (lab run $runs); its first fault report (whole console: bin/kvm-lab-console.$runs.log):"
    grep -m1 -A30 -E 'popvmm-lab: fail|BUG:|WARNING:|general protection|Oops|double fault|panic|rcu.*stall|soft lockup' "$console" || true
    now=$({ cat "$out"/*.log.* "$out"/*.result 2>/dev/null || true; } | grep -c -E '^--- (PASS|FAIL)|^[0-9]+ [0-9]+ [0-9]+ ' || true)
    # A lab run that finished no new test counts as barren: a long test
    # can meet the lab's faults twice running (TestKVMPopcornStory, several
    # minutes of two nested kernels; three in a row seen in one CI run), so only KVM_LAB_BARREN (6) barren
    # runs in a row end the tier.
    if [ "$now" -le "$finished" ]; then barren=$((barren + 1)); else barren=0; fi
    if [ "$barren" -ge "${KVM_LAB_BARREN:-6}" ] || [ "$runs" -ge "${KVM_LAB_RUNS:-12}" ] || [ $((SECONDS - tier_start)) -ge "${KVM_LAB_SECONDS:-3000}" ]; then
      echo "==> KVM tier: giving up after $runs lab runs, $deaths of which died (the last ${KVM_LAB_BARREN:-6} finished no new test, or KVM_LAB_RUNS=${KVM_LAB_RUNS:-12} runs or KVM_LAB_SECONDS=${KVM_LAB_SECONDS:-3000} s reached)"
      break
    fi
    finished=$now
    echo "==> KVM tier: resuming in a fresh lab (progress so far: $finished test results and finished packages)"
  done
  # Of those deaths, the ones the lab's CPU watchers caused: a lab CPU
  # that ran nothing for 20 s (docs/lab.md).
  stuck=$( { grep -l 'popvmm-lab: fail CPU' bin/kvm-lab-console.*.log 2>/dev/null || true; } | wc -l)
  [ "$deaths" = 0 ] || relab="; the lab host died $deaths time(s) under the tests (QEMU TCG's faults, docs/lab.md$([ "$stuck" = 0 ] || echo ": $stuck of them a lab CPU that stopped running tasks, ended by the lab's CPU watcher")) and the tier resumed in a fresh lab"
fi
if [ -f "$out/summary" ]; then
  read -r pass fail skip failed < "$out/summary" || true
  flaky=$(cat "$out/flaky" 2>/dev/null || true)
  echo "==> KVM tiers: $pass passed, $fail failed, $skip skipped, $where${failed:+; failing: $failed}${flaky:+; passed only on a second run (flaky): $flaky}${relab:-}"
else
  echo "==> KVM tiers: did not run $where (exit status $rc)${relab:-}"
fi
exit "$rc"
