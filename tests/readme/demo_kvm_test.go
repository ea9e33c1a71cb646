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
)

// TestKVMDemo runs `make demo`'s story (scripts/demo.sh --here, the script
// on this machine's /dev/kvm, which the KVM tier has) as the README offers
// it: two kernels, the window's ping, info and tty, a host peer joining
// the window's socket, a crash, a rejoin, down. The script stops at its
// first failing step; its narration is the log.
func TestKVMDemo(t *testing.T) {
	testenv.RequireKVM(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"bin/popvmm", "bin/popagent", "images/out/full/bzImage", "images/out/light/bzImage"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			testenv.RequireImages(t, fmt.Errorf("%s not built (make build images): %w", f, err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "scripts/demo.sh", "--here")
	cmd.Dir = root
	// The kernels on the cores kept for guests (off the KVM tier's
	// housekeeping CPU in the lab).
	cpus, err := testenv.GuestCPUs()
	if err != nil {
		t.Fatal(err)
	}
	demoCPUs := fmt.Sprint(cpus[0])
	if len(cpus) > 1 {
		demoCPUs += " " + fmt.Sprint(cpus[1])
	}
	cmd.Env = append(os.Environ(), "POPVMM_RUN_ROOT="+t.TempDir(), "DEMO_CPUS="+demoCPUs)
	out, err := cmd.CombinedOutput()
	t.Logf("scripts/demo.sh --here:\n%s", out)
	if err != nil {
		t.Fatalf("make demo's script failed: %v (reproduce: make build && KVM_RUN='^TestKVMDemo$' scripts/test-kvm.sh)", err)
	}
}
