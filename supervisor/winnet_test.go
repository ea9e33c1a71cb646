package supervisor_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vtty"
	"github.com/popvmm/popvmm/winnet"
)

// winnetLauncher boots fake kernels whose "driver" brings a winnet.Port up
// on the window network the VM would map (Boot.Winnet).
type winnetLauncher struct {
	mu    sync.Mutex
	ports map[string]*winnet.Port
	ms    map[string]*agentMachine
}

func (l *winnetLauncher) Launch(_ context.Context, k *cluster.Kernel, b supervisor.Boot, _ *vtty.Console) (supervisor.Machine, error) {
	wn := b.Winnet
	if wn == nil || wn.Bells == nil || !wn.Bells.KernelUp(k.Index) {
		return nil, errors.New("no window network, or its doorbells were not told the kernel started")
	}
	p, err := winnet.NewPort(wn.Mem, k.Index)
	if err != nil {
		return nil, err
	}
	p.Up()
	m := &agentMachine{cancel: func() {}, ran: make(chan struct{}), done: make(chan struct{})}
	close(m.ran)
	l.mu.Lock()
	l.ports[k.Name], l.ms[k.Name] = p, m
	l.mu.Unlock()
	return m, nil
}

func (l *winnetLauncher) port(name string) *winnet.Port {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ports[name]
}

// TestWinnetStatusAndCrash: with a window network each VM gets it with its
// doorbells told; status shows every kernel's address, state and per-peer
// counters as the kernels wrote them; a crashed kernel is marked down at
// once (senders drop for it), and booted again it is up.
func TestWinnetStatusAndCrash(t *testing.T) {
	cl := launchableCluster(t, "wn")
	cl.Winnet = cluster.Winnet{Enabled: true, Size: 1 << 20, Subnet: netip.MustParsePrefix("10.200.0.0/24")}
	for _, k := range cl.Kernels {
		k.WinnetIP = cluster.WinnetAddr(cl.Winnet.Subnet, k.Index)
	}
	l := &winnetLauncher{ports: map[string]*winnet.Port{}, ms: map[string]*agentMachine{}}
	c, _ := startWith(t, cl, supervisor.Options{Launcher: l})
	// The overlays carry the kernels' own key and known_hosts.
	ov, err := os.ReadFile(filepath.Join(cl.RunDir, "primary.overlay.cpio"))
	if err != nil || !bytes.Contains(ov, []byte(strings.TrimPrefix(guest.PeerKeyPath, "/"))) ||
		!bytes.Contains(ov, []byte(strings.TrimPrefix(guest.PeerKnownHostsPath, "/"))) {
		t.Errorf("primary's overlay lacks the kernels' key or known_hosts (%v)", err)
	}
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := l.port("primary").Send(1, make([]byte, 100)); err != nil {
			t.Fatalf("primary sends to secondary: %v", err)
		}
	}
	l.port("secondary").Receive(0, 64, func([]byte) {})
	st, err := c.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	wn := st.Winnet
	if wn == nil || wn.Subnet != "10.200.0.0/24" || len(wn.Kernels) != 2 {
		t.Fatalf("status winnet = %+v", wn)
	}
	p, s := wn.Kernels[0], wn.Kernels[1]
	if p.Address != "10.200.0.1" || !p.Up || len(p.Peers) != 1 || p.Peers[0] != (supervisor.WinnetCounts{Peer: "secondary", TxPackets: 3, TxBytes: 300}) {
		t.Errorf("primary on the window network: %+v", p)
	}
	if s.Address != "10.200.0.2" || !s.Up || len(s.Peers) != 1 || s.Peers[0].RxPackets != 3 {
		t.Errorf("secondary on the window network: %+v", s)
	}

	l.ms["secondary"].end(machine.Exit{Kind: machine.ExitCrash, Reason: "guest panic: test"})
	waitState(t, c, "secondary", supervisor.StateCrashed)
	if _, err := l.port("primary").Send(1, make([]byte, 100)); !errors.Is(err, winnet.ErrPeerDown) {
		t.Errorf("send to the crashed secondary = %v, want ErrPeerDown", err)
	}
	if st, _ := c.Status(ctxT(t)); st.Winnet.Kernels[1].Up {
		t.Errorf("status after the crash: secondary up")
	}
	if _, err := c.Call(ctxT(t), supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := l.port("primary").Send(1, make([]byte, 100)); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("send to the rebooted secondary: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
