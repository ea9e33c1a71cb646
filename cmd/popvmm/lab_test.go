package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/lab"
)

// labBoot is how long a test waits for one lab boot and its command: a
// boot takes 10 s on an idle machine and up to 100 s on a loaded one.
const labBoot = 4 * time.Minute

// requireLab skips t (or fails it under POPVMM_REQUIRE_IMAGES=1, as in CI)
// unless the lab image is built and QEMU is installed.
func requireLab(t *testing.T) {
	t.Helper()
	problem := lab.DefaultImage().Check()
	if problem == nil {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			problem = errors.New("qemu-system-x86_64 not installed (make deps)")
		}
	}
	testenv.RequireImages(t, problem)
}

var (
	labBinOnce sync.Once
	labBin     string
	labBinErr  error
)

// labBinary builds popvmm once for the lab tests, outside any test's
// temporary directory (the parallel tests share it).
func labBinary(t *testing.T) string {
	t.Helper()
	labBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "popvmm-labtest-bin-")
		if err != nil {
			labBinErr = err
			return
		}
		labBin = filepath.Join(dir, "popvmm")
		if out, err := exec.Command("go", "build", "-o", labBin, ".").CombinedOutput(); err != nil {
			labBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if labBinErr != nil {
		t.Fatal(labBinErr)
	}
	return labBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if labBin != "" {
		os.RemoveAll(filepath.Dir(labBin))
	}
	os.Exit(code)
}

// labCommand is `popvmm lab ARGS` with its own TMPDIR, so its job
// directory, and the QEMU command line that names it, are unique to the
// test.
func labCommand(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	tmp := t.TempDir()
	cmd := exec.Command(labBinary(t), append([]string{"lab"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	return cmd, tmp
}

// qemuFor lists the processes whose command line names dir (the QEMU of
// one lab run), by pid.
func qemuFor(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cl, []byte("qemu-system")) && bytes.Contains(cl, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidfds opens a pidfd on each pid, to wait for their exits.
func pidfds(t *testing.T, pids []int) []int {
	t.Helper()
	var fds []int
	for _, p := range pids {
		fd, err := unix.PidfdOpen(p, 0)
		if err != nil {
			t.Fatalf("pidfd_open(%d): %v", p, err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		fds = append(fds, fd)
	}
	return fds
}

// waitGone waits until every pidfd is readable (its process exited), or
// fails after d, naming what is left.
func waitGone(t *testing.T, fds []int, d time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, fd := range fds {
		for {
			left := time.Until(deadline)
			if left <= 0 {
				t.Fatalf("%s: QEMU still running %s later", what, d)
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if n == 1 {
				break
			}
		}
	}
}

// lineWaiter reads r line by line and lets a test wait for a line.
type lineWaiter struct {
	lines chan string
	done  chan struct{} // closed once r is read to its end
	all   strings.Builder
	mu    sync.Mutex
}

func newLineWaiter(r io.Reader) *lineWaiter {
	w := &lineWaiter{lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(w.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			w.mu.Lock()
			w.all.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
			w.lines <- sc.Text()
		}
	}()
	return w
}

func (w *lineWaiter) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// labProc is one `popvmm lab` under test, its standard output and its
// progress (standard error) read a line at a time.
type labProc struct {
	cmd           *exec.Cmd
	tmp           string // its TMPDIR (labCommand)
	out, progress *lineWaiter
}

// startLab starts `popvmm lab ARGS` from dir (the package's directory when
// empty) with standard input closed; the test's cleanup kills it.
func startLab(t *testing.T, dir string, args ...string) *labProc {
	t.Helper()
	cmd, tmp := labCommand(t, args...)
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return &labProc{cmd: cmd, tmp: tmp, out: newLineWaiter(stdout), progress: newLineWaiter(stderr)}
}

// wait waits up to d for a line of w (p.out or p.progress) containing
// want. When w ends first, popvmm lab has exited: a lab host that died
// under it panics with labDied (retryLabDeaths runs the test again), any
// other exit fails the test with both streams.
func (p *labProc) wait(t *testing.T, w *lineWaiter, want string, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-w.lines:
			if !ok {
				exit := p.exited(30 * time.Second)
				if isLabDeath(exit, p.progress.text()) {
					panic(labDied{said: p.progress.text()})
				}
				t.Fatalf("popvmm lab %v ended (%s) before %q\n%s", p.cmd.Args[2:], exit, want, p.streams())
			}
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q from popvmm lab %v within %s\n%s", want, p.cmd.Args[2:], d, p.streams())
		}
	}
}

// exited waits up to d for both streams to end and the process to exit,
// and returns how it exited.
func (p *labProc) exited(d time.Duration) error {
	deadline := time.After(d)
	for _, w := range []*lineWaiter{p.out, p.progress} {
		select {
		case <-w.done:
		case <-deadline:
			return fmt.Errorf("still running %s after its output ended", d)
		}
	}
	return waitExit(p.cmd, d)
}

func (p *labProc) streams() string {
	return fmt.Sprintf("standard output:\n%s\nstandard error:\n%s", p.out.text(), p.progress.text())
}

// waitExit is cmd.Wait with a deadline: after d it kills the process.
func waitExit(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("killed: still running %s after its output ended", d)
	}
}

// labDied is what a lab test panics with when its `popvmm lab` said that
// the lab host died under it: QEMU's emulator faults (docs/lab.md), most
// often on a loaded machine, as tier 1 is with the race detector and
// several lab hosts at once. Nothing the test checks depends on it;
// scripts/test-kvm.sh resumes the KVM tiers in a fresh lab for the same
// reason.
type labDied struct{ said string }

// labAttempts is how many times a lab test runs while its lab host dies
// under it.
const labAttempts = 3

// labDeath is popvmm lab's line for a lab host that died: stopped while
// booting or before the command finished, not ready in time, or ended by
// its CPU watcher (lab.Error).
var labDeath = regexp.MustCompile(`(?m)^popvmm: lab: .*lab host`)

// isLabDeath says whether a popvmm lab that exited so, having printed
// stderr, reports its lab host dead: exit status 125 (a failure of the lab
// itself) and labDeath's line.
func isLabDeath(exit error, stderr string) bool {
	var ee *exec.ExitError
	return errors.As(exit, &ee) && ee.ExitCode() == 125 && labDeath.MatchString(stderr)
}

// labSlots bounds the lab hosts this package's tests boot at once. Tier 1
// runs every package at once under the race detector; four emulated lab
// hosts beside that on a two-core machine took longer than the lab's boot
// timeout (3 minutes) in CI.
var labSlots = make(chan struct{}, 2)

// retryLabDeaths runs attempt, and again while its lab host dies under it
// (labDied), up to labAttempts times in all; each death is logged. Any
// other failure of attempt is the test's. Each attempt holds one of
// labSlots.
func retryLabDeaths(t *testing.T, attempt func()) {
	t.Helper()
	for i := 1; ; i++ {
		died := func() (died *labDied) {
			labSlots <- struct{}{}
			defer func() { <-labSlots }()
			defer func() {
				if r := recover(); r != nil {
					d, ok := r.(labDied)
					if !ok {
						panic(r)
					}
					died = &d
				}
			}()
			attempt()
			return nil
		}()
		if died == nil {
			return
		}
		if i == labAttempts {
			t.Fatalf("the lab host died under all %d attempts (docs/lab.md); the last popvmm lab said:\n%s", i, died.said)
		}
		t.Logf("attempt %d of %d: the lab host died under it (QEMU's emulator, docs/lab.md); running it again. popvmm lab said:\n%s", i, labAttempts, died.said)
	}
}

// TestLabCLIFailures: a failure of the lab itself exits 125 with one line
// on stderr, before anything boots.
func TestLabCLIFailures(t *testing.T) {
	bin := labBinary(t)
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"bogus image", nil, []string{"lab", "run", "--image", "/nonexistent/popvmm-lab", "--", "true"}, "popvmm: lab: no lab image: "},
	}
	if lab.DefaultImage().Check() == nil {
		// QEMU missing: nothing named qemu-system-x86_64 on PATH.
		cases = append(cases, struct {
			name string
			env  []string
			args []string
			want string
		}{"no QEMU", []string{"PATH=" + t.TempDir()}, []string{"lab", "run", "--", "true"}, "popvmm: lab: qemu-system-x86_64 not found"})
	}
	for _, tc := range cases {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = append(os.Environ(), tc.env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 125 {
			t.Errorf("%s: %v: exit %v, want 125", tc.name, tc.args, err)
		}
		if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) || out.Len() != 0 {
			t.Errorf("%s: stdout %q, stderr %q; want one line starting %q", tc.name, out.String(), errb.String(), tc.want)
		}
	}
}

// TestLabSignals: SIGTERM or SIGKILL to `popvmm lab run` while the lab
// boots, and Ctrl-C (SIGINT) while its command runs, leave no QEMU
// behind; the first and last exit 128+signal and clean the job directory.
func TestLabSignals(t *testing.T) {
	requireLab(t)
	t.Parallel()
	for _, tc := range []struct {
		sig         syscall.Signal
		whileBoot   bool
		wantExit    int
		wantCleaned bool
	}{
		{syscall.SIGTERM, true, 143, true},
		{syscall.SIGKILL, true, -1, false},
		{syscall.SIGINT, false, 130, true},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			retryLabDeaths(t, func() { labSignal(t, tc.sig, tc.whileBoot, tc.wantExit, tc.wantCleaned) })
		})
	}
}

// labSignal sends sig to popvmm lab run while the lab host boots or once
// its command runs, and checks popvmm's exit status, that QEMU is gone and,
// when wantCleaned, that the job directory is.
func labSignal(t *testing.T, sig syscall.Signal, whileBoot bool, wantExit int, wantCleaned bool) {
	t.Helper()
	p := startLab(t, "", "run", "--", "sh", "-c", "echo started; exec sleep 600")
	p.wait(t, p.progress, "lab: booting", labBoot) // printed once QEMU has started
	if !whileBoot {
		p.wait(t, p.out, "started", labBoot)
	}
	// QEMU is running when "lab: booting" is printed; /proc is read until
	// it shows it (a loaded machine can be slow to).
	var pids []int
	for deadline := time.Now().Add(10 * time.Second); ; {
		if pids = qemuFor(t, p.tmp); len(pids) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(pids) != 1 {
		t.Fatalf("QEMU processes naming %s: %v, want one; popvmm's stderr so far:\n%s", p.tmp, pids, p.progress.text())
	}
	fds := pidfds(t, pids)
	p.cmd.Process.Signal(sig)
	waitGone(t, fds, 30*time.Second, "after "+sig.String())
	if wantCleaned {
		// Read before Wait, which closes the pipe: its last line could be
		// lost (seen on a loaded machine).
		p.wait(t, p.progress, "the lab host was stopped", 30*time.Second)
	}
	err := waitExit(p.cmd, 30*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != wantExit {
		t.Errorf("popvmm lab run after %s: %v, want exit status %d\n%s", sig, err, wantExit, p.streams())
	}
	if wantCleaned {
		if ents, _ := os.ReadDir(p.tmp); len(ents) != 0 {
			t.Errorf("left in TMPDIR after %s: %v", sig, ents)
		}
	}
}

// runPTY runs popvmm lab ARGS on a pseudo-terminal, types input once
// prompt appears, and returns the exit status and everything shown.
func runPTY(t *testing.T, prompt, input string, want []string, args ...string) {
	t.Helper()
	cmd, _ := labCommand(t, args...)
	cmd.Dir = "../.."
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	t.Cleanup(func() { cmd.Process.Kill() })
	var mu sync.Mutex
	var shown bytes.Buffer
	changed := make(chan struct{}, 1)
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			mu.Lock()
			shown.Write(buf[:n])
			mu.Unlock()
			select {
			case changed <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	text := func() string { mu.Lock(); defer mu.Unlock(); return shown.String() }
	waitFor := func(s string, from int) int {
		timeout := time.After(labBoot)
		for {
			if i := strings.Index(text()[from:], s); i >= 0 {
				return from + i + len(s)
			}
			select {
			case <-changed:
			case <-eof:
				if i := strings.Index(text()[from:], s); i >= 0 {
					return from + i + len(s)
				}
				exit := waitExit(cmd, 30*time.Second)
				if isLabDeath(exit, text()) {
					panic(labDied{said: text()})
				}
				t.Fatalf("the terminal closed before %q (popvmm lab: %v):\n%s", s, exit, text())
			case <-timeout:
				t.Fatalf("no %q on the terminal within %s:\n%s", s, labBoot, text())
			}
		}
	}
	at := waitFor(prompt, 0)
	if _, err := io.WriteString(tty, input); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		waitFor(w, at)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("popvmm lab %v: %v, want exit status 0\n%s", args, err, text())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("popvmm lab %v did not exit after the shell did:\n%s", args, text())
	}
	// Every line the person saw is a clean line: none ends in a bare
	// line feed, which a raw terminal prints as a staircase.
	if i := strings.Index(strings.ReplaceAll(text(), "\r\n", ""), "\n"); i >= 0 {
		t.Errorf("popvmm lab %v wrote a bare line feed to the raw terminal:\n%q", args, text())
	}
}

// TestRawTerminalLines: while popvmm holds the terminal raw (lab shell,
// lab up), its own lines (progress, errors) end with CR LF, and after
// restore the terminal is as it was.
func TestRawTerminalLines(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	c := &cli{stdout: tty, stderr: tty}
	restore, err := c.rawTerminal(tty)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c.stderr, "lab: booting emulated KVM host\nlab: ready in 9.9 s\n")
	fmt.Fprintf(c.stdout, "out\n")
	restore()
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal settings after restore = %+v, want %+v", *after, *before)
	}
	if c.stderr != tty || c.stdout != tty {
		t.Error("restore left popvmm's writers wrapped")
	}
	tty.Close()
	got, _ := io.ReadAll(ptmx) // EIO once the other side is closed and drained
	if want := "lab: booting emulated KVM host\r\nlab: ready in 9.9 s\r\nout\r\n"; string(got) != want {
		t.Errorf("the raw terminal got %q, want %q", got, want)
	}
}

// TestLabShellPTY drives `popvmm lab shell` on a pseudo-terminal: a root
// shell with /dev/kvm whose exit status 0 is popvmm's.
func TestLabShellPTY(t *testing.T) {
	requireLab(t)
	t.Parallel()
	retryLabDeaths(t, func() {
		runPTY(t, "# ", "test -c /dev/kvm && echo kvm-$((6*7)); id -u; exit 0\n", []string{"kvm-42", "0"}, "shell")
	})
}

// TestLabUpPTY drives `popvmm lab up examples/cluster.toml`: the cluster
// comes up inside the lab, `popvmm status` works in its shell, and leaving
// the shell brings it down. The cluster is named (-c demo): without it,
// status looks for live clusters with a 2 s answer deadline
// (supervisor.Live), which the emulated host, busy booting the primary
// kernel, can miss on a loaded machine.
func TestLabUpPTY(t *testing.T) {
	requireLab(t)
	t.Parallel()
	retryLabDeaths(t, func() {
		runPTY(t, "cluster up in the lab", "popvmm status -c demo; exit\n", []string{"primary", "secondary", "is down"}, "up", "examples/cluster.toml")
	})
}

// TestLabUpNoTerminal: `popvmm lab up` with its standard input closed (make
// up </dev/null, a CI job) brings the cluster up, shows its status, and
// keeps it up without a shell, instead of a shell that reads end of file
// and takes the cluster down at once; Ctrl-C stops it all.
func TestLabUpNoTerminal(t *testing.T) {
	requireLab(t)
	t.Parallel()
	retryLabDeaths(t, func() {
		p := startLab(t, "../..", "up", "examples/cluster.toml") // standard input: /dev/null
		p.wait(t, p.out, "cluster demo is up", labBoot)
		p.wait(t, p.out, "primary", time.Minute) // the status table
		p.wait(t, p.out, "without a shell", time.Minute)
		pids := qemuFor(t, p.tmp)
		if len(pids) != 1 {
			t.Fatalf("QEMU processes naming %s: %v, want one", p.tmp, pids)
		}
		fds := pidfds(t, pids)
		p.cmd.Process.Signal(syscall.SIGINT)
		waitGone(t, fds, 30*time.Second, "after SIGINT")
		p.wait(t, p.progress, "the lab host was stopped", 30*time.Second)
		var ee *exec.ExitError
		if err := waitExit(p.cmd, 30*time.Second); !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("popvmm lab up after SIGINT: %v, want exit status 130\n%s", err, p.streams())
		}
		if strings.Contains(p.out.text(), "is down") {
			t.Errorf("the cluster went down before it was stopped:\n%s", p.streams())
		}
	})
}

// TestIsLabDeath: only exit status 125 with the lab's own line about its
// host counts as a lab host that died; a lab that failed otherwise, or a
// command that exited 125 itself, is the test's failure.
func TestIsLabDeath(t *testing.T) {
	exit := func(code int) error { return exec.Command("sh", "-c", "exit "+strconv.Itoa(code)).Run() }
	for _, tc := range []struct {
		exit   error
		stderr string
		want   bool
	}{
		{exit(125), "lab: booting\npopvmm: lab: the lab host stopped while booting (QEMU: )\n", true},
		{exit(125), "popvmm: lab: CPU 1 ran nothing for 20.3 s (seen from CPU 0): the lab host lost it (QEMU TCG, docs/lab.md)\r\n", true},
		{exit(125), "popvmm: lab: no lab image: /x\n", false},
		{exit(125), "the lab host stopped while booting\n", false}, // not popvmm's line
		{exit(1), "popvmm: lab: the lab host stopped while booting\n", false},
		{nil, "popvmm: lab: the lab host stopped while booting\n", false},
	} {
		if got := isLabDeath(tc.exit, tc.stderr); got != tc.want {
			t.Errorf("isLabDeath(%v, %q) = %v, want %v", tc.exit, tc.stderr, got, tc.want)
		}
	}
}

// TestRetryLabDeaths: an attempt whose lab host died runs again; one that
// did not is not.
func TestRetryLabDeaths(t *testing.T) {
	n := 0
	retryLabDeaths(t, func() {
		if n++; n < labAttempts {
			panic(labDied{said: "popvmm: lab: the lab host stopped while booting"})
		}
	})
	if n != labAttempts {
		t.Errorf("%d attempts after %d deaths, want %d", n, labAttempts-1, labAttempts)
	}
	n = 0
	retryLabDeaths(t, func() { n++ })
	if n != 1 {
		t.Errorf("%d attempts without a death, want 1", n)
	}
}
