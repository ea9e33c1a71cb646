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

// TestCPUWatch: a watcher beats on its own file, sends an NMI when
// another CPU's file has been silent for Silence (once per Silence while
// it stays silent, never for its own), and says when that CPU runs again.
func TestCPUWatch(t *testing.T) {
	dir := t.TempDir()
	other := staleBeat(t, dir, "1")
	nudges := make(chan time.Time, 16)
	log := &syncbuf.Buffer{}
	w := &lab.CPUWatch{CPU: 0, Dir: dir, Beat: 10 * time.Millisecond, Silence: 200 * time.Millisecond, FailAfter: time.Hour,
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
	}()

	wait := func(what string) time.Time {
		t.Helper()
		select {
		case at := <-nudges:
			return at
		case <-time.After(10 * time.Second):
			t.Fatalf("no NMI %s; log:\n%s", what, log.String())
		}
		return time.Time{}
	}
	first := wait("for a CPU silent a minute")
	second := wait("while it stays silent")
	if gap := second.Sub(first); gap < w.Silence {
		t.Errorf("NMIs %v apart, want at least Silence (%v)", gap, w.Silence)
	}
	if fi, err := os.Stat(filepath.Join(dir, "0")); err != nil || time.Since(fi.ModTime()) > 5*time.Second {
		t.Errorf("the watcher's own beat file: %v, %v", fi, err)
	}

	// The CPU runs again: its file is fresh; the watcher says so and sends
	// no more NMIs while it stays fresh.
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
	defer func() { close(stopBeat); <-beatDone }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "CPU 1 runs again") {
		if time.Now().After(deadline) {
			t.Fatalf("no word of CPU 1 running again; log:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the watcher's log, with a deadline
	}
	for len(nudges) > 0 { // an NMI sent before the fresh beat was seen
		<-nudges
	}
	select {
	case <-nudges:
		t.Errorf("an NMI for a CPU that beats")
	case <-time.After(3 * w.Silence):
	}
	if strings.Contains(log.String(), "CPU 0 ran nothing") {
		t.Errorf("the watcher took its own CPU for silent:\n%s", log.String())
	}
	if !strings.Contains(log.String(), "CPU 1 ran nothing for") || !strings.Contains(log.String(), "NMI to every CPU (sysrq l): sent") {
		t.Errorf("log does not say what was done:\n%s", log.String())
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
// again) to CPU 0: the test's own process keeps its CPUs.
func TestPinProcess(t *testing.T) {
	if os.Getenv("POPVMM_TEST_PIN_CHILD") == "1" {
		if err := lab.PinProcess(0, os.Geteuid() == 0); err != nil {
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
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPinProcess$")
	cmd.Env = append(os.Environ(), "POPVMM_TEST_PIN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		t.Fatalf("child listed %d threads, want the Go runtime's several:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, ": 0") || strings.Contains(l, "not FIFO") {
			t.Errorf("%s, want CPU 0 (and FIFO, as root)", l)
		}
	}
}
