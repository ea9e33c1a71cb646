// Package testenv decides whether a test that needs /dev/kvm, root or a
// fetched or built artefact may run here. Such tests skip with the reason on
// a machine that lacks them, and fail instead when POPVMM_REQUIRE_KVM=1 (as
// in CI), so a missing prerequisite can never turn a red run green by
// skipping.
package testenv

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
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

// KVMProblem says why KVM cannot be used here, or nil.
func KVMProblem() error {
	fd, err := unix.Open(KVMDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", KVMDevice, err)
	}
	unix.Close(fd)
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

// RequireKVM skips or fails t unless /dev/kvm can be opened.
func RequireKVM(t testing.TB) {
	t.Helper()
	apply(t, KVMProblem())
}

// RequireRoot skips or fails t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	apply(t, RootProblem())
}
