package vtty

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// ReplaySize is how much recent console output a new attach sees first.
const ReplaySize = 64 << 10

// Console is one kernel's serial console on the host: what the guest's
// UART transmits goes to the console log and to a host PTY (whose other end
// `popvmm attach` opens), and the last ReplaySize bytes are kept for
// replay; what is typed on the PTY goes to the UART's receive side.
type Console struct {
	log    *os.File
	master *os.File
	slave  *os.File

	input chan struct{} // held by the one running Input

	mu     sync.Mutex
	replay []byte // ring of the newest output, at most ReplaySize
	closed bool
}

// OpenConsole creates the console log at logPath (appending) and a PTY.
func OpenConsole(logPath string) (*Console, error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	ptm, slave, err := pty.Open()
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("console pty: %w", err)
	}
	// pty.Open leaves the master in blocking mode (it asked for its Fd),
	// which the Go poller cannot cancel; a non-blocking duplicate can be.
	master, err := pollable(ptm)
	if err != nil {
		log.Close()
		slave.Close()
		return nil, fmt.Errorf("console pty: %w", err)
	}
	// The PTY carries the guest's bytes untouched: no echo, no line
	// editing, no CR/LF translation on the host side.
	if _, err := term.MakeRaw(int(slave.Fd())); err != nil {
		log.Close()
		master.Close()
		slave.Close()
		return nil, fmt.Errorf("console pty raw mode: %w", err)
	}
	return &Console{log: log, master: master, slave: slave, input: make(chan struct{}, 1)}, nil
}

// pollable replaces f with a non-blocking duplicate the Go poller manages.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, os.NewSyscallError("dup", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// PTY is the path of the PTY's terminal end, for `popvmm attach`.
func (c *Console) PTY() string { return c.slave.Name() }

// Write takes guest output (the UART's transmit side): it is logged, kept
// for replay and passed to the PTY. A PTY nobody reads fills up; output is
// then dropped there, never blocking the guest, while the log keeps it.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, os.ErrClosed
	}
	c.replay = append(c.replay, p...)
	if over := len(c.replay) - ReplaySize; over > 0 {
		c.replay = append(c.replay[:0], c.replay[over:]...)
	}
	if _, err := c.log.Write(p); err != nil {
		return 0, fmt.Errorf("console log: %w", err)
	}
	c.ptyWrite(p)
	return len(p), nil
}

// ptyWrite makes one non-blocking attempt to pass p to the PTY: what does
// not fit (nobody attached, reader too slow) is dropped there.
func (c *Console) ptyWrite(p []byte) {
	rc, err := c.master.SyscallConn()
	if err != nil {
		return
	}
	rc.Write(func(fd uintptr) bool {
		unix.Write(int(fd), p)
		return true // done, whatever happened: never wait
	})
}

// Replay returns a copy of the newest console output.
func (c *Console) Replay() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.replay...)
}

// Input copies what is typed on the PTY to sink (the UART's Receive) until
// ctx ends or the console closes; ending that way is not an error. What
// sink does not take is dropped. Input can be called again after it
// returns, any number of times (one attach after another); a second Input
// while one runs waits for it, as the PTY is one stream.
func (c *Console) Input(ctx context.Context, sink func([]byte) int) error {
	select {
	case c.input <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-c.input }()
	// Cancellation interrupts the read with a deadline in the past. It is
	// cleared before the next Input may read, and only once a cancellation
	// that started has finished, so a late one cannot leave it behind.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.master.SetReadDeadline(time.Now())
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
		c.master.SetReadDeadline(time.Time{})
	}()
	buf := make([]byte, 1024)
	for {
		n, err := c.master.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			taken := sink(p)
			if taken == 0 {
				break // the guest's receive queue is full: drop, like a real line
			}
			p = p[taken:]
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("console input: %w", err)
		}
	}
}

// Close closes the PTY and the log; safe to call twice.
func (c *Console) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.slave.Close()
	c.master.Close()
	return c.log.Close()
}
