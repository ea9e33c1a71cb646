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

// QueueSize bounds the guest output waiting for the console's writer; what
// arrives while the queue is full is dropped and counted (Dropped).
const QueueSize = 256 << 10

// chunk is the most the writer takes from the queue at once.
const chunk = 32 << 10

// Console is one kernel's serial console on the host: what the guest's
// UART transmits goes to the console log and to a host PTY (whose other end
// `popvmm attach` opens), and the last ReplaySize bytes are kept for
// replay; what is typed on the PTY goes to the UART's receive side.
//
// Output is written by the console's own goroutine: Write only queues, so
// a vCPU thread never waits on the log's disk or a PTY.
type Console struct {
	log    *os.File
	master *os.File
	slave  *os.File

	input chan struct{} // held by the one running Input
	done  chan struct{} // closed when the writer has stopped

	mu      sync.Mutex
	queue   ring       // output the writer has not taken yet
	more    *sync.Cond // queue not empty, or closed: for the writer
	idle    *sync.Cond // queue empty and nothing being written: for Flush
	busy    bool       // the writer is writing what it took
	dropped uint64     // bytes lost to a full queue
	logErr  error      // the first failed log write
	closed  bool

	rmu    sync.Mutex
	replay ring // the newest ReplaySize bytes written
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
	c := &Console{log: log, master: master, slave: slave,
		input: make(chan struct{}, 1), done: make(chan struct{}),
		queue: newRing(QueueSize), replay: newRing(ReplaySize)}
	c.more = sync.NewCond(&c.mu)
	c.idle = sync.NewCond(&c.mu)
	go c.writer()
	return c, nil
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

// Write takes guest output (the UART's transmit side) and never blocks: it
// queues p for the console's writer, which logs it, keeps it for replay
// and passes it to the PTY. What does not fit in the queue is dropped and
// counted, like bytes on a line nobody is listening to; Write still
// reports all of p as sent. It fails only once the console is closed.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, os.ErrClosed
	}
	k := c.queue.push(p)
	c.dropped += uint64(len(p) - k)
	c.mu.Unlock()
	if k > 0 {
		c.more.Signal()
	}
	return len(p), nil
}

// WriteByte is Write of one byte, without the slice: the UART's transmit
// path, once per byte the guest sends.
func (c *Console) WriteByte(b byte) error {
	_, err := c.Write([]byte{b})
	return err
}

// Dropped reports how many bytes of output were lost because the writer
// fell a whole queue behind.
func (c *Console) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// Flush waits until all output queued so far has been logged, kept for
// replay and offered to the PTY.
func (c *Console) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.queue.n > 0 || c.busy {
		c.idle.Wait()
	}
}

// writer moves queued output to the log, the replay ring and the PTY until
// the console closes and the queue is empty.
func (c *Console) writer() {
	defer close(c.done)
	buf := make([]byte, chunk)
	c.mu.Lock()
	for {
		for c.queue.n == 0 && !c.closed {
			c.more.Wait()
		}
		if c.queue.n == 0 {
			c.mu.Unlock()
			return
		}
		n := c.queue.pop(buf)
		c.busy = true
		c.mu.Unlock()

		_, err := c.log.Write(buf[:n])
		c.rmu.Lock()
		c.replay.overwrite(buf[:n])
		c.rmu.Unlock()
		c.ptyWrite(buf[:n])

		c.mu.Lock()
		c.busy = false
		if err != nil && c.logErr == nil {
			c.logErr = fmt.Errorf("console log: %w", err)
		}
		if c.queue.n == 0 {
			c.idle.Broadcast()
		}
	}
}

// ptyWrite makes one non-blocking attempt to pass p to the PTY: what does
// not fit (nobody attached, reader too slow) is dropped there, while the
// log keeps it.
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

// Replay returns a copy of the newest console output the writer has
// written (Flush first to include everything written so far).
func (c *Console) Replay() []byte {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.replay.bytes()
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

// Close stops taking output, waits for the writer to log what is queued,
// and closes the PTY and the log; it reports the first failed log write.
// It is safe to call twice.
func (c *Console) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.more.Signal()
	<-c.done
	c.slave.Close()
	c.master.Close()
	return errors.Join(c.logErr, c.log.Close())
}
