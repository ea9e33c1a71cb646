package ipi

import (
	"context"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/ipi/msg"
)

// HostPeerConfig says how a host process joins a cluster's window.
type HostPeerConfig struct {
	// Socket is popvmm's ivshmem server socket (RUNDIR/ivshmem.sock).
	Socket string
	// Name is the name the peer checks in under in the peer table.
	Name string
	// Vectors is the server's doorbell vectors per peer; 0 means 1.
	Vectors int
	// Reserved are names no host peer may answer for (the kernels'),
	// given to Node.Reserve before the node runs.
	Reserved []string
	// Serve, if set, registers the node's services (msg.Node's handlers)
	// after it joined and before it runs, so that no message it is sent
	// early finds its handler missing.
	Serve   func(*msg.Node)
	Options msg.Options
}

// HostPeer is a host process on a cluster's window: a Client of popvmm's
// ivshmem server and a msg.Node joined on its window, running on a
// goroutine of its own until Close. It is the one way popvmm's own node,
// `popvmm tty` and popagent's host mode join.
type HostPeer struct {
	Client *Client
	Node   *msg.Node

	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed
	close  sync.Once
}

// JoinHostPeer dials the server at cfg.Socket, joins the window's peer
// table as cfg.Name and runs the node until Close or until ctx ends.
func JoinHostPeer(ctx context.Context, cfg HostPeerConfig) (*HostPeer, error) {
	vectors := max(cfg.Vectors, 1)
	c, err := Dial(ctx, cfg.Socket, vectors)
	if err != nil {
		return nil, err
	}
	n, err := msg.Join(c.Mem, c.ID, cfg.Name, Bell{C: c}, cfg.Options)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("join window at %s as %q: %w", cfg.Socket, cfg.Name, err)
	}
	n.Reserve(cfg.Reserved)
	if cfg.Serve != nil {
		cfg.Serve(n)
	}
	rctx, cancel := context.WithCancel(ctx)
	p := &HostPeer{Client: c, Node: n, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = n.Run(rctx)
	}()
	return p, nil
}

// Done is closed when the node has stopped running (Close, or the
// context of JoinHostPeer ended, or Run failed; Err says which).
func (p *HostPeer) Done() <-chan struct{} { return p.done }

// Err is the node's Run error once Done is closed: nil when it was
// stopped.
func (p *HostPeer) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Close stops the node, waits for its Run to return (it checks the peer
// out of the table), then leaves the server and unmaps the window. Safe to
// call twice.
func (p *HostPeer) Close() error {
	var err error
	p.close.Do(func() {
		p.cancel()
		<-p.done
		err = p.Client.Close()
	})
	return err
}
