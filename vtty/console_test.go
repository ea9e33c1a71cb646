package vtty_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vtty"
)

func TestConsole(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "k.console.log")
	c, err := vtty.OpenConsole(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tty, err := os.OpenFile(c.PTY(), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s: %v", c.PTY(), err)
	}
	defer tty.Close()

	// Guest output: to the log, the replay buffer and the PTY.
	c.Write([]byte("Linux version 6.1\r\n"))
	got := make([]byte, 64)
	tty.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := tty.Read(got)
	if err != nil || string(got[:n]) != "Linux version 6.1\r\n" {
		t.Fatalf("pty read %q, %v", got[:n], err)
	}
	c.Flush()
	if b, _ := os.ReadFile(logPath); string(b) != "Linux version 6.1\r\n" {
		t.Errorf("log %q", b)
	}

	// Typed input reaches the sink (the UART).
	var mu sync.Mutex
	var in bytes.Buffer
	arrived := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Input(ctx, func(p []byte) int {
			mu.Lock()
			in.Write(p)
			mu.Unlock()
			select {
			case arrived <- struct{}{}:
			default:
			}
			return len(p)
		})
	}()
	tty.Write([]byte("ls\r"))
	deadline := time.After(10 * time.Second)
	for {
		mu.Lock()
		s := in.String()
		mu.Unlock()
		if s == "ls\r" {
			break
		}
		select {
		case <-arrived:
		case <-deadline:
			t.Fatalf("input %q", s)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Input = %v", err)
	}
}

// TestConsoleNeverBlocks: with nobody reading the PTY, the guest's output
// keeps flowing to the log; the replay keeps the newest ReplaySize bytes.
func TestConsoleNeverBlocks(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "k.console.log")
	c, err := vtty.OpenConsole(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	start := time.Now()
	for i := range 1024 { // 1 MiB, far beyond any PTY buffer
		if _, err := c.Write(line); err != nil {
			t.Fatal(err)
		}
		if i%64 == 63 {
			c.Flush() // keep within the queue: this test is about the PTY
		}
	}
	c.Write([]byte("the end\n"))
	c.Flush()
	if time.Since(start) > 5*time.Second {
		t.Errorf("1 MiB of output took %v: writes block on the PTY", time.Since(start))
	}
	if st, _ := os.Stat(logPath); st.Size() != 1<<20+8 || c.Dropped() != 0 {
		t.Errorf("log has %d bytes, %d dropped", st.Size(), c.Dropped())
	}
	r := c.Replay()
	if len(r) != vtty.ReplaySize || !bytes.HasSuffix(r, []byte("the end\n")) {
		t.Errorf("replay of %d bytes ending %q", len(r), r[len(r)-8:])
	}
	c.Close()
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("write after Close accepted")
	}
}

// TestConsoleReplay: the replay holds exactly the newest ReplaySize bytes
// (all of them before that much was written), whatever the write sizes.
func TestConsoleReplay(t *testing.T) {
	for _, tc := range []struct{ size, total int }{
		{1, 100},
		{1, vtty.ReplaySize + 3},
		{7, vtty.ReplaySize - 5},
		{1000, 3*vtty.ReplaySize + 17},
		{vtty.ReplaySize - 1, 2 * vtty.ReplaySize},
		{vtty.ReplaySize + 1, 3*vtty.ReplaySize + 3},
	} {
		c := openConsole(t)
		out := make([]byte, tc.total)
		for i := range out {
			out[i] = byte(i*7 + i/251)
		}
		for p := out; len(p) > 0; {
			n := min(tc.size, len(p))
			c.Write(p[:n])
			p = p[n:]
			c.Flush()
		}
		want := out[max(0, len(out)-vtty.ReplaySize):]
		if got := c.Replay(); !bytes.Equal(got, want) {
			t.Errorf("writes of %d, %d in all: replay of %d bytes is not the newest %d", tc.size, tc.total, len(got), len(want))
		}
	}
}

// TestConsoleBlockedLog: a log that takes nothing (a FIFO nobody reads)
// does not hold up the UART's transmit path; what the queue cannot hold
// is dropped and counted, and the rest reaches the log in order.
func TestConsoleBlockedLog(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "k.console.log")
	if err := unix.Mkfifo(logPath, 0o600); err != nil {
		t.Fatal(err)
	}
	logged, err := os.OpenFile(logPath, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logged.Close()
	c, err := vtty.OpenConsole(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u := vtty.NewUART(c, nil)

	out := make([]byte, 4*vtty.QueueSize)
	for i := range out {
		out[i] = byte('a' + i%26)
	}
	sent := make(chan struct{})
	go func() {
		for _, b := range out {
			wr(u, THR, b)
		}
		close(sent)
	}()
	select {
	case <-sent:
	case <-time.After(30 * time.Second):
		go io.Copy(io.Discard, logged) // let Close finish
		t.Fatal("THR writes blocked behind the console log")
	}
	if c.Dropped() == 0 {
		t.Errorf("%d bytes past a blocked log and a full queue, none dropped", len(out))
	}

	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(logged)
		got <- b
	}()
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	b := <-got
	if uint64(len(b))+c.Dropped() != uint64(len(out)) || !bytes.HasPrefix(out, b[:min(len(b), vtty.QueueSize)]) {
		t.Errorf("log has %d bytes, %d dropped, of %d sent; starts %q", len(b), c.Dropped(), len(out), b[:min(len(b), 30)])
	}
}

// BenchmarkUARTTransmit: THR writes per second through the UART into a
// console whose log is a file and whose PTY nobody reads, as a vCPU sees
// them (without the VM exit).
func BenchmarkUARTTransmit(b *testing.B) {
	c, err := vtty.OpenConsole(filepath.Join(b.TempDir(), "k.console.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	u := vtty.NewUART(c, nil)
	thr := []byte{0}
	b.SetBytes(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		thr[0] = byte('a' + i%26)
		u.Write(THR, thr)
	}
	b.StopTimer()
	c.Flush()
	b.ReportMetric(float64(c.Dropped())/float64(b.N), "dropped/op")
}

// openConsole opens a console logging to a temporary file, closed with the
// test.
func openConsole(t *testing.T) *vtty.Console {
	t.Helper()
	c, err := vtty.OpenConsole(filepath.Join(t.TempDir(), "k.console.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// attach opens the PTY's terminal end, as `popvmm attach` does.
func attach(t *testing.T, c *vtty.Console) *os.File {
	t.Helper()
	tty, err := os.OpenFile(c.PTY(), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s: %v", c.PTY(), err)
	}
	return tty
}

// input runs c.Input into w until the returned stop is called; stop waits
// for Input to return and fails the test unless it returned nil promptly.
func input(t *testing.T, c *vtty.Console, w *watchWriter) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := c.Input(ctx, func(p []byte) int { w.Write(p); return len(p) })
		if ctx.Err() == nil {
			t.Errorf("Input returned before its cancellation: %v", err)
		}
		done <- err
	}()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Input after cancel = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Input did not return after cancel")
		}
	}
}

// TestConsoleReattach: attach, type, detach, fifty times over; each Input
// gets what is typed, however its predecessor was cancelled (idle in the
// read, right after input, or before it read at all).
func TestConsoleReattach(t *testing.T) {
	c := openConsole(t)
	w := &watchWriter{more: make(chan struct{}, 1)}
	for i := range 50 {
		tty := attach(t, c)
		stop := input(t, c, w)
		msg := fmt.Sprintf("<%d>", i)
		tty.Write([]byte(msg))
		w.waitFor(t, msg)
		switch i % 3 {
		case 0:
			time.Sleep(time.Millisecond) // cancel while blocked in the read
		case 1:
			stop() // a cancellation racing a fresh Input
			stop = input(t, c, w)
		}
		stop()
		tty.Close()
	}
}

// TestConsoleInputCancelMidRead: cancelling an Input blocked in its read
// ends it at once; what is typed before the next Input is kept for it.
func TestConsoleInputCancelMidRead(t *testing.T) {
	c := openConsole(t)
	tty := attach(t, c)
	defer tty.Close()
	w := &watchWriter{more: make(chan struct{}, 1)}
	stop := input(t, c, w)
	tty.Write([]byte("first"))
	w.waitFor(t, "first") // Input is back in its read
	time.Sleep(10 * time.Millisecond)
	stop()
	tty.Write([]byte("second"))
	stop = input(t, c, w)
	w.waitFor(t, "firstsecond")
	stop()
}

// TestConsoleInputOneAtATime: a second Input waits for the first, leaves
// when its own context ends, and then takes over.
func TestConsoleInputOneAtATime(t *testing.T) {
	c := openConsole(t)
	tty := attach(t, c)
	defer tty.Close()
	first := &watchWriter{more: make(chan struct{}, 1)}
	stopFirst := input(t, c, first)
	tty.Write([]byte("a"))
	first.waitFor(t, "a")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := c.Input(ctx, func(p []byte) int { t.Errorf("waiting Input got %q", p); return len(p) }); err != nil {
		t.Errorf("waiting Input = %v, want nil at its context's end", err)
	}

	second := &watchWriter{more: make(chan struct{}, 1)}
	stopSecond := input(t, c, second)
	tty.Write([]byte("b"))
	first.waitFor(t, "ab")
	stopFirst()
	tty.Write([]byte("c"))
	second.waitFor(t, "c")
	stopSecond()
}

// TestConsoleLogCapped: however much a guest prints, its console log stays
// under the cap: output that would pass it rotates the log to LOG.1, so at
// most twice the cap is on disk; the newest output is at the end of LOG,
// LOG.1 holds what came just before it, and nothing between them is lost.
// A log that is over the cap when the console opens (a chatty earlier
// run) is rotated at the first output. The default cap is DefaultLogMax.
func TestConsoleLogCapped(t *testing.T) {
	const logMax = 256 << 10
	logPath := filepath.Join(t.TempDir(), "k.console.log")
	os.WriteFile(logPath, bytes.Repeat([]byte("old run\n"), logMax/4), 0o600) // 2 x the cap
	c, err := vtty.OpenConsoleConfig(logPath, vtty.ConsoleConfig{LogMax: logMax})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var want bytes.Buffer
	for i := range 200_000 { // about 3 MiB, numbered lines
		line := fmt.Sprintf("line %06d yyyyyyyy\n", i)
		want.WriteString(line)
		c.Write([]byte(line))
		if i%1000 == 0 {
			c.Flush() // keep within the queue: nothing dropped
		}
	}
	c.Flush()
	cur, _ := os.ReadFile(logPath)
	old, _ := os.ReadFile(vtty.RotatedLog(logPath))
	if len(cur) > logMax || len(old) > logMax {
		t.Fatalf("log %d bytes, rotated %d bytes: over the %d-byte cap", len(cur), len(old), logMax)
	}
	if c.Dropped() != 0 || c.Rotations() < 10 {
		t.Errorf("dropped %d, rotated %d times", c.Dropped(), c.Rotations())
	}
	both := append(old, cur...)
	if !bytes.HasSuffix(want.Bytes(), both) || len(both) < logMax {
		t.Errorf("LOG.1 then LOG (%d bytes) is not the newest output whole", len(both))
	}
	// popvmm logs prints the two as one.
	var b bytes.Buffer
	if err := vtty.CopyLog(context.Background(), logPath, &b, false); err != nil || !bytes.Equal(b.Bytes(), both) {
		t.Errorf("CopyLog: %d bytes, %v; want LOG.1 then LOG", b.Len(), err)
	}

	// The default cap.
	p := filepath.Join(t.TempDir(), "d.console.log")
	d, err := vtty.OpenConsole(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	chunk := bytes.Repeat([]byte("y"), 64<<10)
	for range vtty.DefaultLogMax/len(chunk) + 1 {
		d.Write(chunk)
		d.Flush()
	}
	if st, err := os.Stat(p); err != nil || st.Size() > vtty.DefaultLogMax || d.Rotations() != 1 {
		t.Errorf("default cap: log %v (%v), %d rotations; want at most %d bytes after one", st.Size(), err, d.Rotations(), vtty.DefaultLogMax)
	}

	// A log that is not a regular file (a FIFO here, a device as well) is
	// never renamed.
	fifo := filepath.Join(t.TempDir(), "fifo.console.log")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write: a FIFO opened so never reads end of file (it is a
	// writer too), so the drain below lasts until Close. Read-only and
	// non-blocking, a read before the console opened its end returned
	// end of file, the drain ended, and the console's writes filled the
	// pipe and blocked forever (a tier-1 hang in CI).
	reader, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	go io.Copy(io.Discard, reader)
	ff, err := vtty.OpenConsoleConfig(fifo, vtty.ConsoleConfig{LogMax: vtty.MinLogMax})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		ff.Write(chunk)
		ff.Flush()
	}
	ff.Close()
	if st, err := os.Stat(fifo); err != nil || st.Mode()&os.ModeNamedPipe == 0 || ff.Rotations() != 0 {
		t.Fatalf("FIFO log after output past the cap: %v, %v, %d rotations", st.Mode(), err, ff.Rotations())
	}
	if _, err := os.Stat(vtty.RotatedLog(fifo)); err == nil {
		t.Errorf("%s was created", vtty.RotatedLog(fifo))
	}
}

// TestCopyLogFollowsRotation: `popvmm logs -f` follows a console across
// its log's rotations and loses no line: what was written to the log just
// before it was renamed comes before the new log's first line. (The
// follower looks every quarter second: it keeps up with up to two
// rotations between looks.)
func TestCopyLogFollowsRotation(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "k.console.log")
	c, err := vtty.OpenConsoleConfig(logPath, vtty.ConsoleConfig{LogMax: vtty.MinLogMax})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &watchWriter{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- vtty.CopyLog(ctx, logPath, w, true) }()
	var want strings.Builder
	for i := range 20_000 { // about 3 rotations
		line := fmt.Sprintf("line %05d\n", i)
		want.WriteString(line)
		c.Write([]byte(line))
		if i%4000 == 3999 {
			// A burst under the cap, then as long as the follower
			// takes to see it: at most one rotation per look.
			c.Flush()
			w.waitFor(t, line)
		}
	}
	cancel()
	<-done
	w.mu.Lock()
	got := w.buf.String()
	w.mu.Unlock()
	if got != want.String() || c.Rotations() < 3 {
		t.Errorf("followed %d of %d bytes over %d rotations: not the whole output", len(got), want.Len(), c.Rotations())
	}
}
