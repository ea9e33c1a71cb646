package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
)

// kvmCluster is a popvmm cluster brought up by a KVM-tier test with the
// real binary (bin/popvmm, built by make), in a run directory of the
// test's own. On failure it prints every kernel's console log and the
// command that reproduces the test.
type kvmCluster struct {
	t       *failT
	bin     string
	config  string
	runDir  string
	kernels []string
}

// kvmKernel is one [[kernel]] of a test cluster.
type kvmKernel struct {
	Name, Flavour, CPUs, Memory, Boot string
}

// guestCore is the host core a test's kernel runs on for its logical core
// ("0", "1", "2"): the logical-th of testenv.GuestCPUs, so that in the KVM
// tier's lab the kernels keep off the housekeeping CPU
// (scripts/test-kvm.sh), and elsewhere the core itself.
func guestCore(t testing.TB, logical string) string {
	t.Helper()
	n, err := strconv.Atoi(logical)
	if err != nil {
		t.Fatalf("test kernel core %q: want one core's number", logical)
	}
	cpus, err := testenv.GuestCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if n >= len(cpus) {
		testenv.Require(t, fmt.Errorf("the test needs %d cores for its kernels, this machine gives them %d (%v)", n+1, len(cpus), cpus))
	}
	return strconv.Itoa(cpus[n])
}

// repoRoot is where bin/popvmm and images/out are, from this package.
const repoRoot = "../.."

// newKVMCluster writes a cluster.toml for kernels and checks the binary and
// the images are there. Nothing runs until up.
func newKVMCluster(t *testing.T, name string, kernels ...kvmKernel) *kvmCluster {
	t.Helper()
	return newKVMClusterExtra(t, name, nil, kernels...)
}

// newKVMClusterExtra is newKVMCluster with extra TOML appended to some
// kernels' tables, by kernel name (more keys, then sub-tables such as
// [[kernel.disk]]).
func newKVMClusterExtra(t *testing.T, name string, extra map[string]string, kernels ...kvmKernel) *kvmCluster {
	t.Helper()
	testenv.RequireKVM(t)
	root, _ := filepath.Abs(repoRoot)
	c := &kvmCluster{t: &failT{T: t}, bin: testenv.PopvmmBin(root)}
	var problem error
	if _, err := os.Stat(c.bin); err != nil {
		problem = fmt.Errorf("bin/popvmm not built (make build): %w", err)
	}
	dir := t.TempDir()
	c.runDir = filepath.Join(dir, "run")
	c.config = filepath.Join(dir, "cluster.toml")
	var b strings.Builder
	fmt.Fprintf(&b, "[cluster]\nname = %q\nrun_dir = %q\n[cluster.network]\nsubnet = \"10.197.%d.0/24\"\n[cluster.window]\nsize = \"1M\"\n",
		name, c.runDir, 100+len(name))
	for _, k := range kernels {
		img := filepath.Join(root, "images", "out", k.Flavour)
		for _, f := range []string{"bzImage", "initramfs.cpio"} {
			if _, err := os.Stat(filepath.Join(img, f)); err != nil && problem == nil {
				problem = fmt.Errorf("%s image not built (make images): %w", k.Flavour, err)
			}
		}
		fmt.Fprintf(&b, "[[kernel]]\nname = %q\nflavour = %q\ncpus = %q\nmemory = %q\nboot = %q\nkernel = %q\ninitrd = %q\n",
			k.Name, k.Flavour, guestCore(t, k.CPUs), k.Memory, k.Boot, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"))
		b.WriteString(extra[k.Name])
		c.kernels = append(c.kernels, k.Name)
	}
	testenv.RequireImages(t, problem)
	if err := os.WriteFile(c.config, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		failed := t.Failed()
		if failed {
			c.dumpConsoles()
		}
		c.teardown()
		if !failed && t.Failed() {
			c.dumpConsoles() // the teardown's own failure
		}
		if t.Failed() {
			// Last, so that the tail of a long log (all CI may show) says it.
			t.Logf("%s failed; its first failure: %s", t.Name(), c.t.first())
			t.Logf("reproduce: make build && KVM_RUN='^%s$' scripts/test-kvm.sh (directly on KVM, in the lab elsewhere)", t.Name())
		}
	})
	return c
}

// failT is a test's *testing.T that remembers the first failure reported
// through it, for the summary its cluster's cleanup prints last.
type failT struct {
	*testing.T
	mu  sync.Mutex
	msg string
}

func (f *failT) note(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msg == "" {
		f.msg = s
	}
}

func (f *failT) first() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msg == "" {
		return "(not reported through the cluster's test: see above)"
	}
	return f.msg
}

func (f *failT) Errorf(format string, args ...any) {
	f.T.Helper()
	f.note(fmt.Sprintf(format, args...))
	f.T.Errorf(format, args...)
}

func (f *failT) Fatalf(format string, args ...any) {
	f.T.Helper()
	f.note(fmt.Sprintf(format, args...))
	f.T.Fatalf(format, args...)
}

func (f *failT) Error(args ...any) {
	f.T.Helper()
	f.note(fmt.Sprint(args...))
	f.T.Error(args...)
}

func (f *failT) Fatal(args ...any) {
	f.T.Helper()
	f.note(fmt.Sprint(args...))
	f.T.Fatal(args...)
}

// teardownWait bounds how long a supervisor may take to exit after
// `down` before a test's cleanup takes it for wedged.
const teardownWait = 30 * time.Second

// teardown brings the cluster down, if a supervisor still holds its run
// directory, and makes sure that supervisor has exited, so that nothing
// of a failed test (its taps, its bridge) is in the way of the next one.
// A supervisor that outlives `down` fails the test: its goroutines are
// dumped into its log (SIGQUIT), the log's tail printed, and it is killed.
func (c *kvmCluster) teardown() {
	pid := supervisor.ReadPID(c.runDir)
	if pid == 0 {
		return
	}
	out, derr := c.popvmm("down", "-c", c.config)
	if waitGone(pid, teardownWait) == nil {
		return
	}
	c.t.Errorf("supervisor pid %d still alive %s after down (%v: %s); its goroutines follow, then it is killed",
		pid, teardownWait, derr, strings.TrimSpace(out))
	threads := taskStates(pid)         // before SIGQUIT: where each thread is stuck
	syscall.Kill(pid, syscall.SIGQUIT) // the Go runtime dumps every goroutine to stderr: the supervisor log
	if waitGone(pid, 10*time.Second) != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		if waitGone(pid, time.Minute) != nil {
			c.t.Errorf("supervisor pid %d survives SIGKILL by a minute: a thread stuck in the host's kernel; its taps stay:\n%s", pid, taskStates(pid))
		}
	}
	data, _ := os.ReadFile(filepath.Join(c.runDir, supervisor.LogName))
	c.t.Logf("==== supervisor threads before SIGQUIT:\n%s", threads)
	c.t.Logf("==== supervisor log after SIGQUIT:\n%s", data[max(0, len(data)-64<<10):])
}

// taskStates describes each thread of process pid: its name, its state
// and wait channel, and its kernel stack where the host shows it.
func taskStates(pid int) string {
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	var b strings.Builder
	for _, d := range dirs {
		comm, _ := os.ReadFile(filepath.Join(d, "comm"))
		stat, _ := os.ReadFile(filepath.Join(d, "stat"))
		wchan, _ := os.ReadFile(filepath.Join(d, "wchan"))
		stack, _ := os.ReadFile(filepath.Join(d, "stack"))
		state := ""
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+3 < len(stat) {
			state = string(stat[i+2 : i+3])
		}
		fmt.Fprintf(&b, "thread %s (%s): state %s, wchan %s\n%s", filepath.Base(d), bytes.TrimSpace(comm), state, wchan, stack)
	}
	return b.String()
}

func (c *kvmCluster) dumpConsoles() {
	for _, k := range c.kernels {
		data, err := os.ReadFile(filepath.Join(c.runDir, k+".console.log"))
		c.t.Logf("==== console of %s (%v):\n%s", k, err, data)
	}
	data, _ := os.ReadFile(filepath.Join(c.runDir, supervisor.LogName))
	c.t.Logf("==== supervisor log:\n%s", data)
}

// popvmm runs the binary with args and returns its combined output.
func (c *kvmCluster) popvmm(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
	return string(out), err
}

func (c *kvmCluster) must(args ...string) string {
	c.t.Helper()
	out, err := c.popvmm(args...)
	if err != nil {
		c.t.Fatalf("popvmm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *kvmCluster) status() *supervisor.Status {
	c.t.Helper()
	var st supervisor.Status
	out := c.must("status", "--json", "-c", c.config)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return &st
}

// down runs `popvmm down` and waits for the supervisor, pid, to exit.
func (c *kvmCluster) down(pid int) {
	c.t.Helper()
	c.must("down", "-c", c.config)
	if waitGone(pid, teardownWait) != nil {
		c.t.Fatalf("supervisor pid %d still alive %s after down", pid, teardownWait)
	}
}

// waitConsole waits until kernel's console log holds want, within d. The
// log is written by another process: it is read again as it grows.
func (c *kvmCluster) waitConsole(kernel, want string, d time.Duration) {
	c.t.Helper()
	if err := c.watchConsole(kernel, d, func(data []byte) bool { return bytes.Contains(data, []byte(want)) }); err != nil {
		c.t.Fatalf("%s's console did not show %q: %v", kernel, want, err)
	}
}

// consoleStall is how long a kernel's console may stay silent while a test
// waits for it before the wait gives up: a kernel that booted in the lab
// prints something at least every few seconds, and one that stalled (seen
// now and then under emulated KVM: docs/lab.md) would otherwise hold the
// test for the whole boot deadline.
const consoleStall = 2 * time.Minute

// crashCheck is how long a kernel's console may stay silent before a wait
// asks the supervisor whether the kernel has ended, and how often it asks.
const crashCheck = 5 * time.Second

// watchConsole polls a kernel's console log until done accepts it. It
// fails after d, after consoleStall without new output, or as soon as a
// silent kernel is seen crashed or stopped (its reason in the error, and
// in the lab what such a crash usually is).
func (c *kvmCluster) watchConsole(kernel string, d time.Duration, done func([]byte) bool) error {
	path := filepath.Join(c.runDir, kernel+".console.log")
	start := time.Now()
	deadline, size, grew, asked := start.Add(d), -1, start, start
	for {
		data, _ := os.ReadFile(path)
		if done(data) {
			return nil
		}
		now := time.Now()
		if len(data) != size {
			size, grew = len(data), now
		}
		switch {
		case now.After(deadline):
			return fmt.Errorf("not within %s", d)
		case now.Sub(grew) > consoleStall:
			return fmt.Errorf("its console stalled: no output for %s (%s after the wait began)", consoleStall, now.Sub(start).Round(time.Second))
		case now.Sub(grew) > crashCheck && now.Sub(asked) > crashCheck:
			asked = now
			if err := c.ended(kernel); err != nil {
				return fmt.Errorf("%w (%s after the wait began)", err, now.Sub(start).Round(time.Second))
			}
		}
		time.Sleep(100 * time.Millisecond) // polling another process's file, with a deadline
	}
}

// ended says why kernel is crashed or stopped, if it is (nil while it
// runs, or when the supervisor does not answer). A triple fault in the lab
// is named for what it usually is there.
func (c *kvmCluster) ended(kernel string) error {
	out, err := c.popvmm("status", "--json", "-c", c.config)
	if err != nil {
		return nil
	}
	var st supervisor.Status
	if json.Unmarshal([]byte(out), &st) != nil {
		return nil
	}
	k := st.Kernel(kernel)
	if k == nil || (k.State != supervisor.StateCrashed && k.State != supervisor.StateStopped) {
		return nil
	}
	reason := "no reason given"
	if k.Exit != nil && k.Exit.Reason != "" {
		reason = k.Exit.Reason
	}
	err = fmt.Errorf("it %s: %s", k.State, reason)
	if os.Getenv("POPVMM_IN_LAB") == "1" && strings.Contains(reason, "triple fault") {
		err = fmt.Errorf("%w; in the lab, QEMU TCG's SVM emulation now and then faults nested kernels, QEMU's own as well as popvmm's (docs/kvm-backends.md, \"Nested paging and early boot\"): the KVM tier runs a failed test again", err)
	}
	return err
}

// bootDeadline bounds a kernel's boot to its shell: minutes in the lab
// (everything emulated, the host's two cores shared), seconds on hardware.
const bootDeadline = 6 * time.Minute

// TestKVMClusterConsoles is the VMM's tier-3 test: a two-kernel cluster of
// the built full and light images, each on its own core, both reach their
// init's shell on the serial console; a command typed through `popvmm
// attach` runs in the guest and its output comes back; a manual kernel is
// booted into the running cluster; vCPU threads run only on their cores;
// `down` leaves no process behind.
func TestKVMClusterConsoles(tt *testing.T) {
	c := newKVMCluster(tt, "kvmcon",
		kvmKernel{"primary", "full", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "manual"})
	t := c.t
	start := time.Now()
	c.must("up", "-d", c.config)
	c.waitConsole("primary", "popvmm-init: primary up", bootDeadline)
	t.Logf("primary (full) reached /init %.1f s after up", time.Since(start).Seconds())

	st := c.status()
	p := st.Kernel("primary")
	if p.State != supervisor.StateRunning || p.Machine == nil || len(p.Machine.VCPUs) != 1 {
		t.Fatalf("primary status = %+v", p)
	}
	if v, core := p.Machine.VCPUs[0], guestCore(t, "0"); fmt.Sprint(v.Affinity) != "["+core+"]" || v.TID == 0 {
		t.Errorf("primary vCPU thread %+v: want affinity [%s]", v, core)
	}
	if s := st.Kernel("secondary"); s.State != supervisor.StateDefined {
		t.Errorf("secondary is %s before boot, want defined", s.State)
	}

	// A command typed through attach runs in the guest; Ctrl-] detaches,
	// and a second attach works as well.
	for i := range 2 {
		attach(t, c, "primary", fmt.Sprintf("echo attach-$((%d*7))", 6+i), fmt.Sprintf("attach-%d", (6+i)*7))
	}

	c.must("boot", "-c", c.config, "secondary")
	c.waitConsole("secondary", "popvmm-init: secondary up", bootDeadline)
	st = c.status()
	if s := st.Kernel("secondary"); s.State != supervisor.StateRunning || fmt.Sprint(s.Machine.VCPUs[0].Affinity) != "["+guestCore(t, "1")+"]" {
		t.Errorf("secondary after boot = %+v", s)
	}
	if p := st.Kernel("primary"); p.State != supervisor.StateRunning {
		t.Errorf("primary is %s after the secondary's boot", p.State)
	}

	c.down(st.PID)
	if _, err := os.Stat(filepath.Join(c.runDir, supervisor.SocketName)); err == nil {
		t.Errorf("control socket left after down")
	}
}

// attach runs `popvmm attach kernel` on a pseudo-terminal, types cmd once
// the replayed console is shown, waits for want, and detaches with Ctrl-].
func attach(t testing.TB, c *kvmCluster, kernel, cmd, want string) {
	t.Helper()
	ex := exec.Command(c.bin, "attach", "-c", c.config, kernel)
	tty, err := pty.Start(ex)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	out := make(chan []byte, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			if n > 0 {
				out <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				close(out)
				return
			}
		}
	}()
	var seen bytes.Buffer
	wait := func(s string, d time.Duration) {
		t.Helper()
		timer := time.NewTimer(d)
		defer timer.Stop()
		for !bytes.Contains(seen.Bytes(), []byte(s)) {
			select {
			case b, ok := <-out:
				if !ok {
					t.Fatalf("attach %s ended before %q; saw %q", kernel, s, seen.String())
				}
				seen.Write(b)
			case <-timer.C:
				t.Fatalf("attach %s: no %q within %s; saw %q", kernel, s, d, seen.String())
			}
		}
	}
	wait("Ctrl-] detaches", 30*time.Second)
	io.WriteString(tty, cmd+"\r")
	wait(want, time.Minute)
	tty.Write([]byte{0x1d})
	wait("detached from "+kernel, 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- ex.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("attach exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		ex.Process.Kill()
		t.Fatalf("attach did not exit after Ctrl-]")
	}
}
