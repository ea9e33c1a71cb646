package vmm

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mainThread runs functions on the process's main thread for tests:
// init locks the main goroutine there (a LockOSThread in init lasts into
// main, so into TestMain), and TestMain serves mainThread while the tests
// run on other goroutines.
var mainThread = make(chan func())

func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	done := make(chan int)
	go func() { done <- m.Run() }()
	for {
		select {
		case f := <-mainThread:
			f()
		case code := <-done:
			os.Exit(code)
		}
	}
}

// onMain runs f on the main thread and returns when it has.
func onMain(f func()) {
	done := make(chan struct{})
	mainThread <- func() { f(); close(done) }
	<-done
}

// threadComm is thread tid's name, as ps and top show it.
func threadComm(t *testing.T, tid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestOffMainThread starts a vCPU-like thread (pinned is not needed:
// naming is what renamed the process) from a goroutine that is on the
// main thread, as the Go scheduler may put any goroutine there: the
// thread must be another one, and the process keep its name (issue 21,
// item 11: pgrep -x popvmm failed).
func TestOffMainThread(t *testing.T) {
	pid := os.Getpid()
	before := threadComm(t, pid)
	type ran struct {
		tid int
		err error
	}
	got := make(chan ran, 1)
	var callerOnMain bool
	onMain(func() {
		callerOnMain = onMainThread()
		offMainThread(func() {
			got <- ran{unix.Gettid(), setThreadName("vm/vcpu0")}
		})
	})
	if !callerOnMain {
		t.Fatal("the test's caller is not on the main thread: the test proves nothing")
	}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tid == pid {
		t.Errorf("vCPU thread ran on the main thread (tid %d = pid)", r.tid)
	}
	if after := threadComm(t, pid); after != before {
		t.Errorf("process renamed %q -> %q by a vCPU thread", before, after)
	}
	// The main thread is free again for its own goroutine.
	var still bool
	onMain(func() { still = onMainThread() })
	if !still {
		t.Error("the main goroutine lost the main thread")
	}
}

// TestOffMainThreadElsewhere: from any other thread, f runs on the
// calling goroutine's own thread, locked.
func TestOffMainThreadElsewhere(t *testing.T) {
	done := make(chan int, 1)
	go offMainThread(func() { done <- unix.Gettid() })
	if tid := <-done; tid == os.Getpid() {
		t.Errorf("ran on the main thread")
	}
}
