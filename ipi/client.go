package ipi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// PeerEvent says a peer joined or left the window.
type PeerEvent struct {
	ID     int
	Joined bool // false: left
}

// Client is a host peer of a window: its id, the window mapped, its own
// eventfds to wait on, and the other peers' eventfds to ring.
type Client struct {
	ID      int
	Mem     []byte
	vectors int
	conn    *net.UnixConn
	own     []*os.File // own eventfds, one per vector

	mu     sync.Mutex
	peers  map[int][]int // peer id → eventfds, complete once len == vectors
	events chan PeerEvent
	done   chan struct{}
	err    error
}

// Dial joins the window served at socket as a host peer with vectors
// interrupt vectors (as the server was configured).
func Dial(ctx context.Context, socket string, vectors int) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("join window at %s: %w", socket, err)
	}
	c := &Client{conn: nc.(*net.UnixConn), vectors: vectors, peers: map[int][]int{},
		events: make(chan PeerEvent, 64), done: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetReadDeadline(dl)
	}
	if err := c.greet(); err != nil {
		c.closeAll()
		return nil, fmt.Errorf("join window at %s: %w", socket, err)
	}
	c.conn.SetReadDeadline(time.Time{})
	go c.listen()
	return c, nil
}

// greet reads the server's opening: version, own id, window, the other
// peers' eventfds, then this client's own.
func (c *Client) greet() error {
	v, fd, err := recvMsg(c.conn)
	if err != nil {
		return err
	}
	if v != ProtocolVersion || fd >= 0 {
		closeFd(fd)
		return fmt.Errorf("%w: version %d, want %d", errProtocol, v, ProtocolVersion)
	}
	id, fd, err := recvMsg(c.conn)
	if err != nil {
		return err
	}
	if id < 0 || id >= 1<<16 || fd >= 0 {
		closeFd(fd)
		return fmt.Errorf("%w: bad own id %d", errProtocol, id)
	}
	c.ID = int(id)
	m, shm, err := recvMsg(c.conn)
	if err != nil {
		return err
	}
	if m != shmID || shm < 0 {
		closeFd(shm)
		return fmt.Errorf("%w: expected the window fd, got message %d", errProtocol, m)
	}
	size, err := fdSize(shm)
	if err == nil {
		c.Mem, err = MapFd(shm, size)
	}
	unix.Close(shm)
	if err != nil {
		return err
	}
	for len(c.own) < c.vectors {
		pid, fd, err := recvMsg(c.conn)
		if err != nil {
			return err
		}
		if fd < 0 {
			return fmt.Errorf("%w: peer %d message without eventfd during greeting", errProtocol, pid)
		}
		if pid == int64(c.ID) {
			unix.SetNonblock(fd, true)
			c.own = append(c.own, os.NewFile(uintptr(fd), fmt.Sprintf("eventfd-%d-%d", c.ID, len(c.own))))
			continue
		}
		if err := c.addPeerFd(pid, fd, false); err != nil {
			return err
		}
	}
	return nil
}

// addPeerFd records one eventfd of peer pid; the peer counts as joined
// once all its vectors arrived.
func (c *Client) addPeerFd(pid int64, fd int, announce bool) error {
	if pid < 0 || pid >= 1<<16 {
		unix.Close(fd)
		return fmt.Errorf("%w: peer id %d", errProtocol, pid)
	}
	c.mu.Lock()
	fds := c.peers[int(pid)]
	if len(fds) >= c.vectors {
		c.mu.Unlock()
		unix.Close(fd)
		return fmt.Errorf("%w: peer %d has more than %d vectors", errProtocol, pid, c.vectors)
	}
	c.peers[int(pid)] = append(fds, fd)
	complete := len(fds)+1 == c.vectors
	c.mu.Unlock()
	if complete && announce {
		c.emit(PeerEvent{ID: int(pid), Joined: true})
	}
	return nil
}

func (c *Client) emit(e PeerEvent) {
	select {
	case c.events <- e:
	default: // a consumer that does not read loses events, not the client
	}
}

// listen follows joins and departures until the server goes.
func (c *Client) listen() {
	defer close(c.done)
	defer close(c.events)
	for {
		pid, fd, err := recvMsg(c.conn)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) {
				c.setErr(err)
			}
			return
		}
		if fd >= 0 {
			if err := c.addPeerFd(pid, fd, true); err != nil {
				c.setErr(err)
				return
			}
			continue
		}
		c.mu.Lock()
		fds, ok := c.peers[int(pid)]
		delete(c.peers, int(pid))
		c.mu.Unlock()
		for _, f := range fds {
			unix.Close(f)
		}
		if ok {
			c.emit(PeerEvent{ID: int(pid), Joined: false})
		}
	}
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Events delivers peer joins and departures; it is closed when the server
// connection ends.
func (c *Client) Events() <-chan PeerEvent { return c.events }

// Peers lists the ids of the other peers whose eventfds are all known.
func (c *Client) Peers() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []int
	for id, fds := range c.peers {
		if len(fds) == c.vectors {
			ids = append(ids, id)
		}
	}
	return ids
}

// ErrNoPeer is returned when ringing a peer that is not (or no longer) there.
var ErrNoPeer = errors.New("no such peer")

// Ring interrupts peer on vector: one eventfd write, no server involved.
func (c *Client) Ring(peer, vector int) error {
	c.mu.Lock()
	fds := c.peers[peer]
	if vector < 0 || vector >= len(fds) || len(fds) != c.vectors {
		c.mu.Unlock()
		return fmt.Errorf("ring %d/%d: %w", peer, vector, ErrNoPeer)
	}
	fd := fds[vector]
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	_, err := unix.Write(fd, one[:])
	c.mu.Unlock()
	if err != nil && !errors.Is(err, unix.EAGAIN) { // EAGAIN: counter saturated, still pending
		return fmt.Errorf("ring %d/%d: %w", peer, vector, os.NewSyscallError("write", err))
	}
	return nil
}

// Wait blocks until this client is rung on vector or ctx ends, and returns
// how many rings arrived since the last Wait.
func (c *Client) Wait(ctx context.Context, vector int) (uint64, error) {
	if vector < 0 || vector >= len(c.own) {
		return 0, fmt.Errorf("vector %d of %d", vector, len(c.own))
	}
	f := c.own[vector]
	// Cancellation sets a read deadline; the mutex keeps a late-running
	// cancellation from leaving that deadline behind for the next Wait.
	var mu sync.Mutex
	finished := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			f.SetReadDeadline(time.Now())
		}
	})
	var b [8]byte
	_, err := f.Read(b[:])
	mu.Lock()
	finished = true
	mu.Unlock()
	stop()
	f.SetReadDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Close leaves the window: the server announces the departure to the
// other peers. The mapping is released, so every user of Mem (a msg.Node's
// Run) must have stopped first.
func (c *Client) Close() error {
	c.conn.Close()
	<-c.done
	c.closeAll()
	return nil
}

func (c *Client) closeAll() {
	c.conn.Close()
	c.mu.Lock()
	for id, fds := range c.peers {
		for _, f := range fds {
			unix.Close(f)
		}
		delete(c.peers, id)
	}
	c.mu.Unlock()
	for _, f := range c.own {
		f.Close()
	}
	c.own = nil
	if c.Mem != nil {
		Unmap(c.Mem)
		c.Mem = nil
	}
}

func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// Bell is a client's doorbell on one vector, in the form the messaging
// layer (package ipi/msg) takes.
type Bell struct {
	C      *Client
	Vector int
}

// Ring interrupts peer.
func (b Bell) Ring(peer int) error { return b.C.Ring(peer, b.Vector) }

// Wait blocks until this client is rung or ctx ends.
func (b Bell) Wait(ctx context.Context) error {
	_, err := b.C.Wait(ctx, b.Vector)
	return err
}
