package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
)

// TestKernelToKernelTTY: two agents (kernels "alpha" and "beta") on one
// window; a user of alpha runs `popagent tty beta` through alpha's local
// socket and gets beta's shell over the window.
func TestKernelToKernelTTY(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock, _ := ipitest.Serve(t, 4<<20, 4, ipi.ServerConfig{Vectors: 1, MaxPeers: 4})
	ctx, cancel := context.WithCancel(context.Background())
	agents := make(chan error, 2)
	for _, name := range []string{"alpha", "beta"} {
		go func() {
			agents <- run(ctx, agentConfig{window: sock, name: name, proc: "/proc", local: filepath.Join(dir, name+".sock")}, quiet)
		}()
	}
	defer func() {
		cancel()
		for range 2 {
			<-agents
		}
	}()

	// Wait until alpha's local socket answers and beta is on the window.
	var out bytes.Buffer
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, w, _ := os.Pipe()
		io.WriteString(w, "echo k2k-$((6*7)) from $PPID\n")
		w.Close()
		out.Reset()
		err := ttyClient(filepath.Join(dir, "alpha.sock"), "beta", r, &out)
		r.Close()
		if err == nil && strings.Contains(out.String(), "k2k-42") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tty alpha→beta: %v, output %q", err, out.String())
		}
		time.Sleep(50 * time.Millisecond) // the agents are still checking in
	}
	if err := ttyClient(filepath.Join(dir, "alpha.sock"), "gamma", os.Stdin, io.Discard); err == nil || !strings.Contains(err.Error(), `no kernel named "gamma"`) {
		t.Errorf("tty to an unknown kernel = %v", err)
	}
}
