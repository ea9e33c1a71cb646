package supervisor_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vtty"
	"golang.org/x/sys/unix"
)

// kernelBell is a kernel's doorbell as its window device gives it: rings
// go through the cluster's doorbell eventfds, and the kernel is woken by
// its own (what KVM's irqfd would inject).
type kernelBell struct {
	bells *ipi.Doorbells
	k     int
}

func (b kernelBell) Ring(peer int) error {
	if !b.bells.Ring(ipi.BellID{Peer: peer, Vector: 0}) {
		return ipi.ErrNoPeer
	}
	return nil
}

func (b kernelBell) Wait(ctx context.Context) error {
	fd := b.bells.KernelFd(b.k, 0)
	for ctx.Err() == nil {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(p, 50); n == 1 {
			var buf [8]byte
			unix.Read(fd, buf[:])
			return nil
		}
	}
	return ctx.Err()
}

// agentLauncher boots fake kernels whose "agent" joins the window the VM
// would map (Boot.Window), as popagent does in a guest, until the machine
// ends.
type agentLauncher struct {
	mu       sync.Mutex
	machines map[string]*agentMachine
	boots    map[string]supervisor.Boot
}

type agentMachine struct {
	cancel context.CancelFunc
	ran    chan struct{}
	once   sync.Once
	done   chan struct{}
	exit   machine.Exit
}

func (l *agentLauncher) Launch(ctx context.Context, k *cluster.Kernel, b supervisor.Boot, console *vtty.Console) (supervisor.Machine, error) {
	w := b.Window
	if w == nil || w.Bells == nil || len(w.Mem) == 0 || !w.Bells.KernelUp(k.Index) {
		return nil, errors.New("no window, or the doorbells were not told the kernel started")
	}
	node, err := msg.Join(w.Mem, k.Index, k.Name, kernelBell{w.Bells, k.Index}, msg.Options{})
	if err != nil {
		return nil, err
	}
	agent.Serve(node, k.Name, "")
	actx, cancel := context.WithCancel(context.Background())
	m := &agentMachine{cancel: cancel, ran: make(chan struct{}), done: make(chan struct{})}
	go func() { node.Run(actx); close(m.ran) }()
	l.mu.Lock()
	l.machines[k.Name] = m
	if l.boots != nil {
		l.boots[k.Name] = b
	}
	l.mu.Unlock()
	return m, nil
}

func (l *agentLauncher) get(name string) *agentMachine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.machines[name]
}

// end stops the agent (the vCPUs are out of KVM_RUN) and ends the machine.
func (m *agentMachine) end(ex machine.Exit) {
	m.once.Do(func() {
		m.cancel()
		<-m.ran
		m.exit = ex
		close(m.done)
	})
}
func (m *agentMachine) Done() <-chan struct{} { return m.done }
func (m *agentMachine) Exit() machine.Exit    { return m.exit }
func (m *agentMachine) Info() machine.Info    { return machine.Info{} }
func (m *agentMachine) Stop() error {
	m.end(machine.Exit{Kind: machine.ExitStopped})
	return nil
}

// TestWindowKernelCrashAndRejoin: a kernel's VM is announced to host peers
// when it starts; when it crashes the peer table says so at once (not after
// a heartbeat timeout) and host peers are told it left; booted again, it
// rejoins and answers.
func TestWindowKernelCrashAndRejoin(t *testing.T) {
	cl := launchableCluster(t, "story")
	l := &agentLauncher{machines: map[string]*agentMachine{}}
	c, _ := startWith(t, cl, supervisor.Options{Launcher: l})
	call := func(action, name string) (*supervisor.Response, error) {
		return c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: action, Name: name})
	}
	host, err := ipi.Dial(ctxT(t), filepath.Join(cl.RunDir, supervisor.WindowSocketName), cluster.WindowVectors)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	waitPing := func(name string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := call(supervisor.ActionPing, name)
			if err == nil && resp.Window.RTTns > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("ping %s: %v", name, err)
			}
			time.Sleep(10 * time.Millisecond) // the agent checks in on its own goroutine
		}
	}
	waitPing("primary")
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatal(err)
	}
	waitPing("secondary")
	// The host peer was sent the kernels' eventfds: it can ring them.
	waitEvent(t, host, 1, true)
	if err := host.Ring(1, 0); err != nil {
		t.Errorf("host peer rings the secondary: %v", err)
	}

	l.get("secondary").end(machine.Exit{Kind: machine.ExitCrash, Reason: "guest panic: test"})
	waitState(t, c, "secondary", supervisor.StateCrashed)
	resp, err := call(supervisor.ActionStat, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Window.Stat.Peers {
		if p.ID == 1 && p.State != msg.StateCrashed.String() {
			t.Errorf("secondary in the peer table right after its crash: %+v, want crashed", p)
		}
		if p.ID == 0 && p.State != msg.StateOnline.String() {
			t.Errorf("primary after the secondary's crash: %+v, want online", p)
		}
	}
	waitEvent(t, host, 1, false)
	var oe *supervisor.OpError
	if _, err := call(supervisor.ActionPing, "secondary"); !errors.As(err, &oe) {
		t.Errorf("ping of the crashed secondary = %v, want refused", err)
	}
	waitPing("primary")

	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatal(err)
	}
	waitPing("secondary")
	waitEvent(t, host, 1, true)
}

// TestWindowKernelRebootInVM: a kernel that reboots inside its VM (a reset
// under restart policy "always": the VM's OnReset hooks run) leaves the
// window and joins it again as a new incarnation, which host peers hear,
// and it stays reachable.
func TestWindowKernelRebootInVM(t *testing.T) {
	cl := launchableCluster(t, "rbt")
	l := &agentLauncher{machines: map[string]*agentMachine{}, boots: map[string]supervisor.Boot{}}
	c, _ := startWith(t, cl, supervisor.Options{Launcher: l})
	host, err := ipi.Dial(ctxT(t), filepath.Join(cl.RunDir, supervisor.WindowSocketName), cluster.WindowVectors)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if !slices.Contains(host.Peers(), 0) {
		t.Fatalf("host peer's peers %v lack the primary (0)", host.Peers())
	}
	l.mu.Lock()
	reset := l.boots["primary"].OnReset
	l.mu.Unlock()
	if reset == nil {
		t.Fatal("the primary's Boot has no OnReset: an in-VM reboot would go unseen by the window")
	}
	reset()
	waitEvent(t, host, 0, false)
	waitEvent(t, host, 0, true)
	if err := host.Ring(0, 0); err != nil {
		t.Errorf("host peer rings the rebooted primary: %v", err)
	}
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionStat}); err != nil {
		t.Errorf("window stat after the reboot: %v", err)
	}
}

// waitEvent waits for the host peer to hear that peer id joined or left.
func waitEvent(t *testing.T, c *ipi.Client, id int, joined bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-c.Events():
			if e.ID == id && e.Joined == joined {
				return
			}
		case <-timeout:
			t.Fatalf("host peer: no event for peer %d joined=%v", id, joined)
		}
	}
}
