package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/kvmhost"
	"github.com/popvmm/popvmm/internal/syncbuf"
	"github.com/popvmm/popvmm/supervisor"
)

// popvmm runs one command line in-process and returns its exit status and
// output.
func popvmm(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// wants reads the "# want: ..." lines at the top of a broken config.
func wants(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var w []string
	for line := range strings.Lines(string(b)) {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "# want: "); ok {
			w = append(w, s)
		}
	}
	if len(w) == 0 {
		t.Fatalf("%s has no '# want:' line", path)
	}
	return w
}

func brokenConfigs(t *testing.T) []string {
	files, err := filepath.Glob("../../tests/testdata/bad-*.toml")
	if err != nil || len(files) < 12 {
		t.Fatalf("want at least a dozen broken configs, found %d (%v)", len(files), err)
	}
	return files
}

// TestValidateBrokenConfigs: each broken config gets its own clear error
// and exit status 2.
func TestValidateBrokenConfigs(t *testing.T) {
	for _, f := range brokenConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, out, errs := popvmm(t, "validate", f)
			if code != exitUsage {
				t.Errorf("popvmm validate %s = status %d, want %d\nstderr: %s", f, code, exitUsage, errs)
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing for a broken config", out)
			}
			for _, w := range wants(t, f) {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr:\n%s\nwant it to contain %q", errs, w)
				}
			}
		})
	}
}

func TestValidateExample(t *testing.T) {
	code, out, errs := popvmm(t, "validate", "../../examples/cluster.toml")
	if code != exitOK {
		t.Fatalf("validate example = %d: %s", code, errs)
	}
	for _, w := range []string{"cluster demo", "kernel primary (peer 0, boot up, flavour full)", "kernel secondary (peer 1, boot manual",
		"cores    0 (1 vCPU", "512 MiB memfd", "10.199.0.2", "window bar", "e820", "zero page"} {
		if !strings.Contains(out, w) {
			t.Errorf("plan lacks %q:\n%s", w, out)
		}
	}
	code, out, _ = popvmm(t, "validate", "--json", "../../examples/cluster.toml")
	var plan struct {
		Name    string
		Kernels []struct {
			Name string
			CPUs []int
		}
	}
	if err := json.Unmarshal([]byte(out), &plan); code != 0 || err != nil || plan.Name != "demo" || len(plan.Kernels) != 2 {
		t.Errorf("validate --json = %d, %v, %+v", code, err, plan)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frob"}, {"validate"}, {"validate", "a", "b"}, {"validate", "--bogus", "x"},
		{"up"}, {"boot"}, {"logs"}, {"ssh"}, {"status", "extra"}, {"validate", "/nonexistent/cluster.toml"}} {
		if code, _, errs := popvmm(t, args...); code != exitUsage || !strings.HasPrefix(errs, "popvmm: ") && !strings.Contains(errs, "popvmm: ") {
			t.Errorf("popvmm %q = %d (%q), want %d with a popvmm: message", args, code, errs, exitUsage)
		}
	}
	if code, out, _ := popvmm(t, "version"); code != 0 || !strings.HasPrefix(out, "popvmm ") {
		t.Errorf("version = %d %q", code, out)
	}
}

// TestUpStatusDownInProcess brings the example up in the foreground, drives
// it with the other commands and stops it with down.
func TestUpStatusDownInProcess(t *testing.T) {
	root := t.TempDir()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		c := newRoot(pw, io.Discard)
		c.SetArgs([]string{"up", "--no-kernels", "--run-root", root, "../../examples/cluster.toml"})
		code := 0
		if err := c.ExecuteContext(ctx); err != nil {
			code = 1
		}
		pw.Close()
		done <- code
	}()
	waitLine(t, pr, "is up")
	go io.Copy(io.Discard, pr)

	rr := "--run-root=" + root
	code, out, errs := popvmm(t, "status", rr)
	if code != 0 || !strings.Contains(out, "primary    0     defined  up") {
		t.Errorf("status = %d %q %q", code, out, errs)
	}
	// status says what is: the window is up, the bridge (made only for
	// kernels) is not, nor are the kernels' taps.
	if !strings.Contains(out, "network bridge pv-demo (planned, not created)") || strings.Contains(out, "window 16 MiB (planned") || strings.Contains(out, "pvt-demo-") {
		t.Errorf("status shows what does not exist, or hides what does:\n%s", out)
	}
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"boot", rr, "secondary"}, exitNoKVM, `cannot boot "secondary": the cluster was brought up with --no-kernels`},
		{[]string{"boot", rr, "nope"}, exitUsage, `no kernel "nope"`},
		{[]string{"attach", rr, "secondary"}, exitFailure, `kernel "secondary" is defined: it has no console until it boots`},
		// Suggestions carry the run root when it is not the default.
		{[]string{"ssh", rr, "secondary", "uname", "-a"}, exitFailure, "kernel \"secondary\" is defined; `popvmm --run-root " + root + " boot -c demo secondary` starts it"},
		{[]string{"msg", "ping", rr, "primary"}, exitFailure, `"primary" (peer 0) is not on the window`},
		{[]string{"msg", "info", rr, "nobody"}, exitUsage, `no kernel or window peer named "nobody"`},
		{[]string{"logs", rr, "primary"}, exitFailure, "no console output yet"},
		{[]string{"status", rr, "-c", "other"}, exitFailure, "cluster is not up"},
		{[]string{"up", rr, "--no-kernels", "../../examples/cluster.toml"}, exitFailure, `cluster "demo" is already up`},
		{[]string{"up", rr, "-c", "x", "../../examples/cluster.toml"}, exitUsage, "unknown shorthand flag"},
	}
	for _, c := range cases {
		code, _, errs := popvmm(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("popvmm %q = %d %q, want %d with %q", c.args, code, errs, c.code, c.msg)
		}
		for _, bad := range planWords {
			if strings.Contains(errs, bad) {
				t.Errorf("popvmm %q speaks of plans (%q): %s", c.args, bad, errs)
			}
		}
	}
	// logs prints the console log once there is one.
	testLog := filepath.Join(root, "demo", "primary.console.log")
	os.WriteFile(testLog, []byte("Linux version 6.1\nRun /init as init process\n"), 0o600)
	if code, out, _ := popvmm(t, "logs", rr, "-c", "demo", "primary"); code != 0 || !strings.Contains(out, "Run /init") {
		t.Errorf("logs = %d %q", code, out)
	}
	// To a terminal, logs passes colours but no sequence the terminal
	// would answer (busybox's cursor query), nor any other; --raw does.
	os.WriteFile(testLog, []byte(consoleQueries), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"logs", rr, "primary"}, "login\x1b[1;32m OK\x1b[0m # end"},
		{[]string{"logs", rr, "--raw", "primary"}, consoleQueries[:len(consoleQueries)-1]},
	} {
		if got := onTerminal(t, tc.args...); !strings.Contains(got, tc.want) {
			t.Errorf("popvmm %q to a terminal wrote %q, want %q", tc.args, got, tc.want)
		}
	}
	if code, out, _ := popvmm(t, "logs", rr, "primary"); code != 0 || out != consoleQueries {
		t.Errorf("logs to a pipe = %d %q, want the log as it is", code, out)
	}

	// -c with a config path finds the run directory from the file.
	if code, out, errs := popvmm(t, "down", rr, "-c", "../../examples/cluster.toml"); code != 0 || !strings.Contains(out, "cluster demo is down") {
		t.Fatalf("down -c FILE = %d %q %q", code, out, errs)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("up exited %d after down", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("up did not return after down")
	}
	if _, err := os.Stat(filepath.Join(root, "demo", supervisor.SocketName)); !os.IsNotExist(err) {
		t.Errorf("control socket left after down: %v", err)
	}
}

// consoleQueries is console output with sequences a terminal answers:
// busybox's cursor position query, a device attributes query, an OSC
// colour query, then a line's end.
const consoleQueries = "login\x1b7\x1b[r\x1b[999;999H\x1b[6n\x1b8\x1b[1;32m OK\x1b[0m\x1b[c\x1b]11;?\x07 # end\n"

// onTerminal runs popvmm in-process with a terminal as its standard
// output and returns what the terminal received.
func onTerminal(t *testing.T, args ...string) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	var errb bytes.Buffer
	code := run(args, tty, &errb)
	tty.Close()
	if code != 0 {
		t.Fatalf("popvmm %q = %d: %s", args, code, errb.String())
	}
	b, _ := io.ReadAll(ptmx) // EIO once the terminal's other side is closed and drained
	return string(b)
}

func waitLine(t *testing.T, r io.Reader, want string) {
	t.Helper()
	found := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.Contains(sc.Text(), want) {
				found <- nil
				return
			}
		}
		found <- io.ErrUnexpectedEOF
	}()
	select {
	case err := <-found:
		if err != nil {
			t.Fatalf("output ended before %q", want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no %q within 20s", want)
	}
}

// runDirMention finds the run directory's files the docs name.
var runDirMention = regexp.MustCompile(`RUN_DIR/([A-Za-z0-9_.-]+)`)

// checkDocRunDir: every RUN_DIR/FILE that README.md and docs/ name is in
// the run directory of a cluster that is up (NAME standing for a kernel),
// so a renamed socket cannot leave the docs behind. A console log exists
// once its kernel has written, which no kernel of --no-kernels does: its
// name is checked against the config's plan instead.
func checkDocRunDir(t *testing.T, runDir string) {
	t.Helper()
	cl, err := newCLIForTest().load("../../examples/cluster.toml")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, path := range docFiles(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range runDirMention.FindAllStringSubmatch(string(b), -1) {
			if strings.ToUpper(m[1]) == m[1] {
				continue // a placeholder (RUN_DIR/FILE), not a file
			}
			seen++
			name := strings.ReplaceAll(m[1], "NAME", cl.Kernels[0].Name)
			if strings.HasSuffix(name, ".console.log") {
				if filepath.Base(cl.Kernels[0].ConsoleLog) != name {
					t.Errorf("%s names RUN_DIR/%s; a kernel's console log is %s", path, m[1], filepath.Base(cl.Kernels[0].ConsoleLog))
				}
				continue
			}
			if _, err := os.Stat(filepath.Join(runDir, name)); err != nil {
				t.Errorf("%s names RUN_DIR/%s, which a running cluster does not have: %v", path, m[1], err)
			}
		}
	}
	if seen < 4 {
		t.Errorf("the docs name %d files of the run directory; the pattern no longer finds them", seen)
	}
}

// newCLIForTest is a cli that writes nowhere.
func newCLIForTest() *cli { return &cli{stdout: io.Discard, stderr: io.Discard} }

// buildBinary builds popvmm once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "popvmm")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBinary checks, as a user sees it, that broken configs exit 2 without
// a Go stack, and that up -d / status / down leave no process or socket.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := buildBinary(t)
	for _, f := range brokenConfigs(t) {
		cmd := exec.Command(bin, "validate", f)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != exitUsage || strings.Contains(string(out), "goroutine ") || strings.Contains(string(out), "panic") {
			t.Errorf("%s validate %s = %v\n%s", bin, f, err, out)
		}
	}

	root := t.TempDir()
	popvmmBin := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--run-root", root}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := popvmmBin("up", "-d", "--no-kernels", "../../examples/cluster.toml")
	if err != nil || !strings.Contains(out, "cluster demo is up") {
		t.Fatalf("up -d = %v\n%s", err, out)
	}
	t.Cleanup(func() { popvmmBin("down") })
	out, err = popvmmBin("status", "--json")
	var st supervisor.Status
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.PID <= 0 {
		t.Fatalf("status --json = %v\n%s", err, out)
	}
	pidfd, err := unix.PidfdOpen(st.PID, 0)
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", st.PID, err)
	}
	defer unix.Close(pidfd)
	checkDocRunDir(t, st.RunDir)
	// make demo's host peer joins the window socket the way the script
	// finds it (scripts/demo.sh, step 4).
	demo, err := os.ReadFile("../../scripts/demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	var sockLine string
	for line := range strings.Lines(string(demo)) {
		if strings.HasPrefix(line, "sock=$(") {
			sockLine = line
		}
	}
	if sockLine == "" {
		t.Fatal("scripts/demo.sh has no sock=$(...) line: how does its host peer find the window?")
	}
	sh := exec.Command("bash", "-c", sockLine+`[ -S "$sock" ] && [ "$sock" = "$want" ]`)
	sh.Env = append(os.Environ(), "popvmm="+bin, "cfg=../../examples/cluster.toml", "POPVMM_RUN_ROOT="+root, "want="+st.Window)
	if out, err := sh.CombinedOutput(); err != nil || st.Window == "" {
		t.Errorf("scripts/demo.sh's window socket line does not find %q: %v\n%s", st.Window, err, out)
	}
	if out, err := popvmmBin("up", "-d", "--no-kernels", "../../examples/cluster.toml"); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second up -d = %v\n%s", err, out)
	}
	if out, err := popvmmBin("down"); err != nil || !strings.Contains(out, "is down") {
		t.Fatalf("down = %v\n%s", err, out)
	}
	// The supervisor process must be gone: wait on its pidfd.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10_000); err != nil || n != 1 {
		t.Errorf("supervisor pid %d still running 10s after down (%v)", st.PID, err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "demo", "*")); strings.Contains(strings.Join(left, " "), "control.sock") {
		t.Errorf("left behind after down: %v", left)
	}

	// A supervisor killed with SIGKILL leaves a stale socket but no lock:
	// status says the cluster is not up and the next up takes over.
	if out, err := popvmmBin("up", "-d", "--no-kernels", "../../examples/cluster.toml"); err != nil {
		t.Fatalf("up -d again = %v\n%s", err, out)
	}
	out, _ = popvmmBin("status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	pidfd2, err := unix.PidfdOpen(st.PID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd2)
	if err := unix.PidfdSendSignal(pidfd2, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	fds = []unix.PollFd{{Fd: int32(pidfd2), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10_000); err != nil || n != 1 {
		t.Fatalf("killed supervisor still running (%v)", err)
	}
	if out, err := popvmmBin("status", "-c", "demo"); err == nil || !strings.Contains(out, "cluster is not up") {
		t.Errorf("status after kill = %v\n%s", err, out)
	}
	if out, err := popvmmBin("up", "-d", "--no-kernels", "../../examples/cluster.toml"); err != nil {
		t.Fatalf("up -d after kill = %v\n%s", err, out)
	}
	if out, err := popvmmBin("down"); err != nil {
		t.Fatalf("down after takeover = %v\n%s", err, out)
	}
}

// TestUpWithoutKVMFailsFast: where KVM cannot run the kernels, up says why
// and what to do, before setting anything up, with status 3.
func TestUpWithoutKVMFailsFast(t *testing.T) {
	kv := kvmhost.Probe(kvmhost.SysHost{})
	if kv.Full() {
		t.Skipf("KVM is usable here (%s): nothing to refuse", kv.Backend)
	}
	root := t.TempDir()
	code, out, errs := popvmm(t, "up", "--run-root", root, "../../examples/cluster.toml")
	if code != exitNoKVM || !strings.Contains(errs, "cannot run kernels on this machine") || !strings.Contains(errs, "what to do:") || !strings.Contains(errs, "popvmm lab up") {
		t.Errorf("up without KVM = %d %q %q, want %d naming the problem and the way out", code, out, errs, exitNoKVM)
	}
	if _, err := os.Stat(filepath.Join(root, "demo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("up without KVM left a run directory: %v", err)
	}
	for _, bad := range planWords {
		if strings.Contains(errs, bad) {
			t.Errorf("up's message speaks of plans (%q): %s", bad, errs)
		}
	}
}

// planWords must never reach a user: messages say what is, not what the
// project plans.
var planWords = []string{"issue", "lands", "not built yet", "will be", "VMM is not built"}

// TestRunDirElsewhere: a cluster whose cluster.toml sets its own run_dir is
// found by name (-c NAME) under the run root, and the command up suggests
// for stopping it works as printed; after down its registry entry is gone.
func TestRunDirElsewhere(t *testing.T) {
	root, runDir := t.TempDir(), filepath.Join(t.TempDir(), "rd")
	images, err := filepath.Abs("../../images/out")
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "elsewhere.toml")
	toml := `[cluster]
name = "elsewhere"
images = "` + images + `"
run_dir = "` + runDir + `"
[cluster.network]
bridge = "pv-elsewhere"
subnet = "10.198.0.0/24"
host_address = "10.198.0.1"
[[kernel]]
name = "only"
flavour = "light"
cpus = "0"
memory = "128M"
boot = "up"
ip = "10.198.0.2"
`
	if err := os.WriteFile(config, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	var upErr syncbuf.Buffer
	go func() {
		c := newRoot(pw, &upErr)
		c.SetArgs([]string{"up", "--no-kernels", "--run-root", root, config})
		code := 0
		if err := c.ExecuteContext(t.Context()); err != nil {
			code = 1
		}
		pw.Close()
		done <- code
	}()
	suggested := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if _, cmd, ok := strings.Cut(sc.Text(), "Ctrl-C or `"); ok {
				cmd, _, _ = strings.Cut(cmd, "`")
				suggested <- cmd
			}
		}
		close(suggested)
	}()
	down, ok := "", false
	select {
	case down, ok = <-suggested:
		if !ok {
			t.Fatalf("up ended without suggesting how to stop it: %s", upErr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("up printed no command that stops the cluster within 20s")
	}
	if want := "popvmm --run-root " + root + " down -c elsewhere"; down != want {
		t.Errorf("up suggests %q, want %q", down, want)
	}
	rr := "--run-root=" + root
	if code, out, errs := popvmm(t, "status", rr, "-c", "elsewhere"); code != 0 || !strings.Contains(out, "only") {
		t.Errorf("status -c elsewhere = %d %q %q", code, out, errs)
	}
	if code, out, errs := popvmm(t, "status", rr); code != 0 || !strings.Contains(out, "only") {
		t.Errorf("status (the only cluster up) = %d %q %q", code, out, errs)
	}
	// The suggestion, word for word.
	args := strings.Fields(down)
	if code, out, errs := popvmm(t, args[1:]...); code != 0 || !strings.Contains(out, "cluster elsewhere is down") {
		t.Fatalf("%s = %d %q %q", down, code, out, errs)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("up exited %d after down", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("up did not return after down")
	}
	if code, _, errs := popvmm(t, "status", rr, "-c", "elsewhere"); code == 0 || !strings.Contains(errs, "not up") {
		t.Errorf("status -c elsewhere after down = %d %q, want not up", code, errs)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, ".clusters")); len(ents) != 0 {
		t.Errorf("registry entries left after down: %v", ents)
	}
}
