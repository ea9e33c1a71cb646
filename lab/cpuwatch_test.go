package lab_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/syncbuf"
	"github.com/popvmm/popvmm/lab"
)

// staleBeat makes CPU cpu's beat file in dir, last marked a minute ago.
func staleBeat(t *testing.T, dir, cpu string) string {
	t.Helper()
	p := filepath.Join(dir, cpu)
	old := time.Now().Add(-time.Minute)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCPUWatch: a watcher beats on its own file; a CPU whose file has
// been silent for Silence gets one NMI for that silence (none for the
// watcher's own CPU), the watcher says when it runs again, and a new
// silence gets a new NMI.
func TestCPUWatch(t *testing.T) {
	dir := t.TempDir()
	other := staleBeat(t, dir, "1")
	nudges := make(chan time.Time, 16)
	log := &syncbuf.Buffer{}
	w := &lab.CPUWatch{CPU: 0, Dir: dir, Beat: 10 * time.Millisecond, Silence: time.Second, FailAfter: time.Hour,
		Log: log, Kmsg: "-", Nudge: func() error { nudges <- time.Now(); return nil },
		Fail: func(reason string) error { t.Errorf("Fail(%q) before FailAfter", reason); return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "0")); err == nil {
			t.Errorf("the watcher's beat file outlives it")
		}
	}()

	wait := func(what string) {
		t.Helper()
		select {
		case <-nudges:
		case <-time.After(10 * time.Second):
			t.Fatalf("no NMI %s; log:\n%s", what, log.String())
		}
	}
	none := func(what string) {
		t.Helper()
		select {
		case <-nudges:
			t.Errorf("an NMI %s; log:\n%s", what, log.String())
		case <-time.After(3 * w.Silence):
		}
	}
	wait("for a CPU silent a minute")
	none("again in the same silence")
	data, err := os.ReadFile(filepath.Join(dir, "0"))
	if fi, serr := os.Stat(filepath.Join(dir, "0")); err != nil || serr != nil || time.Since(fi.ModTime()) > 5*time.Second ||
		string(data) != strconv.Itoa(os.Getpid()) {
		t.Errorf("the watcher's own beat file: %q, %v, %v; want this pid, fresh", data, err, serr)
	}

	// The CPU runs again: its file is fresh; the watcher says so and sends
	// no NMI while it stays fresh.
	stopBeat := make(chan struct{})
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		for {
			now := time.Now()
			os.Chtimes(other, now, now)
			select {
			case <-stopBeat:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "CPU 1 runs again") {
		if time.Now().After(deadline) {
			t.Fatalf("no word of CPU 1 running again; log:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the watcher's log, with a deadline
	}
	none("for a CPU that beats")
	close(stopBeat)
	<-beatDone
	wait("for a new silence")
	if strings.Contains(log.String(), "CPU 0 ran nothing") {
		t.Errorf("the watcher took its own CPU for silent:\n%s", log.String())
	}
	if !strings.Contains(log.String(), "CPU 1 ran nothing for") || !strings.Contains(log.String(), "NMI to the other CPUs (sysrq l): sent") {
		t.Errorf("log does not say what was done:\n%s", log.String())
	}
}

// TestCPUWatchEndedWatcher: the beat file of a watcher that has exited
// (its pid gone) is no silent CPU: no NMI, no end of the lab.
func TestCPUWatchEndedWatcher(t *testing.T) {
	dir := t.TempDir()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	p := staleBeat(t, dir, "1")
	if err := os.WriteFile(p, []byte(strconv.Itoa(gone.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	os.Chtimes(p, old, old)
	w := &lab.CPUWatch{CPU: 0, Dir: dir, Beat: 10 * time.Millisecond, Silence: 100 * time.Millisecond, FailAfter: time.Second,
		Log: io.Discard, Kmsg: "-", Nudge: func() error { t.Error("an NMI for an ended watcher's CPU"); return nil },
		Fail: func(reason string) error { t.Errorf("Fail(%q) for an ended watcher's CPU", reason); return nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCPUWatchFails: a CPU silent for FailAfter ends the lab host (Fail,
// with a reason naming the CPU), and Run returns what Fail returned.
func TestCPUWatchFails(t *testing.T) {
	dir := t.TempDir()
	staleBeat(t, dir, "1")
	var reasons []string
	errEnded := errors.New("lab host ended")
	w := &lab.CPUWatch{CPU: 0, Dir: dir, Beat: 10 * time.Millisecond, Silence: time.Second, FailAfter: 30 * time.Second,
		Log: io.Discard, Kmsg: "-", Nudge: func() error { t.Error("an NMI instead of the end"); return nil },
		Fail: func(reason string) error { reasons = append(reasons, reason); return errEnded }}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Run(ctx); err != errEnded {
		t.Fatalf("Run = %v, want Fail's error", err)
	}
	if len(reasons) != 1 || !strings.HasPrefix(reasons[0], "CPU 1 ran nothing for 60.") {
		t.Errorf("Fail called with %q, want one reason naming CPU 1 and its 60 s", reasons)
	}
}

// TestPinProcess pins every thread of a child process (this test binary
// again) to one CPU of this process's (the last it may use): the test's
// own process keeps its CPUs.
func TestPinProcess(t *testing.T) {
	if c := os.Getenv("POPVMM_TEST_PIN_CHILD"); c != "" {
		cpu, _ := strconv.Atoi(c)
		if err := lab.PinProcess(cpu, os.Geteuid() == 0); err != nil {
			fmt.Println("pin:", err)
			os.Exit(1)
		}
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			st, _ := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
			for _, l := range strings.Split(string(st), "\n") {
				if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
					tid, _ := strconv.Atoi(task.Name())
					policy := "not checked"
					if os.Geteuid() == 0 {
						policy = "not FIFO"
						if a, err := unix.SchedGetAttr(tid, 0); err == nil && a.Policy == unix.SCHED_FIFO {
							policy = "FIFO"
						}
					}
					fmt.Printf("thread %s: %s: %s\n", task.Name(), policy, strings.TrimSpace(v))
				}
			}
		}
		os.Exit(0)
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for i := range 1024 {
		if set.IsSet(i) {
			cpu = i
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPinProcess$")
	cmd.Env = append(os.Environ(), "POPVMM_TEST_PIN_CHILD="+strconv.Itoa(cpu))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		t.Fatalf("child listed %d threads, want the Go runtime's several:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, ": "+strconv.Itoa(cpu)) || strings.Contains(l, "not FIFO") {
			t.Errorf("%s, want CPU %d (and FIFO, as root)", l, cpu)
		}
	}
}
