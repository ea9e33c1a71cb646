// Package ipitest serves a shared window for tests: a memfd window,
// optionally formatted for the messaging layer, and an ivshmem server on a
// socket in the test's temporary directory, all stopped at cleanup.
package ipitest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
)

// Serve creates a window of size bytes, formats it for formatPeers peers
// when formatPeers > 0, and serves it with cfg. It returns the server's
// socket and the server.
func Serve(t testing.TB, size int64, formatPeers int, cfg ipi.ServerConfig) (string, *ipi.Server) {
	t.Helper()
	win, err := ipi.NewWindow("test", size)
	if err != nil {
		t.Fatal(err)
	}
	if formatPeers > 0 {
		mem, err := win.Map()
		if err != nil {
			t.Fatal(err)
		}
		_, err = msg.Format(mem, formatPeers)
		ipi.Unmap(mem)
		if err != nil {
			t.Fatal(err)
		}
	}
	srv, err := ipi.NewServer(win, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ivshmem.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ivshmem server: %v", err)
		}
		win.Close() // after Serve returned: it hands out the window's fd
	})
	return sock, srv
}
