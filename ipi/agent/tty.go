package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/creack/pty"

	"github.com/popvmm/popvmm/ipi/msg"
)

// The inter-kernel TTY (Popcorn's virtual TTYs for when networking is
// down): a shell of one kernel, reached from another kernel or the host
// over the window.
//
//	SvcTTYOpen   client → agent  8-byte request id (msg.Node.Ask)
//	SvcTTYOpened agent → client  8-byte request id, 4-byte session (0: refused, then a reason)
//	SvcTTYInput  client → agent  4-byte session, bytes (^D: end of input)
//	SvcTTYOutput agent → client  4-byte session, bytes
//	SvcTTYClose  client → agent  4-byte session: end the shell
//	SvcTTYClosed agent → client  4-byte session: the shell ended
//
// Each direction has its own services, so one node can serve shells and
// open shells on other peers at the same time.
const (
	SvcTTYOpen   uint8 = 5
	SvcTTYOpened uint8 = 6
	SvcTTYInput  uint8 = 7
	SvcTTYClose  uint8 = 8
	SvcTTYOutput uint8 = 9
	SvcTTYClosed uint8 = 10
)

// ttyChunk bounds one data message.
const ttyChunk = 2048

// maxSessions bounds the shells one agent runs.
const maxSessions = 16

// ttyServer runs shells for peers.
type ttyServer struct {
	node  *msg.Node
	shell string
	mu    sync.Mutex
	next  uint32
	open  map[uint32]*ttySession
}

type ttySession struct {
	peer msg.Sender // the requester's incarnation: the session is its alone
	pty  *os.File
	cmd  *exec.Cmd
}

// peerCheck is how often a session checks that the incarnation of the peer
// on its other side is still there: a session outlives neither.
const peerCheck = time.Second

// ServeTTY registers the TTY services on node: each open request gets a new
// shell (shell, e.g. /bin/sh -l, on a fresh PTY) for the requesting peer.
func ServeTTY(node *msg.Node, shell string) {
	s := &ttyServer{node: node, shell: shell, open: map[uint32]*ttySession{}}
	node.HandleRequests(SvcTTYOpen, s.openSession)
	node.RegisterSender(SvcTTYInput, func(from msg.Sender, p []byte) {
		if sess := s.session(from, p); sess != nil {
			sess.pty.Write(p[4:])
		}
	})
	node.RegisterSender(SvcTTYClose, func(from msg.Sender, p []byte) {
		if sess := s.session(from, p); sess != nil {
			sess.cmd.Process.Kill()
		}
	})
}

// session is the session p names, if it belongs to the incarnation that
// sent p.
func (s *ttyServer) session(from msg.Sender, p []byte) *ttySession {
	if len(p) < 4 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.open[binary.LittleEndian.Uint32(p)]
	if sess == nil || sess.peer != from {
		return nil // another peer's session (or an earlier incarnation's under your id) is not yours to type into
	}
	return sess
}

func (s *ttyServer) openSession(r msg.Request) {
	if len(r.Body) != 0 {
		return
	}
	refuse := func(why string) {
		reply(s.node, r, SvcTTYOpened, append([]byte{0, 0, 0, 0}, why...))
	}
	s.mu.Lock()
	if len(s.open) >= maxSessions {
		s.mu.Unlock()
		refuse("too many sessions")
		return
	}
	s.next++
	id := s.next
	s.mu.Unlock()

	cmd := exec.Command(s.shell, "-l")
	cmd.Env = append(os.Environ(), "TERM=vt100")
	f, err := pty.Start(cmd)
	if err != nil {
		refuse(err.Error())
		return
	}
	sess := &ttySession{peer: r.From, pty: f, cmd: cmd}
	s.mu.Lock()
	s.open[id] = sess
	s.mu.Unlock()
	var sid [4]byte
	binary.LittleEndian.PutUint32(sid[:], id)
	reply(s.node, r, SvcTTYOpened, sid[:])
	go s.pump(id, sess, sid)
}

// pump copies the shell's output to the peer until the shell ends or the
// peer's incarnation goes, then closes the session on both sides.
func (s *ttyServer) pump(id uint32, sess *ttySession, sid [4]byte) {
	ended := make(chan struct{})
	go func() { // an idle shell notices its peer's departure too
		t := time.NewTicker(peerCheck)
		defer t.Stop()
		for {
			select {
			case <-ended:
				return
			case <-t.C:
				if !s.node.Present(sess.peer) {
					sess.cmd.Process.Kill()
					return
				}
			}
		}
	}()
	buf := make([]byte, ttyChunk)
	for {
		n, err := sess.pty.Read(buf)
		if !s.node.Present(sess.peer) {
			break // its output is not for whoever holds the id now
		}
		if n > 0 && sendAll(s.node, sess.peer.ID, SvcTTYOutput, append(sid[:], buf[:n]...)) != nil {
			break
		}
		if err != nil {
			break
		}
	}
	close(ended)
	sess.cmd.Process.Kill()
	sess.cmd.Wait()
	sess.pty.Close()
	s.mu.Lock()
	delete(s.open, id)
	s.mu.Unlock()
	if s.node.Present(sess.peer) {
		s.node.Send(sess.peer.ID, SvcTTYClosed, sid[:])
	}
}

// sendAll sends, waiting out a full ring (the reader is slower than the
// shell) for up to ten seconds.
func sendAll(node *msg.Node, to int, svc uint8, p []byte) error {
	return sendWithin(node, to, svc, p, 10*time.Second)
}

// openTimeout bounds the wait for a shell to be opened.
const openTimeout = 10 * time.Second

// DetachKey (Ctrl-]) ends a TTY session from the user's side.
const DetachKey = 0x1d

// DetachReader reads r until the detach key, after which it returns
// ErrDetached (what is before the key is still delivered).
type DetachReader struct {
	R    io.Reader
	done bool
}

func (d *DetachReader) Read(p []byte) (int, error) {
	if d.done {
		return 0, ErrDetached
	}
	n, err := d.R.Read(p)
	for i := range n {
		if p[i] == DetachKey {
			d.done = true
			return i, nil
		}
	}
	return n, err
}

// TTYClient opens shells on other peers from one node; any number of
// sessions may run at once.
type TTYClient struct {
	node    *msg.Node
	mu      sync.Mutex
	sess    map[ttyKey]*clientSession // open sessions
	opening map[int]int               // opens awaiting their answer, by peer
	early   map[ttyKey]*earlyOutput   // what came for a session before its Open took it up
	earlyN  int                       // bytes in early
}

// earlyOutput is a session's output (and its end) that came before Open
// took the session up: the agent starts the shell as it answers, and the
// shell's first bytes can overtake the answer on its way to Open. It is
// kept only while an open to that peer awaits its answer, at most
// maxEarly bytes in all.
type earlyOutput struct {
	gen    uint32 // the sender's incarnation
	data   []byte
	closed bool
}

// maxEarly bounds the early output a client keeps.
const maxEarly = 64 << 10

type ttyKey struct {
	peer int
	sid  uint32
}

type clientSession struct {
	gen    uint32 // the serving peer's incarnation, the one asked
	out    io.Writer
	closed chan struct{}
	once   sync.Once
}

// NewTTYClient takes over the client-side TTY services on node.
func NewTTYClient(node *msg.Node) *TTYClient {
	c := &TTYClient{node: node, sess: map[ttyKey]*clientSession{}, opening: map[int]int{}, early: map[ttyKey]*earlyOutput{}}
	node.HandleReplies(SvcTTYOpened)
	node.RegisterSender(SvcTTYOutput, func(from msg.Sender, p []byte) {
		c.deliver(from, p, false)
	})
	node.RegisterSender(SvcTTYClosed, func(from msg.Sender, p []byte) {
		c.deliver(from, p, true)
	})
	return c
}

// deliver hands a session's output (or its end) to the session p names, if
// the incarnation that sent p serves it, or keeps it for an Open of that
// peer still taking its answer up. Sessions' writes are ordered by c.mu.
func (c *TTYClient) deliver(from msg.Sender, p []byte, end bool) {
	if len(p) < 4 {
		return
	}
	key := ttyKey{from.ID, binary.LittleEndian.Uint32(p)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.sess[key]; s != nil {
		if s.gen != from.Gen {
			return
		}
		if end {
			s.once.Do(func() { close(s.closed) })
		} else {
			s.out.Write(p[4:])
		}
		return
	}
	if c.opening[from.ID] == 0 {
		return // nobody's session
	}
	e := c.early[key]
	if e == nil {
		e = &earlyOutput{gen: from.Gen}
		c.early[key] = e
	}
	switch {
	case e.gen != from.Gen:
	case end:
		e.closed = true
	case c.earlyN+len(p)-4 <= maxEarly:
		e.data = append(e.data, p[4:]...)
		c.earlyN += len(p) - 4
	}
}

// takeUp registers s as session key, with whatever came for it already.
func (c *TTYClient) takeUp(key ttyKey, s *clientSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess[key] = s
	if e := c.early[key]; e != nil && e.gen == s.gen {
		s.out.Write(e.data)
		if e.closed {
			s.once.Do(func() { close(s.closed) })
		}
	}
}

// opened ends an Open's wait for its answer; what came early for sessions
// of that peer no Open took up is dropped once none awaits one.
func (c *TTYClient) opened(peer int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opening[peer]--; c.opening[peer] > 0 {
		return
	}
	delete(c.opening, peer)
	for k, e := range c.early {
		if k.peer == peer {
			c.earlyN -= len(e.data)
			delete(c.early, k)
		}
	}
}

// Open runs a shell on peer connected to in and out until the shell ends,
// in fails or returns ErrDetached, or ctx ends. End of input (io.EOF) is
// passed to the shell as ^D. It also ends, with an error, when the peer's
// incarnation that opened the shell goes. The node must be running (Run).
func (c *TTYClient) Open(ctx context.Context, peer int, in io.Reader, out io.Writer) error {
	c.mu.Lock()
	c.opening[peer]++
	c.mu.Unlock()
	opening := true
	defer func() {
		if opening {
			c.opened(peer)
		}
	}()
	call, err := c.node.Ask(peer, SvcTTYOpen, SvcTTYOpened, nil)
	if err != nil {
		return fmt.Errorf("open tty on peer %d: %w", peer, err)
	}
	defer call.Close()
	wctx, cancel := context.WithTimeout(ctx, openTimeout)
	r, err := call.Wait(wctx)
	cancel()
	switch {
	case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("open tty on peer %d: no answer in %v (is popagent running there?)", peer, openTimeout)
	case err != nil:
		return fmt.Errorf("open tty on peer %d: %w", peer, err)
	case len(r) < 4:
		return fmt.Errorf("open tty on peer %d: a %d-byte answer, want at least 4", peer, len(r))
	}
	var sid [4]byte
	copy(sid[:], r[:4])
	if sid == [4]byte{} {
		return fmt.Errorf("open tty on peer %d: refused: %s", peer, r[4:])
	}
	gen := call.Peer().Gen
	key := ttyKey{peer, binary.LittleEndian.Uint32(sid[:])}
	s := &clientSession{gen: gen, out: out, closed: make(chan struct{})}
	c.takeUp(key, s)
	opening = false
	c.opened(peer)
	defer func() {
		c.mu.Lock()
		delete(c.sess, key)
		c.mu.Unlock()
	}()

	inDone := make(chan error, 1)
	go func() {
		buf := make([]byte, ttyChunk)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if err := sendAll(c.node, peer, SvcTTYInput, append(sid[:], buf[:n]...)); err != nil {
					inDone <- err
					return
				}
			}
			if errors.Is(err, io.EOF) {
				// End of input is end of file for the shell too (^D);
				// the session ends when the shell does.
				sendAll(c.node, peer, SvcTTYInput, append(sid[:], 4))
				return
			}
			if err != nil {
				inDone <- err
				return
			}
		}
	}()
	check := time.NewTicker(peerCheck)
	defer check.Stop()
	for {
		select {
		case <-s.closed:
			return nil
		case err := <-inDone:
			c.node.Send(peer, SvcTTYClose, sid[:])
			if errors.Is(err, ErrDetached) {
				return nil
			}
			return err
		case <-ctx.Done():
			c.node.Send(peer, SvcTTYClose, sid[:])
			return nil
		case <-check.C:
			if !c.node.Present(call.Peer()) {
				return fmt.Errorf("tty on peer %d: the peer went away", peer)
			}
		}
	}
}

// TTY opens one shell on peer from node (see TTYClient.Open).
func TTY(ctx context.Context, node *msg.Node, peer int, in io.Reader, out io.Writer) error {
	return NewTTYClient(node).Open(ctx, peer, in, out)
}

// ErrDetached, returned by TTY's input, ends the session at once (the
// user's detach key) instead of sending end-of-file to the shell.
var ErrDetached = errors.New("detached")
