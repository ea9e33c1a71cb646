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
//	SvcTTYOpen   client → agent  8-byte request id
//	SvcTTYOpened agent → client  8-byte request id, 4-byte session (0: refused, then a reason)
//	SvcTTYData   both ways       4-byte session, bytes
//	SvcTTYClose  both ways       4-byte session
const (
	SvcTTYOpen   uint8 = 5
	SvcTTYOpened uint8 = 6
	SvcTTYData   uint8 = 7
	SvcTTYClose  uint8 = 8
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
	peer int
	pty  *os.File
	cmd  *exec.Cmd
}

// ServeTTY registers the TTY services on node: each open request gets a new
// shell (shell, e.g. /bin/sh -l, on a fresh PTY) for the requesting peer.
func ServeTTY(node *msg.Node, shell string) {
	s := &ttyServer{node: node, shell: shell, open: map[uint32]*ttySession{}}
	node.Register(SvcTTYOpen, s.openSession)
	node.Register(SvcTTYData, func(from int, p []byte) {
		if sess := s.session(from, p); sess != nil {
			sess.pty.Write(p[4:])
		}
	})
	node.Register(SvcTTYClose, func(from int, p []byte) {
		if sess := s.session(from, p); sess != nil {
			sess.cmd.Process.Kill()
		}
	})
}

func (s *ttyServer) session(from int, p []byte) *ttySession {
	if len(p) < 4 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.open[binary.LittleEndian.Uint32(p)]
	if sess == nil || sess.peer != from {
		return nil // another peer's session is not yours to type into
	}
	return sess
}

func (s *ttyServer) openSession(from int, p []byte) {
	if len(p) != 8 {
		return
	}
	refuse := func(why string) {
		reply(s.node, from, SvcTTYOpened, append(append(append([]byte{}, p...), 0, 0, 0, 0), why...))
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
	sess := &ttySession{peer: from, pty: f, cmd: cmd}
	s.mu.Lock()
	s.open[id] = sess
	s.mu.Unlock()
	var sid [4]byte
	binary.LittleEndian.PutUint32(sid[:], id)
	reply(s.node, from, SvcTTYOpened, append(append([]byte{}, p...), sid[:]...))
	go s.pump(id, sess, sid)
}

// pump copies the shell's output to the peer until the shell ends, then
// closes the session on both sides.
func (s *ttyServer) pump(id uint32, sess *ttySession, sid [4]byte) {
	buf := make([]byte, ttyChunk)
	for {
		n, err := sess.pty.Read(buf)
		if n > 0 && sendAll(s.node, sess.peer, SvcTTYData, append(sid[:], buf[:n]...)) != nil {
			break
		}
		if err != nil {
			break
		}
	}
	sess.cmd.Process.Kill()
	sess.cmd.Wait()
	sess.pty.Close()
	s.mu.Lock()
	delete(s.open, id)
	s.mu.Unlock()
	s.node.Send(sess.peer, SvcTTYClose, sid[:])
}

// sendAll sends, waiting out a full ring (the reader is slower than the
// shell) for up to ten seconds.
func sendAll(node *msg.Node, to int, svc uint8, p []byte) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := node.Send(to, svc, p)
		if !errors.Is(err, msg.ErrRingFull) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// TTY opens a shell on peer and connects it to in and out until the shell
// ends, in reaches EOF, or ctx ends. The node must be running (Run).
func TTY(ctx context.Context, node *msg.Node, peer int, in io.Reader, out io.Writer) error {
	opened := make(chan []byte, 1)
	var sid [4]byte
	var mu sync.Mutex
	closed := make(chan struct{})
	var once sync.Once
	node.Register(SvcTTYOpened, func(from int, p []byte) {
		if from == peer && len(p) >= 12 {
			select {
			case opened <- append([]byte(nil), p[8:]...):
			default:
			}
		}
	})
	node.Register(SvcTTYData, func(from int, p []byte) {
		mu.Lock()
		ok := from == peer && len(p) >= 4 && [4]byte(p[:4]) == sid
		mu.Unlock()
		if ok {
			out.Write(p[4:])
		}
	})
	node.Register(SvcTTYClose, func(from int, p []byte) {
		mu.Lock()
		ok := from == peer && len(p) >= 4 && [4]byte(p[:4]) == sid
		mu.Unlock()
		if ok {
			once.Do(func() { close(closed) })
		}
	})
	defer func() {
		node.Register(SvcTTYOpened, nil)
		node.Register(SvcTTYData, nil)
		node.Register(SvcTTYClose, nil)
	}()

	var req [8]byte
	binary.LittleEndian.PutUint64(req[:], uint64(time.Now().UnixNano()))
	if err := node.Send(peer, SvcTTYOpen, req[:]); err != nil {
		return fmt.Errorf("open tty on peer %d: %w", peer, err)
	}
	var r []byte
	select {
	case r = <-opened:
	case <-ctx.Done():
		return fmt.Errorf("open tty on peer %d: no answer: %w", peer, ctx.Err())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("open tty on peer %d: no answer in 10s (is popagent running there?)", peer)
	}
	mu.Lock()
	copy(sid[:], r[:4])
	mu.Unlock()
	if sid == [4]byte{} {
		return fmt.Errorf("open tty on peer %d: refused: %s", peer, r[4:])
	}

	inDone := make(chan error, 1)
	go func() {
		buf := make([]byte, ttyChunk)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if err := sendAll(node, peer, SvcTTYData, append(sid[:], buf[:n]...)); err != nil {
					inDone <- err
					return
				}
			}
			if errors.Is(err, io.EOF) {
				// End of input is end of file for the shell too (^D);
				// the session ends when the shell does.
				sendAll(node, peer, SvcTTYData, append(sid[:], 4))
				return
			}
			if err != nil {
				inDone <- err
				return
			}
		}
	}()
	select {
	case <-closed:
		return nil
	case err := <-inDone:
		node.Send(peer, SvcTTYClose, sid[:])
		if errors.Is(err, ErrDetached) {
			return nil
		}
		return err
	case <-ctx.Done():
		node.Send(peer, SvcTTYClose, sid[:])
		return nil
	}
}

// ErrDetached, returned by TTY's input, ends the session at once (the
// user's detach key) instead of sending end-of-file to the shell.
var ErrDetached = errors.New("detached")
