// Package qemuwindow runs the tier-2 window guest (tests/guests/window.c)
// under QEMU's ivshmem-doorbell, two QEMU processes on one ivshmem server,
// for the doorbell round-trip comparison with popvmm's window device
// (bench/window-doorbell.sh). Debian's QEMU ships no ivshmem-server, so the
// server is popvmm's (ipi.Server), which speaks QEMU's protocol.
package qemuwindow

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
)

// console is a QEMU's serial output, line by line with arrival times.
type console struct {
	mu    sync.Mutex
	lines []string
	at    []time.Time
	cond  *sync.Cond
}

func newConsole(r io.Reader) *console {
	c := &console{}
	c.cond = sync.NewCond(&c.mu)
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, s.Text())
			c.at = append(c.at, time.Now())
			c.cond.Broadcast()
			c.mu.Unlock()
		}
		c.mu.Lock()
		c.lines = append(c.lines, "<eof>")
		c.at = append(c.at, time.Now())
		c.cond.Broadcast()
		c.mu.Unlock()
	}()
	return c
}

func (c *console) wait(t *testing.T, who, prefix string) (string, time.Time) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for i, l := range c.lines {
			if j := strings.Index(l, prefix); j >= 0 { // SeaBIOS leaves no newline before the guest's first line
				return l[j:], c.at[i]
			}
			if l == "<eof>" {
				t.Fatalf("%s exited before %q; console:\n%s", who, prefix, strings.Join(c.lines, "\n"))
			}
		}
		c.cond.Wait()
	}
}

func TestQEMUWindowDoorbells(t *testing.T) {
	if os.Getenv("POPVMM_BENCH_QEMU") == "" {
		t.Skip("a benchmark: bench/window-doorbell.sh runs it (POPVMM_BENCH_QEMU=1)")
	}
	elf, _ := filepath.Abs("out/window-mb.elf")
	if _, err := os.Stat(elf); err != nil {
		t.Fatalf("build the guest first (bench/qemu-window/build.sh): %v", err)
	}
	rounds := 2000
	if n, err := strconv.Atoi(os.Getenv("POPVMM_WINDOW_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	accel := "kvm"
	if os.Getenv("QEMU_ACCEL") != "" {
		accel = os.Getenv("QEMU_ACCEL")
	}
	const size = 1 << 20
	win, err := ipi.NewWindow("qemu-bench", size)
	if err != nil {
		t.Fatal(err)
	}
	defer win.Close()
	mem, err := win.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer ipi.Unmap(mem)
	if _, err := msg.Format(mem, 4); err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(mem[4096+2048:], uint32(rounds))
	srv, err := ipi.NewServer(win, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 4}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ivshmem.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	limit := 10 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("QEMU_TIMEOUT")); err == nil {
		limit = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit) // then the QEMUs are killed: their consoles end
	defer cancel()
	served := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(served) }()
	defer func() { cancel(); <-served }()

	var cons []*console
	for i := range 2 {
		// Peer ids follow connection order: start the second QEMU once the
		// first one's guest has read its IVPosition.
		cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-M", "pc", "-accel", accel, "-cpu", "max", "-m", "64", "-smp", "1",
			"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", elf,
			"-chardev", "socket,path="+sock+",id=ivs", "-device", "ivshmem-doorbell,chardev=ivs,vectors=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("qemu: %v", err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		c := newConsole(out)
		cons = append(cons, c)
		c.wait(t, fmt.Sprint("qemu ", i), fmt.Sprintf("window: ready, peer %d", i))
	}
	_, t0 := cons[0].wait(t, "qemu 0", "window: pingpong start")
	_, t1 := cons[0].wait(t, "qemu 0", "window: pingpong done")
	cons[1].wait(t, "qemu 1", "window: pingpong done")
	el := t1.Sub(t0)
	t.Logf("guest↔guest doorbell round trip through QEMU's ivshmem-doorbell (accel %s): %d rounds in %v, %.2f µs a round trip",
		accel, rounds, el, float64(el.Nanoseconds())/float64(rounds)/1e3)
	for i, c := range cons {
		for _, what := range []string{"window: interrupts ", "window: lost doorbells "} {
			l, _ := c.wait(t, fmt.Sprint("qemu ", i), what)
			t.Logf("qemu %d: %s", i, l)
		}
	}
}
