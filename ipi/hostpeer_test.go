package ipi_test

import (
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
	"github.com/popvmm/popvmm/ipi/msg"
)

// TestHostPeer: two host peers join a formatted window through the
// server, each sees the other online under its name, reserved names
// resolve to their owner only, and Close checks a peer out of the table,
// leaves the server and is safe twice.
func TestHostPeer(t *testing.T) {
	sock, _ := ipitest.Serve(t, 1<<20, 4, ipi.ServerConfig{Vectors: 1, FirstID: 1, MaxPeers: 3})
	served := map[string]bool{}
	join := func(name string) *ipi.HostPeer {
		t.Helper()
		p, err := ipi.JoinHostPeer(ctxT(t), ipi.HostPeerConfig{Socket: sock, Name: name, Reserved: []string{"kernel0"},
			Serve: func(n *msg.Node) { served[name] = n != nil }})
		if err != nil {
			t.Fatalf("JoinHostPeer(%s): %v", name, err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	a := join("a")
	b := join("b")
	if !served["a"] || !served["b"] {
		t.Errorf("Serve ran for %v, want a and b", served)
	}
	online := func(p *ipi.HostPeer, peer int, want msg.State) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for p.Node.PeerState(peer) != want {
			select {
			case <-p.Node.Events():
			case <-timeout:
				t.Fatalf("peer %d: state %v, want %v", peer, p.Node.PeerState(peer), want)
			}
		}
	}
	online(a, b.Client.ID, msg.StateOnline)
	if id, ok := a.Node.PeerByName("b"); !ok || id != b.Client.ID {
		t.Errorf("a: PeerByName(b) = %d, %v; want %d", id, ok, b.Client.ID)
	}
	if owner, ok := a.Node.ReservedFor("kernel0"); !ok || owner != 0 {
		t.Errorf("a: ReservedFor(kernel0) = %d, %v; want 0 (Reserved given before Run)", owner, ok)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-b.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if err := b.Err(); err != nil {
		t.Errorf("Err after Close = %v, want nil", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	online(a, b.Client.ID, msg.StateOffline)
}

// TestJoinHostPeerRefused: a server that is not there, and a window that is
// not formatted, are errors naming the socket, and leave nothing joined.
func TestJoinHostPeerRefused(t *testing.T) {
	if _, err := ipi.JoinHostPeer(ctxT(t), ipi.HostPeerConfig{Socket: t.TempDir() + "/none.sock", Name: "x"}); err == nil {
		t.Error("JoinHostPeer(no server) = nil error")
	}
	sock, srv := ipitest.Serve(t, 1<<20, 0, ipi.ServerConfig{Vectors: 1, MaxPeers: 2})
	if _, err := ipi.JoinHostPeer(ctxT(t), ipi.HostPeerConfig{Socket: sock, Name: "x"}); err == nil {
		t.Error("JoinHostPeer(unformatted window) = nil error")
	}
	waitPeers(t, srv, func(p []int) bool { return len(p) == 0 })
}
