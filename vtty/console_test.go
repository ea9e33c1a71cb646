package vtty_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
	for range 1024 { // 1 MiB, far beyond any PTY buffer
		if _, err := c.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	c.Write([]byte("the end\n"))
	if time.Since(start) > 5*time.Second {
		t.Errorf("1 MiB of output took %v: writes block on the PTY", time.Since(start))
	}
	if st, _ := os.Stat(logPath); st.Size() != 1<<20+8 {
		t.Errorf("log has %d bytes", st.Size())
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
