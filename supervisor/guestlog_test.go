package supervisor_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/syncbuf"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/supervisor"
)

// startLogged runs a supervisor for cl whose log goes to the buffer it
// returns.
func startLogged(t *testing.T, cl *cluster.Cluster, opt supervisor.Options) (supervisor.Client, *syncbuf.Buffer) {
	t.Helper()
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ready := make(chan string, 1)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	opt.Ready = func(s string) { ready <- s }
	go func() { done <- supervisor.New(cl, log).Run(ctx, opt) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("supervisor did not stop on cancel")
		}
	})
	select {
	case s := <-ready:
		return supervisor.Client{Socket: s}, &logs
	case err := <-done:
		t.Fatalf("Run = %v before ready", err)
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor not ready within 10s")
	}
	return supervisor.Client{}, nil
}

// countLines counts the log lines whose message is msg.
func countLines(logs *syncbuf.Buffer, msg string) int {
	return strings.Count(logs.String(), "msg="+`"`+msg+`"`)
}

// TestGuestRebootLoopLogBounded: a guest that reboots without end
// (restart policy "always": a crash loop, `reboot -f` in a boot script)
// makes the supervisor log a line per reboot. supervisor.log is never
// rotated, so those lines are rate-limited like every other line a guest
// causes (internal/ratelog), the held-back ones counted.
func TestGuestRebootLoopLogBounded(t *testing.T) {
	cl := launchableCluster(t, "rbtlog")
	l := &agentLauncher{machines: map[string]*agentMachine{}, boots: map[string]supervisor.Boot{}}
	_, logs := startLogged(t, cl, supervisor.Options{Launcher: l})
	l.mu.Lock()
	reset := l.boots["primary"].OnReset
	l.mu.Unlock()
	if reset == nil {
		t.Fatal("the primary's Boot has no OnReset")
	}
	const reboots = 200
	for range reboots {
		reset()
	}
	const rebooted = "kernel rebooted inside its VM; the window knows it as a new incarnation"
	if n := countLines(logs, rebooted); n == 0 || n > ratelog.DefaultBurst {
		t.Errorf("%d reboots inside the VM logged %q %d times, want 1 to %d (rate-limited)", reboots, rebooted, n, ratelog.DefaultBurst)
	}
}

// TestImpostorCheckInLogBounded: a kernel (or host peer) that checks in
// under another kernel's name again and again is refused each time, and
// logged at most ratelog.DefaultBurst times an interval.
func TestImpostorCheckInLogBounded(t *testing.T) {
	cl := launchableCluster(t, "implog")
	_, logs := startLogged(t, cl, supervisor.Options{NoVMM: "no KVM in this test"})
	client, err := ipi.Dial(ctxT(t), filepath.Join(cl.RunDir, supervisor.WindowSocketName), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const refused = "window peer refused: it checked in under a kernel's name"
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && countLines(logs, refused) <= ratelog.DefaultBurst {
		if _, err := msg.Join(client.Mem, client.ID, "primary", ipi.Bell{C: client}, msg.Options{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond) // the supervisor's node sees each check-in at its next scan
	}
	if n := countLines(logs, refused); n == 0 || n > ratelog.DefaultBurst {
		t.Errorf("an impostor checking in again and again for 2 s logged %q %d times, want 1 to %d (rate-limited)", refused, n, ratelog.DefaultBurst)
	}
}
