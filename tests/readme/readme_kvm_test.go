package readme_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/tests/readme"
)

// repoRoot is the repository's top, where the README's commands run.
const repoRoot = "../.."

// TestKVMReadme runs README.md's walk-through blocks (those marked with
// readme.KVMMarker) line by line, exactly as written, with sh from the top
// of the repository, as a new user would after `make install` and `make
// images`: popvmm from bin/ (make test-kvm builds it) first on PATH, a run
// root of the test's own. Every line must succeed; the cluster is brought
// down whatever happens, and on failure the kernels' console logs are
// printed. It needs /dev/kvm (scripts/test-kvm.sh runs it in the lab
// elsewhere) and the built images.
func TestKVMReadme(t *testing.T) {
	testenv.RequireKVM(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Dir(testenv.PopvmmBin(root))
	if _, err := os.Stat(filepath.Join(bin, "popvmm")); err != nil {
		testenv.Require(t, fmt.Errorf("bin/popvmm not built (make build): %w", err))
	}
	for _, f := range []string{"full", "light"} {
		if _, err := os.Stat(filepath.Join(root, "images/out", f, "bzImage")); err != nil {
			testenv.RequireImages(t, fmt.Errorf("%s kernel not built (make images): %w", f, err))
		}
	}
	blocks, err := readme.Blocks(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	runRoot := t.TempDir()
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "POPVMM_RUN_ROOT="+runRoot)
	sh := func(line string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		cmd.Dir, cmd.Env = root, env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(runRoot, "*", "*.log"))
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				t.Logf("==== %s:\n%s", l, data)
			}
			t.Logf("reproduce: scripts/test-kvm.sh with KVM_RUN=TestKVMReadme")
		}
		sh("popvmm down -c demo >/dev/null 2>&1")
	})
	ran := 0
	for _, b := range blocks {
		if !b.Run {
			continue
		}
		for _, line := range b.Commands {
			start := time.Now()
			out, err := sh(line)
			t.Logf("$ %s  (%v)\n%s", line, time.Since(start).Round(time.Millisecond), out)
			if err != nil {
				t.Fatalf("README.md:%d block: %q failed: %v\n%s", b.Line, line, err, out)
			}
			ran++
		}
	}
	if ran == 0 {
		t.Fatalf("README.md has no block marked %q", readme.KVMMarker)
	}
	// The walk-through ends with down: the cluster is gone.
	if out, err := sh("popvmm status -c demo"); err == nil {
		t.Errorf("popvmm status -c demo after the walk-through's down succeeded:\n%s", out)
	}
}
