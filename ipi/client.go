package ipi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	evfd "github.com/popvmm/popvmm/internal/eventfd"
)

// PeerEvent says a peer joined or left the window.
type PeerEvent struct {
	ID     int
	Joined bool // false: left
	// Incarnation tells the stays of one id apart: every join gets a new,
	// larger number (counted by this client), and the departure carries
	// its join's. A consumer that acts on a departure later checks it
	// still concerns the incarnation it knows under that id.
	Incarnation uint64
}

// Client is a host peer of a window: its id, the window mapped, its own
// eventfds to wait on, and the other peers' eventfds to ring.
type Client struct {
	ID      int
	Mem     []byte
	vectors int
	conn    *net.UnixConn
	own     []*os.File // own eventfds, one per vector

	// The message loop's state: a peer whose eventfds are arriving, and
	// the peer the last message was about.
	assembling, last int

	mu     sync.Mutex
	peers  map[int]*clientPeer
	incs   uint64 // incarnations handed out
	events chan PeerEvent
	done   chan struct{}
	err    error
}

type clientPeer struct {
	fds []int // complete once len == vectors
	inc uint64
}

// handshakeTimeout bounds Dial's greeting when its context allows longer:
// a server that accepts and says nothing cannot hang Dial.
const handshakeTimeout = 10 * time.Second

// greetGap bounds the silence inside a greeting: once the server has sent
// the window it sends the rest at once, so a gap this long means it sent
// all it will.
const greetGap = time.Second

// Dial joins the window served at socket as a host peer with vectors
// interrupt vectors (as the server was configured; a server with another
// count is a protocol error naming both). The greeting ends with ctx, or
// handshakeTimeout, whichever comes first.
func Dial(ctx context.Context, socket string, vectors int) (*Client, error) {
	if vectors < 1 || vectors > MaxVectors {
		return nil, fmt.Errorf("join window at %s: %d vectors, want 1-%d", socket, vectors, MaxVectors)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("join window at %s: %w", socket, err)
	}
	c := &Client{conn: nc.(*net.UnixConn), vectors: vectors, peers: map[int]*clientPeer{},
		assembling: -1, last: -1, events: make(chan PeerEvent, 64), done: make(chan struct{})}
	deadline := time.Now().Add(handshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	// Cancellation cuts a read short through the read deadline; the mutex
	// keeps the greeting from setting a later deadline over it.
	var cancel struct {
		sync.Mutex
		done bool
	}
	stop := context.AfterFunc(ctx, func() {
		cancel.Lock()
		defer cancel.Unlock()
		cancel.done = true
		c.conn.SetReadDeadline(time.Now())
	})
	err = c.greet(func(dl time.Time) bool {
		cancel.Lock()
		defer cancel.Unlock()
		if !cancel.done {
			c.conn.SetReadDeadline(minTime(dl, deadline))
		}
		return !cancel.done
	})
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		c.closeAll()
		return nil, fmt.Errorf("join window at %s: %w", socket, err)
	}
	c.conn.SetReadDeadline(time.Time{})
	go c.listen()
	return c, nil
}

// greet reads the server's opening: version, own id, window, the other
// peers' eventfds, then this client's own. Every read has a deadline, set
// through setDeadline (which caps it at the handshake's and reports false
// once the handshake was cancelled).
func (c *Client) greet(setDeadline func(time.Time) bool) error {
	g := &greeting{conn: c.conn, setDeadline: setDeadline}
	v, err := g.readValue("version")
	if err != nil {
		return err
	}
	if v != ProtocolVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrProtocol, v, ProtocolVersion)
	}
	id, err := g.readValue("own id")
	if err != nil {
		return err
	}
	if id < 0 || id > maxPeerID {
		return fmt.Errorf("%w: own id %d out of range 0-%d", ErrProtocol, id, maxPeerID)
	}
	c.ID = int(id)
	if err := c.mapWindow(g); err != nil {
		return err
	}
	g.gap = time.Now() // the window came: the rest follows at once
	if err := c.readEventfds(g); err != nil {
		return err
	}
	return c.refuseExtraVectors(setDeadline)
}

// greeting reads the server's greeting, one message at a time, each under
// a deadline: the handshake's, and once the window came (gap set) also
// greetGap from the message before.
type greeting struct {
	conn        *net.UnixConn
	setDeadline func(time.Time) bool
	gap         time.Time
}

// read reads one message: its value and its fd (-1: none). A deadline
// that ends inside the gap after the window is errGap.
func (g *greeting) read() (int64, int, error) {
	var dl time.Time // none of its own: the handshake's
	if !g.gap.IsZero() {
		g.gap = time.Now().Add(greetGap)
		dl = g.gap
	}
	if !g.setDeadline(dl) {
		return 0, -1, context.Canceled // Dial reports the context's error
	}
	v, fd, err := recvMsg(g.conn)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && !g.gap.IsZero() && !time.Now().Before(g.gap):
		return 0, -1, errGap
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, -1, fmt.Errorf("server's greeting incomplete at the handshake's deadline: %w", err)
	case errors.Is(err, io.EOF):
		return 0, -1, fmt.Errorf("%w: server closed the connection during the greeting", ErrProtocol)
	}
	return v, fd, err
}

// readValue reads a message that carries a value and no fd (what names
// it in the error).
func (g *greeting) readValue(what string) (int64, error) {
	v, fd, err := g.read()
	if err != nil {
		return 0, err
	}
	if fd >= 0 {
		unix.Close(fd)
		return 0, fmt.Errorf("%w: %s message carries an fd", ErrProtocol, what)
	}
	return v, nil
}

// mapWindow reads the window's fd and maps the window.
func (c *Client) mapWindow(g *greeting) error {
	m, shm, err := g.read()
	if err != nil {
		return err
	}
	if m != shmID || shm < 0 {
		closeFd(shm)
		return fmt.Errorf("%w: expected the window fd, got message %d (fd %v)", ErrProtocol, m, shm >= 0)
	}
	defer unix.Close(shm)
	size, err := fdSize(shm)
	if err == nil && size <= 0 {
		err = fmt.Errorf("%w: window of %d bytes", ErrProtocol, size)
	}
	if err != nil {
		return err
	}
	c.Mem, err = MapFd(shm, size)
	return err
}

// readEventfds reads the other peers' eventfds, then this client's own,
// which come last, until it has one per vector.
func (c *Client) readEventfds(g *greeting) error {
	for len(c.own) < c.vectors {
		pid, fd, err := g.read()
		if errors.Is(err, errGap) {
			return c.stoppedError()
		}
		if err != nil {
			return err
		}
		if fd < 0 {
			return fmt.Errorf("%w: peer %d message without eventfd during the greeting", ErrProtocol, pid)
		}
		if pid != int64(c.ID) {
			if len(c.own) > 0 {
				unix.Close(fd)
				return fmt.Errorf("%w: eventfd of peer %d after this client's own, which come last", ErrProtocol, pid)
			}
			if err := c.handle(pid, fd, false); err != nil {
				return err
			}
			continue
		}
		if err := c.addOwn(fd); err != nil {
			return err
		}
	}
	return nil
}

// stoppedError is the error for a greeting that stopped before this
// client had its eventfds: a server with fewer vectors, when it stopped
// inside one peer's set.
func (c *Client) stoppedError() error {
	if n := len(c.own); n > 0 {
		return c.mismatch(n, false, fmt.Sprintf("%d eventfds for this client, then nothing for %v", n, greetGap))
	}
	if c.assembling >= 0 {
		n := len(c.peers[c.assembling].fds)
		return c.mismatch(n, false, fmt.Sprintf("%d eventfds for peer %d, then nothing for %v", n, c.assembling, greetGap))
	}
	return fmt.Errorf("%w: server stopped in the greeting, before this client's eventfds", ErrProtocol)
}

// addOwn takes fd as this client's next own eventfd, after another peer's
// set is complete.
func (c *Client) addOwn(fd int) error {
	if c.assembling >= 0 {
		unix.Close(fd)
		n := len(c.peers[c.assembling].fds)
		return c.mismatch(n, false, fmt.Sprintf("%d eventfds for peer %d, then this client's own", n, c.assembling))
	}
	if err := checkEventfd(fd); err != nil {
		unix.Close(fd)
		return err
	}
	unix.SetNonblock(fd, true)
	c.own = append(c.own, os.NewFile(uintptr(fd), fmt.Sprintf("eventfd-%d-%d", c.ID, len(c.own))))
	c.last = c.ID
	return nil
}

// refuseExtraVectors checks that no more eventfds for this client's own
// id are already waiting: they would mean the server has more vectors.
// (One that comes later is the message loop's protocol error.)
func (c *Client) refuseExtraVectors(setDeadline func(time.Time) bool) error {
	extra := 0
	for {
		v, ok := peekValue(c.conn)
		if !ok || v != int64(c.ID) {
			break
		}
		if !setDeadline(time.Now().Add(greetGap)) {
			return context.Canceled
		}
		_, fd, err := recvMsg(c.conn)
		closeFd(fd)
		if err != nil {
			return err
		}
		extra++
	}
	if extra > 0 {
		n := c.vectors + extra
		return c.mismatch(n, true, fmt.Sprintf("%d eventfds for this client", n))
	}
	return nil
}

// errGap is a greeting that stopped half-way (see greetGap).
var errGap = errors.New("greeting stopped")

// mismatch is the error for a server whose vector count is not this
// client's: it sent n eventfds for one peer (at least n: more may follow).
func (c *Client) mismatch(n int, atLeast bool, what string) error {
	has := strconv.Itoa(n)
	if atLeast {
		has = "at least " + has
	}
	return fmt.Errorf("%w: vectors mismatch: the server has %s vectors, this client %d (it sent %s)",
		ErrProtocol, has, c.vectors, what)
}

// minTime is the earlier of a and b; the zero time counts as none.
func minTime(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// handle takes one message about another peer: one of its eventfds (fd >=
// 0) or its departure. A peer's eventfds come together, all c.vectors of
// them, and a peer is announced once until it leaves; anything else is a
// protocol error. Joins and departures are emitted when announce is set.
func (c *Client) handle(pid int64, fd int, announce bool) error {
	last := c.last
	c.last = int(pid)
	fail := func(err error) error {
		closeFd(fd)
		return err
	}
	if pid < 0 || pid > maxPeerID {
		return fail(fmt.Errorf("%w: peer id %d out of range 0-%d", ErrProtocol, pid, maxPeerID))
	}
	id := int(pid)
	if id == c.ID {
		if fd >= 0 {
			return fail(c.mismatch(c.vectors+1, true, fmt.Sprintf(
				"eventfd %d for this client's own id %d after the greeting, or announces this client as a peer", c.vectors+1, id)))
		}
		return fail(fmt.Errorf("%w: departure of this client's own id %d", ErrProtocol, id))
	}
	if c.assembling >= 0 && c.assembling != id {
		n := len(c.peers[c.assembling].fds)
		then := "an eventfd"
		if fd < 0 {
			then = "the departure"
		}
		return fail(c.mismatch(n, false, fmt.Sprintf("%d eventfds for peer %d, then %s of peer %d", n, c.assembling, then, id)))
	}
	c.mu.Lock()
	p := c.peers[id]
	c.mu.Unlock()
	if fd < 0 {
		switch {
		case p == nil:
			return fmt.Errorf("%w: departure of unknown peer %d", ErrProtocol, id)
		case c.assembling == id:
			return c.mismatch(len(p.fds), false, fmt.Sprintf("%d eventfds for peer %d, then its departure", len(p.fds), id))
		}
		c.mu.Lock()
		delete(c.peers, id)
		c.mu.Unlock()
		for _, f := range p.fds {
			unix.Close(f)
		}
		if announce {
			c.emit(PeerEvent{ID: id, Joined: false, Incarnation: p.inc})
		}
		return nil
	}
	if p != nil && len(p.fds) == c.vectors {
		if last == id {
			return fail(c.mismatch(c.vectors+1, true, fmt.Sprintf("eventfd %d for peer %d", c.vectors+1, id)))
		}
		return fail(fmt.Errorf("%w: peer %d announced again without leaving", ErrProtocol, id))
	}
	if err := checkEventfd(fd); err != nil {
		return fail(err)
	}
	c.mu.Lock()
	if p == nil {
		c.incs++
		p = &clientPeer{inc: c.incs}
		c.peers[id] = p
	}
	p.fds = append(p.fds, fd)
	complete := len(p.fds) == c.vectors
	c.mu.Unlock()
	c.assembling = id
	if complete {
		c.assembling = -1
		if announce {
			c.emit(PeerEvent{ID: id, Joined: true, Incarnation: p.inc})
		}
	}
	return nil
}

func (c *Client) emit(e PeerEvent) {
	select {
	case c.events <- e:
	default: // a consumer that does not read loses events, not the client
	}
}

// listen follows joins and departures until the server goes or Close. A
// protocol error ends it too: Err reports it, and the peers are forgotten,
// since what the server says can no longer be followed. Between joins it
// waits as long as the server is quiet; a join's eventfds come together,
// so inside one a silence of greetGap is an error (a vectors mismatch).
func (c *Client) listen() {
	defer close(c.done)
	defer close(c.events)
	for {
		var dl time.Time
		if c.assembling >= 0 {
			dl = time.Now().Add(greetGap)
		}
		c.conn.SetReadDeadline(dl)
		pid, fd, err := recvMsg(c.conn)
		switch {
		case err == nil:
			err = c.handle(pid, fd, true)
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.mu.Lock()
			n := len(c.peers[c.assembling].fds)
			c.mu.Unlock()
			err = c.mismatch(n, false, fmt.Sprintf("%d eventfds for peer %d, then nothing for %v", n, c.assembling, greetGap))
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.setErr(err)
				c.conn.Close()
				c.forgetPeers()
			}
			return
		}
	}
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Err is why the connection to the server ended (a protocol error), or nil
// while it lasts and when the server or Close ended it.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Events delivers peer joins and departures; it is closed when the server
// connection ends.
func (c *Client) Events() <-chan PeerEvent { return c.events }

// Peers lists the ids of the other peers whose eventfds are all known.
func (c *Client) Peers() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []int
	for id, p := range c.peers {
		if len(p.fds) == c.vectors {
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
	var fds []int
	if p := c.peers[peer]; p != nil {
		fds = p.fds
	}
	if vector < 0 || vector >= len(fds) || len(fds) != c.vectors {
		c.mu.Unlock()
		return fmt.Errorf("ring %d/%d: %w", peer, vector, ErrNoPeer)
	}
	err := evfd.Signal(fds[vector]) // a saturated counter still rings
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ring %d/%d: %w", peer, vector, err)
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
	c.forgetPeers()
	for _, f := range c.own {
		f.Close()
	}
	c.own = nil
	if c.Mem != nil {
		Unmap(c.Mem)
		c.Mem = nil
	}
}

func (c *Client) forgetPeers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, p := range c.peers {
		for _, f := range p.fds {
			unix.Close(f)
		}
		delete(c.peers, id)
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
