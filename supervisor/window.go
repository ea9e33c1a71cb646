package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/machine"
)

// WindowSocketName is the ivshmem server's socket in the run directory:
// host processes (popagent, any ivshmem client) join the window there.
const WindowSocketName = cluster.WindowSocketName

// windowHost is the cluster's shared window as the supervisor runs it: the
// memfd, formatted for the messaging protocol, the doorbells (one eventfd
// per peer and vector, shared by the VMs' window devices and the ivshmem
// server), the ivshmem server for host peers, and popvmm's own node on it
// (a host peer named "popvmm").
type windowHost struct {
	win      *ipi.Window
	mem      []byte
	bells    *ipi.Doorbells
	maxPeers int
	protect  bool
	socket   string
	peer     *ipi.HostPeer // popvmm's own node
	node     *msg.Node     // peer.Node
	caller   *agent.Caller
	watch    *agent.MigrationWatch // migrations in flight, for status
	wg       sync.WaitGroup
	cancel   context.CancelFunc
}

func (s *Supervisor) startWindow(ctx context.Context, runDir string) (_ *windowHost, err error) {
	kernels := len(s.cl.Kernels)
	maxPeers := s.cl.WindowPeers()
	w := &windowHost{socket: filepath.Join(runDir, WindowSocketName), maxPeers: maxPeers, protect: s.cl.Window.Protect}
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	if w.win, err = ipi.NewWindow(s.cl.Name, int64(s.cl.Window.Size)); err != nil {
		return nil, err
	}
	if w.mem, err = w.win.Map(); err != nil {
		return nil, err
	}
	if _, err = msg.Format(w.mem, maxPeers); err != nil {
		return nil, err
	}
	// A host peer that disconnects is gone, whatever its own section
	// says; only popvmm writes this for it. The server reports the
	// departure before it can give the id to a new peer, so the mark is for
	// the incarnation that left (its generation now), never the next one.
	var node atomic.Pointer[msg.Node]
	onLeave := func(id int) {
		if n := node.Load(); n != nil {
			n.MarkGone(id, n.Generation(id), false)
		}
	}
	if w.bells, err = ipi.NewDoorbells(kernels, maxPeers-kernels, cluster.WindowVectors); err != nil {
		return nil, err
	}
	srv, err := ipi.NewServer(w.win, ipi.ServerConfig{Vectors: cluster.WindowVectors, FirstID: kernels,
		MaxPeers: maxPeers - kernels, OnLeave: onLeave, Doorbells: w.bells}, s.log)
	if err != nil {
		return nil, err
	}
	ln, err := listenWindowSocket(w.socket)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	w.wg.Go(func() {
		if err := srv.Serve(sctx, ln); err != nil {
			s.log.Error("window server stopped", "err", err)
		}
	})
	if err := s.joinOwnNode(sctx, w); err != nil {
		return nil, err
	}
	node.Store(w.node)
	s.log.Info("shared window ready", "size", s.cl.Window.Size, "peers", maxPeers, "socket", w.socket)
	return w, nil
}

// listenWindowSocket listens on the ivshmem server's socket at path (0600),
// removing one a previous supervisor left.
func listenWindowSocket(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale window socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on window socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("window socket: %w", err)
	}
	return ln, nil
}

// joinOwnNode joins popvmm's own node to the window as a host peer named
// "popvmm", with the kernels' names reserved for their peer ids (no host
// peer may answer for them), refuses impostors and makes the agent caller
// of `popvmm msg`; it runs until ctx ends.
func (s *Supervisor) joinOwnNode(ctx context.Context, w *windowHost) (err error) {
	w.peer, err = ipi.JoinHostPeer(ctx, ipi.HostPeerConfig{Socket: w.socket, Name: "popvmm",
		Vectors: cluster.WindowVectors, Reserved: kernelNames(s.cl)})
	if err != nil {
		return err
	}
	w.node = w.peer.Node
	w.caller = agent.NewCaller(w.node)
	w.watch = agent.WatchMigrations(w.node)
	w.wg.Go(func() { s.refuseImpostors(ctx, w.node) })
	w.wg.Go(func() {
		<-w.peer.Done()
		if err := w.peer.Err(); err != nil {
			s.log.Error("popvmm's window node stopped", "err", err)
		}
	})
	return nil
}

// stop leaves the window and releases it; safe on a half-built windowHost.
func (w *windowHost) stop() {
	if w.cancel != nil {
		w.cancel()
	}
	// The server (whose OnLeave writes through popvmm's node) and the
	// node's Run must have returned before the node's mapping goes.
	w.wg.Wait()
	if w.peer != nil {
		w.peer.Close()
	}
	if w.bells != nil {
		w.bells.Close() // the VMs are gone, the server has stopped
	}
	if w.mem != nil {
		ipi.Unmap(w.mem)
	}
	if w.win != nil {
		w.win.Close()
	}
	os.Remove(w.socket)
}

// kernelNames are the names of cl's kernels, each reserved for its peer id.
func kernelNames(cl *cluster.Cluster) []string {
	names := make([]string, len(cl.Kernels))
	for i, k := range cl.Kernels {
		names[i] = k.Name
	}
	return names
}

// refuseImpostors marks offline, in the peer table, every peer that checks
// in under a name reserved for another peer id (a host process calling
// itself a kernel), so no peer reaches it under that name. A peer can
// check in again at once: the line goes through guestLog.
func (s *Supervisor) refuseImpostors(ctx context.Context, n *msg.Node) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-n.Events():
			if e.State != msg.StateOnline {
				continue
			}
			if owner, ok := n.ReservedFor(e.Name); ok && owner != e.Peer {
				n.MarkGone(e.Peer, e.Generation, false)
				s.guestLog.Warn("window peer refused: it checked in under a kernel's name", "peer", e.Peer, "name", e.Name, "kernel_peer", owner)
			}
		}
	}
}

// attach is what the launcher needs to give a VM its window device.
func (w *windowHost) attach() *machine.Window {
	return &machine.Window{Bells: w.bells, Mem: w.mem, MaxPeers: w.maxPeers, Protect: w.protect}
}
