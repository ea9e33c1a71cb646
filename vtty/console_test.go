package vtty_test

import (
	"bytes"
	"context"
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
