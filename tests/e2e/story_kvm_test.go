package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/supervisor"
)

// agentDeadline bounds how long a booted kernel's agent takes to answer
// on the window after its init is up.
const agentDeadline = 3 * time.Minute

// crashCmd makes the guest report a panic through pvpanic (port 0x505,
// bit 0), as a panicking kernel does: popvmm ends that VM as crashed.
const crashCmd = `printf '\001' | dd of=/dev/port bs=1 seek=1285 count=1`

// TestKVMPopcornStory is the Popcorn story on popvmm's own kernels: a
// full and a light kernel come up with window.protect on; popvmm's node
// reaches both agents (msg ping, msg info) through the window device, its
// doorbells never leaving KVM; msg tty gives a shell of the secondary over
// the window; a host peer joins and the secondary's agent answers it; the
// secondary is crashed on purpose, the primary runs on and the peer table
// says crashed at once; booted again, the secondary rejoins; down leaves
// nothing behind.
func TestKVMPopcornStory(tt *testing.T) {
	c := newKVMCluster(tt, "story",
		kvmKernel{"primary", "full", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	cfg, err := os.ReadFile(c.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("size = \"1M\"\n"), []byte("size = \"1M\"\nprotect = true\n"), 1)
	if err := os.WriteFile(c.config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.must("up", "-d", c.config)
	c.waitConsole("primary", "popvmm-init: primary up", bootDeadline)
	c.waitConsole("secondary", "popvmm-init: secondary up", bootDeadline)
	t.Logf("both kernels at /init %.1f s after up", time.Since(start).Seconds())

	// popvmm's node reaches both kernels' agents over the window.
	for _, k := range []string{"primary", "secondary"} {
		out := c.retry(agentDeadline, "msg", "ping", "-c", c.config, k)
		t.Logf("msg ping %s: %s", k, strings.TrimSpace(out))
		out = c.must("msg", "info", "-c", c.config, k)
		if !strings.Contains(out, "Linux") {
			t.Errorf("msg info %s = %q", k, out)
		}
	}
	st := c.status()
	for i, k := range st.Kernels {
		win := windowInfo(k)
		if k.PeerID != i || !strings.Contains(win, fmt.Sprintf("peer %d", i)) {
			t.Errorf("%s: peer id %d, window device %q; want peer %d", k.Name, k.PeerID, win, i)
		}
		// Every doorbell went through an ioeventfd: none reached popvmm.
		if !strings.Contains(win, "soft doorbells 0,") {
			t.Errorf("%s: window device %q: doorbells left KVM", k.Name, win)
		}
	}

	// A shell of the secondary over the window.
	tty := c.open(t, "msg", "tty", "-c", c.config, "secondary")
	tty.wait("Ctrl-] detaches", 30*time.Second)
	io.WriteString(tty.f, "echo tty-$((6*7)) on $(hostname)\r")
	tty.wait("tty-42 on secondary", time.Minute)

	// A host peer joins; popvmm reaches it, and it reaches the secondary.
	hp := joinHostPeer(t, filepath.Join(c.runDir, supervisor.WindowSocketName), "hostpeer")
	out := c.retry(30*time.Second, "msg", "ping", "-c", c.config, "hostpeer")
	t.Logf("msg ping hostpeer: %s", strings.TrimSpace(out))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	rtt, err := hp.caller.Ping(ctx, 1)
	cancel()
	if err != nil {
		t.Errorf("host peer pings the secondary: %v", err)
	} else {
		t.Logf("host peer → secondary: %v", rtt)
	}

	// The secondary crashes on purpose; the primary runs on.
	io.WriteString(tty.f, crashCmd+"\r")
	c.waitState("secondary", supervisor.StateCrashed, time.Minute)
	tty.f.Write([]byte{0x1d})
	tty.close()
	stat := c.must("msg", "stat", "-c", c.config)
	if s := peerState(stat, "secondary"); s != "crashed" {
		t.Errorf("msg stat right after the crash: secondary is %q, want crashed\n%s", s, stat)
	}
	if s := peerState(stat, "primary"); s != "online" {
		t.Errorf("msg stat after the secondary's crash: primary is %q, want online\n%s", s, stat)
	}
	if p := c.status().Kernel("primary"); p.State != supervisor.StateRunning {
		t.Errorf("primary is %s after the secondary crashed", p.State)
	}
	c.must("msg", "ping", "-c", c.config, "primary")
	if _, err := c.popvmm("msg", "ping", "-c", c.config, "secondary"); err == nil {
		t.Errorf("msg ping of the crashed secondary succeeded")
	}

	// Booted again, the secondary rejoins.
	c.must("boot", "-c", c.config, "secondary")
	c.waitConsoleCount("secondary", "popvmm-init: secondary up", 2, bootDeadline)
	out = c.retry(agentDeadline, "msg", "ping", "-c", c.config, "secondary")
	t.Logf("after reboot, msg ping secondary: %s", strings.TrimSpace(out))
	stat = c.must("msg", "stat", "-c", c.config)
	if s := peerState(stat, "secondary"); s != "online" {
		t.Errorf("msg stat after the reboot: secondary is %q\n%s", s, stat)
	}
	t.Logf("msg stat:\n%s", stat)
	hp.close()

	// down leaves nothing: no supervisor, no sockets.
	c.down(c.status().PID)
	for _, s := range []string{supervisor.SocketName, supervisor.WindowSocketName} {
		if _, err := os.Stat(filepath.Join(c.runDir, s)); err == nil {
			t.Errorf("%s left after down", s)
		}
	}
}

// windowInfo is the kernel's window device as status shows it.
func windowInfo(k supervisor.KernelStatus) string {
	if k.Machine == nil {
		return ""
	}
	return strings.Join(k.Machine.Devs["window"], "; ")
}

// peerState is name's state in `msg stat`'s peer table.
func peerState(stat, name string) string {
	for _, l := range strings.Split(stat, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == name {
			return f[2]
		}
	}
	return ""
}

// retry runs popvmm with args until it succeeds, within d.
func (c *kvmCluster) retry(d time.Duration, args ...string) string {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, err := c.popvmm(args...)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("popvmm %s: still failing after %s: %v\n%s", strings.Join(args, " "), d, err, out)
		}
		time.Sleep(time.Second) // the agent checks in on its own; polled with a deadline
	}
}

// waitState polls status until kernel is in state want, within d.
func (c *kvmCluster) waitState(kernel string, want supervisor.State, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		k := c.status().Kernel(kernel)
		if k.State == want {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s is %s after %s, want %s", kernel, k.State, d, want)
		}
		time.Sleep(200 * time.Millisecond) // another process's state, polled with a deadline
	}
}

// waitConsoleCount waits until kernel's console log holds want n times.
func (c *kvmCluster) waitConsoleCount(kernel, want string, n int, d time.Duration) {
	c.t.Helper()
	if err := c.watchConsole(kernel, d, func(data []byte) bool { return bytes.Count(data, []byte(want)) >= n }); err != nil {
		c.t.Fatalf("%s's console did not show %q %d times: %v", kernel, want, n, err)
	}
}

// ptyCmd is a popvmm command on a pseudo-terminal.
type ptyCmd struct {
	t    testing.TB
	ex   *exec.Cmd
	f    *os.File
	out  chan []byte
	seen bytes.Buffer
}

func (c *kvmCluster) open(t testing.TB, args ...string) *ptyCmd {
	t.Helper()
	ex := exec.Command(c.bin, args...)
	f, err := pty.Start(ex)
	if err != nil {
		t.Fatal(err)
	}
	p := &ptyCmd{t: t, ex: ex, f: f, out: make(chan []byte, 64)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				p.out <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				close(p.out)
				return
			}
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *ptyCmd) wait(s string, d time.Duration) {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for !bytes.Contains(p.seen.Bytes(), []byte(s)) {
		select {
		case b, ok := <-p.out:
			if !ok {
				p.t.Fatalf("%v ended before %q; saw %q", p.ex.Args, s, p.seen.String())
			}
			p.seen.Write(b)
		case <-timer.C:
			p.t.Fatalf("%v: no %q within %s; saw %q", p.ex.Args, s, d, p.seen.String())
		}
	}
}

// close ends the command (killed if it has not exited within 10 s).
func (p *ptyCmd) close() {
	if p.ex.Process == nil {
		return
	}
	done := make(chan struct{})
	go func() { p.ex.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.ex.Process.Kill()
		<-done
	}
	p.f.Close()
	p.ex.Process = nil
}

// hostPeer is a host process on the window: an ivshmem client with a
// messaging node that answers pings and can call the kernels' agents.
type hostPeer struct {
	client *ipi.Client
	caller *agent.Caller
	cancel context.CancelFunc
	ran    chan struct{}
}

func joinHostPeer(t testing.TB, socket, name string) *hostPeer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := ipi.Dial(ctx, socket, 1)
	if err != nil {
		t.Fatalf("host peer: %v", err)
	}
	node, err := msg.Join(c.Mem, c.ID, name, ipi.Bell{C: c}, msg.Options{})
	if err != nil {
		c.Close()
		t.Fatalf("host peer: %v", err)
	}
	agent.Serve(node, name, "")
	rctx, rcancel := context.WithCancel(context.Background())
	hp := &hostPeer{client: c, caller: agent.NewCaller(node), cancel: rcancel, ran: make(chan struct{})}
	go func() { node.Run(rctx); close(hp.ran) }()
	t.Cleanup(hp.close)
	return hp
}

func (hp *hostPeer) close() {
	if hp.cancel == nil {
		return
	}
	hp.cancel()
	<-hp.ran
	hp.client.Close()
	hp.cancel = nil
}
