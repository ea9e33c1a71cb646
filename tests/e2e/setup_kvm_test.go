package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/syncbuf"
	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/tests/readme"
)

// setUpDeadline bounds the README's up command from its start to the
// cluster being up: its build steps find everything built already (make
// test-kvm built bin/, the images are required), then the primary boots.
const setUpDeadline = 15 * time.Minute

// TestKVMSetUpUp runs the README's command that brings the example cluster
// up (readme.SetUp: make up) as written, from the top of the repository,
// with its standard input closed, as a CI job or `nohup` would: it says
// what it does as it goes, examples/cluster.toml comes up in the
// foreground, the primary's agent answers over the window, and `popvmm
// down` ends the command with status 0.
func TestKVMSetUpUp(tt *testing.T) {
	testenv.RequireKVM(tt)
	root, _ := filepath.Abs(repoRoot)
	up, _, err := readme.SetUp(filepath.Join(root, "README.md"))
	if err != nil {
		tt.Fatal(err)
	}
	for _, f := range []string{"full/bzImage", "full/initramfs.cpio", "light/bzImage", "light/initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(root, "images/out", f)); err != nil {
			testenv.RequireImages(tt, fmt.Errorf("images not built (make images): %w", err))
		}
	}
	runRoot := tt.TempDir()
	tt.Setenv("POPVMM_RUN_ROOT", runRoot) // the up command's popvmm and the test's
	c := &kvmCluster{t: &failT{T: tt}, bin: testenv.PopvmmBin(root), config: filepath.Join(root, "examples/cluster.toml"),
		runDir: filepath.Join(runRoot, "demo"), kernels: []string{"primary", "secondary"}}
	t := c.t

	cmd := exec.Command("sh", "-c", "exec "+up+" <&-")
	cmd.Dir = root
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out syncbuf.Buffer
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	isUp := make(chan struct{})
	go func() {
		var once sync.Once
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(&out, sc.Text())
			if strings.Contains(sc.Text(), "cluster demo is up") {
				once.Do(func() { close(isUp) })
			}
		}
	}()
	var waitErr error // set before exited is closed
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	tt.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // a no-op once it has exited
		if t.Failed() {
			c.dumpConsoles()
			t.Logf("==== %s (stdin closed) said:\n%s", up, out.String())
		}
		c.teardown()
		select {
		case <-exited:
		case <-time.After(teardownWait):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("%s failed; its first failure: %s", tt.Name(), t.first())
			t.Logf("reproduce: make build && KVM_RUN='^%s$' scripts/test-kvm.sh", tt.Name())
		}
	})

	start := time.Now()
	select {
	case <-isUp:
	case <-exited:
		t.Fatalf("%s ended before the cluster was up: %v", up, waitErr)
	case <-time.After(setUpDeadline):
		t.Fatalf("%s: the cluster not up within %s", up, setUpDeadline)
	}
	t.Logf("%s: cluster up %.1f s after it started", up, time.Since(start).Seconds())
	if !strings.Contains(out.String(), "==> ") {
		t.Errorf("%s said nothing of what it did before the cluster was up:\n%s", up, out.String())
	}
	c.retry(agentDeadline, "msg", "ping", "-c", "demo", "primary")
	pid := c.status().PID
	c.down(pid)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("%s after popvmm down: %v, want exit status 0", up, waitErr)
		}
	case <-time.After(teardownWait):
		t.Fatalf("%s still running %s after popvmm down", up, teardownWait)
	}
}
