package supervisor_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vtty"
)

// fakeLauncher starts fakeMachines and remembers them by kernel.
type fakeLauncher struct {
	mu       sync.Mutex
	machines map[string][]*fakeMachine
	fail     map[string]error
	launched chan string
}

func (l *fakeLauncher) Launch(ctx context.Context, k *cluster.Kernel, boot supervisor.Boot, console *vtty.Console) (supervisor.Machine, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.fail[k.Name]; err != nil {
		return nil, err
	}
	if !strings.Contains(boot.Cmdline, "popvmm.name="+k.Name) || !strings.HasSuffix(string(boot.Initrd), "overlay") && len(boot.Initrd) == 0 {
		return nil, errors.New("bad boot files")
	}
	console.Write([]byte("hello from " + k.Name + "\n"))
	m := &fakeMachine{done: make(chan struct{}), name: k.Name}
	l.machines[k.Name] = append(l.machines[k.Name], m)
	l.launched <- k.Name
	return m, nil
}

func (l *fakeLauncher) last(name string) *fakeMachine {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := l.machines[name]
	return ms[len(ms)-1]
}

type fakeMachine struct {
	name    string
	once    sync.Once
	done    chan struct{}
	exit    machine.Exit
	stopped int
	mu      sync.Mutex
}

func (m *fakeMachine) end(ex machine.Exit) {
	m.once.Do(func() { m.exit = ex; close(m.done) })
}
func (m *fakeMachine) Done() <-chan struct{} { return m.done }
func (m *fakeMachine) Exit() machine.Exit    { return m.exit }
func (m *fakeMachine) Info() machine.Info {
	return machine.Info{VCPUs: []machine.VCPUInfo{{TID: 42, Affinity: []int{0}}}}
}
func (m *fakeMachine) Stop() error {
	m.mu.Lock()
	m.stopped++
	m.mu.Unlock()
	m.end(machine.Exit{Kind: machine.ExitStopped})
	return nil
}

// waitState polls status until kernel name is in state want (the event
// comes from the supervisor's own goroutine; a deadline bounds it).
func waitState(t *testing.T, c supervisor.Client, name string, want supervisor.State) *supervisor.KernelStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if k := st.Kernel(name); k != nil && k.State == want {
			return k
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel %s: state %s, want %s", name, st.Kernel(name).State, want)
		}
		time.Sleep(5 * time.Millisecond) // polling a state over the socket, not synchronising on time
	}
}

func TestLifecycle(t *testing.T) {
	cl := launchableCluster(t, "life")
	l := &fakeLauncher{machines: map[string][]*fakeMachine{}, fail: map[string]error{}, launched: make(chan string, 16)}
	c, done := startWith(t, cl, supervisor.Options{Launcher: l})

	// up booted the `up` kernel before saying ready; the manual one waits.
	if got := <-l.launched; got != "primary" {
		t.Fatalf("first launch %s, want primary", got)
	}
	p := waitState(t, c, "primary", supervisor.StateRunning)
	if p.Machine == nil || p.Machine.VCPUs[0].TID != 42 || p.Boots != 1 || p.PTY == "" {
		t.Errorf("primary status = %+v", p)
	}
	waitState(t, c, "secondary", supervisor.StateDefined)

	// boot starts the manual kernel; a second boot while it runs is refused.
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatalf("boot secondary: %v", err)
	}
	<-l.launched
	waitState(t, c, "secondary", supervisor.StateRunning)
	var oe *supervisor.OpError
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); !errors.As(err, &oe) || oe.Code != supervisor.CodeState {
		t.Errorf("second boot = %v, want %s", err, supervisor.CodeState)
	}

	// attach's view: PTY and replay.
	resp, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpConsole, Name: "secondary"})
	if err != nil || resp.Console == nil || resp.Console.PTY == "" {
		t.Fatalf("console = %+v, %v", resp, err)
	}

	// A crash stops only that kernel, with its reason kept.
	l.last("secondary").end(machine.Exit{Kind: machine.ExitCrash, Reason: "triple fault at rip 0x1000"})
	s := waitState(t, c, "secondary", supervisor.StateCrashed)
	if s.Exit == nil || !strings.Contains(s.Exit.Reason, "triple fault") || s.Machine != nil {
		t.Errorf("crashed secondary status = %+v", s)
	}
	waitState(t, c, "primary", supervisor.StateRunning)

	// A power-off stops the kernel, which boots again on request; booting
	// a crashed kernel again works.
	l.last("primary").end(machine.Exit{Kind: machine.ExitPoweroff, Reason: "guest powered off"})
	waitState(t, c, "primary", supervisor.StateStopped)
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "primary"}); err != nil {
		t.Fatalf("boot stopped primary again: %v", err)
	}
	<-l.launched
	if p := waitState(t, c, "primary", supervisor.StateRunning); p.Boots != 2 {
		t.Errorf("primary after power-off and boot: boots %d, want 2", p.Boots)
	}
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatalf("boot crashed secondary again: %v", err)
	}
	<-l.launched
	waitState(t, c, "secondary", supervisor.StateRunning)

	if err := c.Down(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after down = %v", err)
	}
	for name, ms := range l.machines {
		for i, m := range ms {
			if m.stopped == 0 {
				t.Errorf("%s machine %d never stopped", name, i)
			}
		}
	}
	log, _ := os.ReadFile(cl.Kernel("secondary").ConsoleLog)
	if !strings.Contains(string(log), "hello from secondary") {
		t.Errorf("secondary console log = %q", log)
	}
}

func TestUpFailsWhenAKernelCannotStart(t *testing.T) {
	root := t.TempDir()
	cl := testCluster(t, root, "fail")
	for _, k := range cl.Kernels {
		k.InitrdPath = filepath.Join(root, "missing.cpio")
		k.ConsoleLog = filepath.Join(root, k.Name+".log")
	}
	l := &fakeLauncher{machines: map[string][]*fakeMachine{}, launched: make(chan string, 4)}
	err := supervisor.New(cl, quiet).Run(context.Background(), supervisor.Options{Launcher: l})
	if err == nil || !strings.Contains(err.Error(), `kernel "primary"`) || !strings.Contains(err.Error(), "initrd") {
		t.Fatalf("Run = %v, want the primary's initrd named", err)
	}
	if _, err := os.Stat(filepath.Join(cl.RunDir, supervisor.SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}
