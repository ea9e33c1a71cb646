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

	"github.com/popvmm/popvmm/internal/retry"
)

// ReplaySize is how much recent console output a new attach sees first.
const ReplaySize = 64 << 10

// QueueSize bounds the guest output waiting for the console's writer; what
// arrives while the queue is full is dropped and counted (Dropped).
const QueueSize = 256 << 10

// chunk is the most the writer takes from the queue at once.
const chunk = 32 << 10

// DefaultLogMax caps a console log when ConsoleConfig names no cap
// (cluster.toml's kernel console_log_max, docs/cluster-config.md).
const DefaultLogMax = 16 << 20

// MinLogMax is the smallest cap a console log may have.
const MinLogMax = 64 << 10

// ConsoleConfig tunes a Console.
type ConsoleConfig struct {
	// LogMax caps the console log at LOG: output that would take it past
	// LogMax bytes first rotates it, renaming LOG to LOG.1 (replacing the
	// one before) and starting LOG again, so at most 2*LogMax bytes of a
	// kernel's console are ever on disk, whatever the guest prints (its
	// default place, the run directory, is in RAM for root). 0 means
	// DefaultLogMax; below MinLogMax counts as MinLogMax. A log that is
	// not a regular file (a FIFO, a device) is not capped: it is never
	// renamed.
	LogMax int64
}

// RotatedLog is where a console log at path goes when it is rotated.
func RotatedLog(path string) string { return path + ".1" }

// Console is one kernel's serial console on the host: what the guest's
// UART transmits goes to the console log and to a host PTY (whose other end
// `popvmm attach` opens), and the last ReplaySize bytes are kept for
// replay; what is typed on the PTY goes to the UART's receive side.
//
// Output is written by the console's own goroutine: Write only queues, so
// a vCPU thread never waits on the log's disk or a PTY.
type Console struct {
	log     *os.File // nil after a rotation that could not reopen it
	logPath string
	logMax  int64 // 0: not capped (a FIFO, a device: nothing to rotate)
	logSize int64 // bytes in log now
	master  *os.File
	slave   *os.File

	input chan struct{} // held by the one running Input
	done  chan struct{} // closed when the writer has stopped

	mu      sync.Mutex
	queue   ring       // output the writer has not taken yet
	more    *sync.Cond // queue not empty, or closed: for the writer
	idle    *sync.Cond // queue empty and nothing being written: for Flush
	busy    bool       // the writer is writing what it took
	dropped uint64     // bytes lost to a full queue
	logErr  error      // the first failed log write
	rotated uint64     // log rotations
	closed  bool

	rmu    sync.Mutex
	replay ring // the newest ReplaySize bytes written
}

// OpenConsole creates the console log at logPath (appending; capped at
// DefaultLogMax with rotation) and a PTY.
func OpenConsole(logPath string) (*Console, error) {
	return OpenConsoleConfig(logPath, ConsoleConfig{})
}

// OpenConsoleConfig is OpenConsole with the log's cap from cfg.
func OpenConsoleConfig(logPath string, cfg ConsoleConfig) (*Console, error) {
	logMax := cfg.LogMax
	if logMax == 0 {
		logMax = DefaultLogMax
	}
	logMax = max(logMax, MinLogMax)
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	st, err := log.Stat()
	if err != nil {
		log.Close()
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
	if !st.Mode().IsRegular() {
		logMax = 0 // never rename a device node or a FIFO
	}
	c := &Console{log: log, logPath: logPath, logMax: logMax, logSize: st.Size(), master: master, slave: slave,
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

		err := c.logWrite(buf[:n])
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

// logWrite appends p to the log, rotating it first when p would take it
// past its cap. Only the writer goroutine calls it.
func (c *Console) logWrite(p []byte) error {
	var rerr error
	if c.logMax > 0 && c.logSize > 0 && c.logSize+int64(len(p)) > c.logMax {
		rerr = c.rotate()
	}
	if c.log == nil {
		return rerr
	}
	n, err := c.log.Write(p)
	c.logSize += int64(n)
	return errors.Join(rerr, err)
}

// rotate renames the log to RotatedLog and starts a new one. If the new
// one cannot be created the log stops (the PTY and replay go on) and the
// error is the console's.
func (c *Console) rotate() error {
	var err error
	if c.log != nil {
		err = c.log.Close()
		c.log = nil
	}
	if rerr := os.Rename(c.logPath, RotatedLog(c.logPath)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		// Not renamed (the directory is read-only, say): start the log
		// over in place rather than let it grow.
		err = errors.Join(err, rerr)
	}
	f, oerr := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if oerr != nil {
		return errors.Join(err, oerr)
	}
	c.log, c.logSize = f, 0
	c.mu.Lock()
	c.rotated++
	c.mu.Unlock()
	return err
}

// Rotations reports how many times the log was rotated.
func (c *Console) Rotations() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rotated
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
	var b retry.Backoff
	for {
		n, err := c.master.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			taken := sink(p)
			if taken == 0 {
				// The guest's receive queue is full, or its UART is in
				// loopback (disconnected from the line): dropped, as on
				// a real line; the UART counts them.
				break
			}
			p = p[taken:]
		}
		if err == nil {
			b.Reset()
			continue
		}
		if ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
			return nil
		}
		// Input lasts as long as the VM: an error that passes (out of
		// memory for a moment) waits and reads again.
		if retry.Transient(err) {
			if !retry.Sleep(ctx, b.Next()) {
				return nil
			}
			continue
		}
		return fmt.Errorf("console input: %w", err)
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
	var cerr error
	if c.log != nil {
		cerr = c.log.Close()
	}
	return errors.Join(c.logErr, cerr)
}
