package ipi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	evfd "github.com/popvmm/popvmm/internal/eventfd"
	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
)

// Server hands the window and every peer's eventfds to host peers that
// connect to its Unix socket (the ivshmem-server protocol).
//
// No peer's socket is ever written under the server's lock: every peer has
// a bounded outbound queue that one writer goroutine empties. A peer whose
// queue overflows, or whose socket takes a message for longer than
// sendTimeout, is disconnected; the others never wait for it.
type Server struct {
	win      *Window
	vectors  int
	firstID  int // ids below it are reserved (the cluster's kernels)
	maxPeers int
	onLeave  func(id int)
	bells    *Doorbells
	log      *slog.Logger

	mu    sync.Mutex
	peers map[int]*serverPeer
	// kernelsUp is what the host peers were told: kernel k's eventfds
	// were announced (its VM runs) and not withdrawn since.
	kernelsUp []bool
}

type serverPeer struct {
	id   int
	conn *net.UnixConn
	fds  []*eventfd // one per vector
	out  outbox
}

// eventfd is one of a peer's eventfds, shared by the peer and the queued
// messages that hand it to others: the last of them to let go closes it.
type eventfd struct {
	fd   int
	refs atomic.Int32
}

func (e *eventfd) hold() *eventfd { e.refs.Add(1); return e }

// tryHold takes a reference unless the last one is already gone (the fd
// closed, its number free for reuse): for holders that found e in a
// snapshot that may be stale.
func (e *eventfd) tryHold() bool {
	for {
		n := e.refs.Load()
		if n <= 0 {
			return false
		}
		if e.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (e *eventfd) release() {
	if e.refs.Add(-1) == 0 {
		unix.Close(e.fd)
	}
}

// outMsg is one queued protocol message: a value and at most one fd, either
// a peer's eventfd (held until sent or dropped) or the window's.
type outMsg struct {
	v   int64
	efd *eventfd
	shm bool // carries the window's fd
}

func (m outMsg) release() {
	if m.efd != nil {
		m.efd.release()
	}
}

// outbox is a peer's bounded queue of outbound messages.
type outbox struct {
	mu     sync.Mutex
	msgs   []outMsg
	limit  int
	closed bool
	ready  chan struct{} // one token: messages waiting; closed with the outbox
}

// push queues msgs, all or none; it fails when the outbox is closed
// (errOutboxClosed) or would hold more than its limit (errOutboxFull).
// Either way msgs are the outbox's.
func (o *outbox) push(msgs ...outMsg) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var err error
	switch {
	case o.closed:
		err = errOutboxClosed
	case len(o.msgs)+len(msgs) > o.limit:
		err = errOutboxFull
	}
	if err != nil {
		for _, m := range msgs {
			m.release()
		}
		return err
	}
	o.msgs = append(o.msgs, msgs...)
	select {
	case o.ready <- struct{}{}:
	default:
	}
	return nil
}

var (
	errOutboxClosed = errors.New("peer disconnected")
	errOutboxFull   = errors.New("outbound queue full")
)

// next waits for the next message; false once the outbox is closed.
func (o *outbox) next() (outMsg, bool) {
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return outMsg{}, false
		}
		if len(o.msgs) > 0 {
			m := o.msgs[0]
			o.msgs[0] = outMsg{}
			o.msgs = o.msgs[1:]
			o.mu.Unlock()
			return m, true
		}
		o.mu.Unlock()
		<-o.ready
	}
}

// close drops what is still queued; later pushes fail.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.closed = true
	for _, m := range o.msgs {
		m.release()
	}
	o.msgs = nil
	close(o.ready)
}

// outboxSlack is how many messages beyond a full greeting a peer's queue
// holds while its socket is full: joins and departures of others. The
// socket buffer holds a few hundred more; a peer that lets both fill up is
// not reading and is dropped.
const outboxSlack = 256

// ServerConfig configures a Server.
type ServerConfig struct {
	// Vectors is the number of interrupt vectors (eventfds) per peer,
	// 1-MaxVectors.
	Vectors int
	// FirstID is the lowest id given to a host peer; the ids below are the
	// kernels' (their index in cluster.toml).
	FirstID int
	// MaxPeers bounds the number of host peers connected at once.
	MaxPeers int
	// OnLeave, when set, is called with the id of every peer that has gone
	// (disconnected or dropped), after its connection is closed and before
	// its id can be given to a new peer: what it records about the peer
	// cannot reach the id's next holder. It runs on that peer's goroutine,
	// must not block, and must not call the Server.
	OnLeave func(id int)
	// Doorbells, when set, are the cluster's doorbells: the server hands
	// out the eventfds of the kernels whose VMs run as the eventfds of
	// peers 0 to Kernels-1 (announcing a kernel's departure when its VM
	// stops and its return when it starts again), and records every host
	// peer's eventfds there, so that kernels ring host peers and host peers
	// ring kernels through the same eventfds as the VMs' ioeventfds and
	// irqfds. Its vectors must be Vectors, and FirstID at least its
	// kernel count.
	Doorbells *Doorbells
}

// NewServer makes a server for win.
func NewServer(win *Window, cfg ServerConfig, log *slog.Logger) (*Server, error) {
	if cfg.Vectors < 1 || cfg.Vectors > MaxVectors {
		return nil, fmt.Errorf("ivshmem server: %d vectors, want 1-%d", cfg.Vectors, MaxVectors)
	}
	if cfg.MaxPeers < 1 || cfg.FirstID < 0 || cfg.FirstID+cfg.MaxPeers > maxPeerID+1 {
		return nil, fmt.Errorf("ivshmem server: peer ids %d+%d out of range", cfg.FirstID, cfg.MaxPeers)
	}
	if d := cfg.Doorbells; d != nil && (d.Vectors() != cfg.Vectors || cfg.FirstID < d.Kernels()) {
		return nil, fmt.Errorf("ivshmem server: %d vectors from id %d, but the doorbells have %d vectors and %d kernels",
			cfg.Vectors, cfg.FirstID, d.Vectors(), d.Kernels())
	}
	s := &Server{win: win, vectors: cfg.Vectors, firstID: cfg.FirstID, maxPeers: cfg.MaxPeers,
		onLeave: cfg.OnLeave, bells: cfg.Doorbells, log: log, peers: map[int]*serverPeer{}}
	if s.bells != nil {
		s.kernelsUp = make([]bool, s.bells.Kernels())
	}
	return s, nil
}

// Serve accepts peers on ln until ctx ends, then disconnects them all and
// closes every eventfd it made. Accepting never waits for a peer: a new
// peer's greeting goes through its queue like every other message.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if s.bells != nil {
		defer s.bells.subscribe(s.syncKernels)()
		s.syncKernels()
	}
	defer func() {
		s.mu.Lock()
		for _, p := range s.peers {
			p.conn.Close() // the peer's goroutine removes it
		}
		s.mu.Unlock()
		wg.Wait()
	}()
	// Out of file descriptors for a moment (or another error that passes):
	// wait and accept again (internal/retry), logged rate-limited.
	acceptLog := ratelog.Default(s.log)
	defer acceptLog.Flush()
	for {
		c, err := retry.Accept(ctx, ln.AcceptUnix, acceptLog, "ivshmem server")
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ivshmem server accept: %w", err)
		}
		p, err := s.join(c)
		if err != nil {
			s.log.Warn("host peer refused", "err", err)
			c.Close()
			continue
		}
		if s.bells != nil {
			// Outside s.mu: the doorbells tell their subscribers, the
			// server among them. Before watch starts, so before the
			// peer's departure can be recorded.
			s.bells.hostJoined(p.id, p.fds)
		}
		wg.Go(func() { s.write(p) })
		wg.Go(func() { s.watch(p) })
	}
}

// join gives the new client an id and queues its greeting: the window,
// every peer's eventfds and its own; it queues the new peer's eventfds to
// the others.
func (s *Server) join(c *net.UnixConn) (*serverPeer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := -1
	for i := s.firstID; i < s.firstID+s.maxPeers; i++ {
		if _, taken := s.peers[i]; !taken {
			id = i
			break
		}
	}
	if id < 0 {
		return nil, fmt.Errorf("all %d host peer ids are in use", s.maxPeers)
	}
	greeting := 3 + (len(s.kernelsUp)+s.maxPeers)*s.vectors
	p := &serverPeer{id: id, conn: c, out: outbox{limit: greeting + outboxSlack, ready: make(chan struct{}, 1)}}
	for range s.vectors {
		fd, err := evfd.New()
		if err != nil {
			p.releaseFds()
			return nil, err
		}
		e := &eventfd{fd: fd}
		e.refs.Store(1)
		p.fds = append(p.fds, e)
	}
	msgs := []outMsg{{v: ProtocolVersion}, {v: int64(id)}, {v: shmID, shm: true}}
	for k, up := range s.kernelsUp {
		if up {
			msgs = append(msgs, s.kernelAnnouncement(k)...)
		}
	}
	for _, o := range s.peers {
		for _, e := range o.fds {
			msgs = append(msgs, outMsg{v: int64(o.id), efd: e.hold()})
		}
	}
	for _, e := range p.fds {
		msgs = append(msgs, outMsg{v: int64(id), efd: e.hold()})
	}
	if err := p.out.push(msgs...); err != nil {
		p.releaseFds()
		return nil, fmt.Errorf("greeting for peer %d (%d messages): %w", id, len(msgs), err)
	}
	for _, o := range s.peers {
		s.sendLocked(o, p.announcement()...)
	}
	s.peers[id] = p
	s.log.Info("host peer joined", "peer", id)
	return p, nil
}

// announcement is what the others are told when p joins: its id with each
// of its eventfds.
func (p *serverPeer) announcement() []outMsg {
	msgs := make([]outMsg, 0, len(p.fds))
	for _, e := range p.fds {
		msgs = append(msgs, outMsg{v: int64(p.id), efd: e.hold()})
	}
	return msgs
}

// sendLocked queues msgs for o; an o whose queue is full is not reading
// and is disconnected (its watch goroutine removes it), and one already
// disconnected needs nothing more. s.mu is held, so every peer's messages
// stay in one order.
func (s *Server) sendLocked(o *serverPeer, msgs ...outMsg) {
	if err := o.out.push(msgs...); errors.Is(err, errOutboxFull) {
		s.log.Warn("host peer does not read its socket; disconnecting it", "peer", o.id)
		o.drop()
	}
}

// drop disconnects p; its watch goroutine then removes it.
func (p *serverPeer) drop() {
	p.out.close()
	p.conn.Close()
}

// write sends p's queued messages in order until the queue is closed or a
// send fails or times out, which drops p.
func (s *Server) write(p *serverPeer) {
	for {
		m, ok := p.out.next()
		if !ok {
			return
		}
		fd := -1
		switch {
		case m.efd != nil:
			fd = m.efd.fd
		case m.shm:
			fd = s.win.Fd()
		}
		err := sendMsg(p.conn, m.v, fd)
		m.release()
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				s.log.Warn("host peer does not read its socket; disconnecting it", "peer", p.id, "waited", sendTimeout)
			case errors.Is(err, net.ErrClosed), errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
				// the peer is going: its watch goroutine tells
			default:
				s.log.Warn("host peer connection failed; disconnecting it", "peer", p.id, "err", err)
			}
			p.drop()
			return
		}
	}
}

// watch waits for the peer to go (clients send nothing; anything they send
// is a protocol violation and disconnects them), then removes it and
// announces its departure. Its id is free again only after that.
func (s *Server) watch(p *serverPeer) {
	var b [64]byte
	n, err := p.conn.Read(b[:])
	switch {
	case err == nil && n > 0:
		s.log.Warn("host peer sent data; disconnecting it", "peer", p.id, "bytes", n)
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
		s.log.Debug("host peer connection error", "peer", p.id, "err", err)
	}
	p.drop()
	if s.bells != nil {
		s.bells.hostLeft(p.id) // the VMs' ioeventfds for it go first
	}
	if s.onLeave != nil {
		s.onLeave(p.id) // while the id is still taken
	}
	s.mu.Lock()
	delete(s.peers, p.id)
	for _, o := range s.peers {
		s.sendLocked(o, outMsg{v: int64(p.id)})
	}
	s.mu.Unlock()
	p.releaseFds()
	s.log.Info("host peer left", "peer", p.id)
}

func (p *serverPeer) releaseFds() {
	for _, e := range p.fds {
		e.release()
	}
	p.fds = nil
}

// kernelAnnouncement is kernel k's id with each of its eventfds, held for
// the messages (none once the doorbells are closed).
func (s *Server) kernelAnnouncement(k int) []outMsg {
	msgs := make([]outMsg, 0, s.vectors)
	for v := range s.vectors {
		e := s.bells.hold(BellID{k, v})
		if e == nil {
			for _, m := range msgs {
				m.release()
			}
			return nil
		}
		msgs = append(msgs, outMsg{v: int64(k), efd: e})
	}
	return msgs
}

// syncKernels tells the host peers about kernels whose VM started or
// stopped since they were last told: a started kernel's eventfds, a
// stopped kernel's departure (a client then closes its copies, and one
// that rings it meanwhile rings an eventfd no VM reads).
func (s *Server) syncKernels() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, was := range s.kernelsUp {
		up := s.bells.KernelUp(k)
		if up == was {
			continue
		}
		var msgs []outMsg
		if up {
			if msgs = s.kernelAnnouncement(k); msgs == nil {
				continue
			}
		}
		s.kernelsUp[k] = up
		for _, o := range s.peers {
			if up {
				held := make([]outMsg, len(msgs))
				for i, m := range msgs {
					held[i] = outMsg{v: m.v, efd: m.efd.hold()}
				}
				s.sendLocked(o, held...)
			} else {
				s.sendLocked(o, outMsg{v: int64(k)})
			}
		}
		for _, m := range msgs {
			m.release()
		}
	}
}

// Peers lists the ids of the connected host peers.
func (s *Server) Peers() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []int
	for id := range s.peers {
		ids = append(ids, id)
	}
	return ids
}
