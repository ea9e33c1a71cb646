// Package testenv decides whether a test that needs /dev/kvm, root or a
// fetched or built artefact may run here. Such tests skip with the reason on
// a machine that lacks them, and fail instead when POPVMM_REQUIRE_KVM=1 (as
// in CI), so a missing prerequisite can never turn a red run green by
// skipping.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/kvmhost"
)

// RequireEnv is the variable that turns skips into failures.
const RequireEnv = "POPVMM_REQUIRE_KVM"

// RequireImagesEnv turns skips of tests that need built guest images
// (`make images`, minutes) into failures. CI does not build images yet, so
// it is separate from RequireEnv.
const RequireImagesEnv = "POPVMM_REQUIRE_IMAGES"

// KVMDevice is the KVM device node.
const KVMDevice = "/dev/kvm"

// Verdict is what a capability check decided.
type Verdict int

// Verdicts.
const (
	Run Verdict = iota
	Skip
	Fail
)

// Decide is the pure rule: with no problem the test runs; with one it is
// skipped, unless required, when it fails.
func Decide(problem error, required bool) Verdict {
	switch {
	case problem == nil:
		return Run
	case required:
		return Fail
	}
	return Skip
}

func apply(t testing.TB, problem error) { applyEnv(t, RequireEnv, problem) }

func applyEnv(t testing.TB, env string, problem error) {
	t.Helper()
	switch Decide(problem, os.Getenv(env) == "1") {
	case Skip:
		t.Skipf("skipped: %v (set %s=1 to make this a failure)", problem, env)
	case Fail:
		t.Fatalf("%v, and %s=1 requires it", problem, env)
	}
}

// RequireImages skips or fails t (per RequireImagesEnv) when problem, a
// missing built image or tool, is not nil.
func RequireImages(t testing.TB, problem error) {
	t.Helper()
	applyEnv(t, RequireImagesEnv, problem)
}

// KVMProblem says why KVM cannot run the KVM tiers here, or nil: /dev/kvm
// must open and be served by a backend whose guests run user processes
// (not kvm_pvm), since tier 3 boots real kernels with their init.
func KVMProblem() error {
	s := kvmhost.Probe(kvmhost.SysHost{})
	if !s.Full() {
		return fmt.Errorf("%s unusable for the KVM tiers: %w", KVMDevice, s.Problem)
	}
	return nil
}

// RootProblem says why this process lacks root, or nil.
func RootProblem() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (running as uid %d)", os.Geteuid())
	}
	return nil
}

// Require skips or fails t when problem is not nil: the general form of
// RequireKVM for any other prerequisite (fetched packages, built images).
func Require(t testing.TB, problem error) {
	t.Helper()
	apply(t, problem)
}

// LabPassEnv, set to 1 by scripts/test-kvm.sh's callers (make test), says
// a later pass runs the KVM-tier tests where /dev/kvm works or in the lab:
// here they skip saying so, whatever RequireEnv says.
const LabPassEnv = "POPVMM_KVM_LATER"

// RequireKVM skips or fails t unless /dev/kvm can be opened. Every KVM-tier
// test (tiers 2 and 3) calls it first, and its name contains "KVM": that is
// how scripts/test-kvm.sh finds it and runs it directly or in the lab, so a
// name without it fails here rather than never running.
func RequireKVM(t testing.TB) {
	t.Helper()
	if !strings.Contains(t.Name(), "KVM") {
		t.Fatalf("%s calls RequireKVM but its name lacks \"KVM\": the KVM-tier pass (scripts/test-kvm.sh) would never run it", t.Name())
	}
	problem := KVMProblem()
	if problem != nil && os.Getenv(LabPassEnv) == "1" {
		t.Skipf("skipped here (%v): runs in the KVM-tier pass of make test", problem)
	}
	apply(t, problem)
}

// RequireRoot skips or fails t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	apply(t, RootProblem())
}

// BinEnv names the popvmm binary the end-to-end tests run
// (scripts/test-kvm.sh sets it to its own copy); unset, it is root/bin/popvmm.
const BinEnv = "POPVMM_BIN"

// PopvmmBin is the popvmm binary for end-to-end tests run from a package
// whose repository root is root.
func PopvmmBin(root string) string {
	if b := os.Getenv(BinEnv); b != "" {
		return b
	}
	return filepath.Join(root, "bin", "popvmm")
}

// GuestCPUs is the host cores for KVM tests' vCPUs: the online cores this
// process may not run on, when there are any (the KVM tier in the lab
// keeps its housekeeping, tests and supervisors included, on CPU 0, and
// leaves the others to the vCPUs alone: scripts/test-kvm.sh), else the
// cores it may run on. Ascending.
func GuestCPUs() ([]int, error) {
	all, err := cluster.SysHost{}.OnlineCPUs()
	if err != nil {
		return nil, fmt.Errorf("online CPUs: %w", err)
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var own, others []int
	for _, c := range all {
		if set.IsSet(c) {
			own = append(own, c)
		} else {
			others = append(others, c)
		}
	}
	if len(others) > 0 {
		return others, nil
	}
	return own, nil
}
