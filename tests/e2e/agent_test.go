package e2e

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/ipitest"
	"github.com/popvmm/popvmm/ipi/msg"
)

// TestAgentInGuestQEMU is the in-guest path of the messaging layer: the
// full image boots under QEMU (TCG, -M pc) with QEMU's ivshmem-doorbell
// device attached to popvmm's ivshmem server (ipi.Server);
// the guest's popagent, started from /etc/popvmm/init.d, takes the window
// device through uio_pci_generic and checks in; the host pings it and asks
// for its kernel's info over the window. Under popvmm's own VMM the same
// agent meets popvmm's window device instead.
func TestAgentInGuestQEMU(t *testing.T) {
	requireImages(t, "full")
	sock, _ := ipitest.Serve(t, 16<<20, 8, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 8})
	host, err := ipi.Dial(context.Background(), sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	node, err := msg.Join(host.Mem, host.ID, "popvmm", ipi.Bell{C: host}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	caller := agent.NewCaller(node)
	rctx, stopRun := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { node.Run(rctx); close(ran) }()
	defer func() { stopRun(); <-ran; host.Close() }()

	g := prepareGuest(t, "full", "e2e-agent", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	con := startQEMU(t, ctx, []string{"-M", "pc", "-accel", "tcg", "-cpu", "kvm64,-cx16,-xsave,-popcnt", "-m", "256", "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", g.vmlinux, "-initrd", g.initrd, "-append", g.cmdline(),
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
		"-chardev", "socket,path=" + sock + ",id=ivs", "-device", "ivshmem-doorbell,chardev=ivs,vectors=1"})
	con.waitFor(t, "popvmm-init: e2e-agent up", 5*time.Minute)

	// Wait for the guest's agent to check in on the window.
	peer := -1
	deadline := time.Now().Add(2 * time.Minute)
	for peer < 0 {
		for _, p := range node.Peers() {
			if p.Name == "e2e-agent" && p.State == msg.StateOnline.String() {
				peer = p.ID
			}
		}
		if peer >= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest agent never checked in; peers %+v; console:\n%s", node.Peers(), con.text())
		}
		time.Sleep(50 * time.Millisecond) // the peer table is shared memory: nothing to wait on
	}
	rctx2, cancel2 := context.WithTimeout(ctx, time.Minute)
	defer cancel2()
	rtt, err := caller.Ping(rctx2, peer)
	if err != nil {
		t.Fatalf("ping guest agent (peer %d): %v; console:\n%s", peer, err, con.text())
	}
	info, err := caller.Info(rctx2, peer)
	if err != nil || info.Name != "e2e-agent" || !strings.HasPrefix(info.Release, "6.1.") {
		t.Fatalf("info from guest agent = %+v, %v", info, err)
	}
	t.Logf("guest agent peer %d: ping %v (TCG), info %+v", peer, rtt, info)

	// The inter-kernel TTY: a shell of the guest over the window.
	var ttyOut strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return ttyOut.Write(p) })
	tctx, cancel3 := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel3()
	// Type like a person: after the prompt (the shell's line editor
	// discards what comes before it starts), then leave.
	in, typist := io.Pipe()
	go func() {
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			ready := strings.Contains(ttyOut.String(), "# ")
			mu.Unlock()
			if ready {
				break
			}
		}
		io.WriteString(typist, "echo guest-$((6*7)) $(hostname); exit\n")
	}()
	t0 := time.Now()
	if err := agent.TTY(tctx, node, peer, in, w); err != nil {
		t.Fatalf("tty to guest: %v", err)
	}
	if time.Since(t0) > time.Minute {
		t.Errorf("tty session took %v: the shell did not exit", time.Since(t0))
	}
	mu.Lock()
	got := ttyOut.String()
	mu.Unlock()
	t.Logf("tty session: %v, output %q", time.Since(t0), got)
	if !strings.Contains(got, "guest-42 e2e-agent") {
		t.Errorf("guest tty output %q lacks the command's result", got)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
