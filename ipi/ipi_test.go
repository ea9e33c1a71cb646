package ipi_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serve starts a server for a fresh 1 MiB window and returns its socket.
func serve(t *testing.T, cfg ipi.ServerConfig) (string, *ipi.Server) {
	t.Helper()
	return ipitest.Serve(t, 1<<20, 0, cfg)
}

func dial(t *testing.T, sock string, vectors int) *ipi.Client {
	t.Helper()
	c, err := ipi.Dial(ctxT(t), sock, vectors)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitEvent(t *testing.T, c *ipi.Client, want ipi.PeerEvent) {
	t.Helper()
	select {
	case e, ok := <-c.Events():
		if !ok || e != want {
			t.Fatalf("peer %d: event %+v (open %v), want %+v", c.ID, e, ok, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("peer %d: no event %+v within 10s", c.ID, want)
	}
}

func TestJoinShareRingLeave(t *testing.T) {
	sock, srv := serve(t, ipi.ServerConfig{Vectors: 2, FirstID: 3, MaxPeers: 4})
	a := dial(t, sock, 2)
	b := dial(t, sock, 2)
	if a.ID != 3 || b.ID != 4 {
		t.Fatalf("ids %d %d, want 3 4 (kernels own 0-2)", a.ID, b.ID)
	}
	waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: true})
	if !slices.Equal(b.Peers(), []int{3}) {
		t.Errorf("b.Peers = %v, want [3]", b.Peers())
	}

	// One window: what a writes, b reads.
	copy(a.Mem[1000:], "hello across the window")
	if got := string(b.Mem[1000:1023]); got != "hello across the window" {
		t.Errorf("b reads %q", got)
	}

	// a rings b on vector 1; b's vector 0 stays quiet.
	if err := a.Ring(4, 1); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Wait(ctxT(t), 1); err != nil || n != 1 {
		t.Errorf("b.Wait(1) = %d, %v", n, err)
	}
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.Wait(short, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("b.Wait(0) = %v, want the deadline (nobody rang vector 0)", err)
	}
	if err := a.Ring(9, 0); !errors.Is(err, ipi.ErrNoPeer) {
		t.Errorf("Ring(absent) = %v, want ErrNoPeer", err)
	}

	// b leaves: a is told, b's id is free again and reused.
	b.Close()
	waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: false})
	if err := a.Ring(4, 0); !errors.Is(err, ipi.ErrNoPeer) {
		t.Errorf("Ring(departed) = %v, want ErrNoPeer", err)
	}
	c := dial(t, sock, 2)
	if c.ID != 4 {
		t.Errorf("new peer got id %d, want the freed 4", c.ID)
	}
	waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: true})
	if got := len(srv.Peers()); got != 2 {
		t.Errorf("server has %d peers, want 2", got)
	}
}

func TestServerRefusesBeyondMaxPeers(t *testing.T) {
	sock, _ := serve(t, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 1})
	dial(t, sock, 1)
	if c, err := ipi.Dial(ctxT(t), sock, 1); err == nil {
		c.Close()
		t.Fatal("second peer joined a server limited to one")
	}
}

// TestHostileClients: a peer that sends data, one that vanishes mid-way,
// and one that connects and closes at once are all removed and announced;
// the server keeps serving.
func TestHostileClients(t *testing.T) {
	sock, _ := serve(t, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 8})
	a := dial(t, sock, 1)

	// Talks although clients must not.
	talker := dial(t, sock, 1)
	waitEvent(t, a, ipi.PeerEvent{ID: talker.ID, Joined: true})
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// Read its greeting so it is a full peer, then send garbage.
	buf := make([]byte, 4096)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	raw.Read(buf)
	waitEvent(t, a, ipi.PeerEvent{ID: 2, Joined: true})
	raw.Write([]byte("garbage from a client"))
	waitEvent(t, a, ipi.PeerEvent{ID: 2, Joined: false})

	// Connects and closes at once.
	quick, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	quick.Close()
	// The server still serves: a new peer joins and is announced. The
	// quick client may or may not have been greeted (and announced, then
	// gone) before it closed, and late may reuse its id, so events before
	// late's join are skipped.
	late := dial(t, sock, 1)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-a.Events():
			if !ok {
				t.Fatal("event stream closed")
			}
			if e == (ipi.PeerEvent{ID: late.ID, Joined: true}) && slices.Contains(a.Peers(), late.ID) {
				return
			}
		case <-deadline:
			t.Fatalf("late peer %d's join not announced within 10s", late.ID)
		}
	}
}

// fakeServer sends the given messages (value, with a fresh eventfd when
// withFd) to the first client, then closes.
func fakeServer(t *testing.T, msgs []int64, withFd []bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer ln.Close()
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		for i, m := range msgs {
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], uint64(m))
			var oob []byte
			if withFd[i] {
				fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
				oob = unix.UnixRights(fd)
				defer unix.Close(fd)
			}
			c.WriteMsgUnix(b[:], oob, nil)
		}
	}()
	return sock
}

func TestDialRejectsMalformedServers(t *testing.T) {
	tests := []struct {
		name string
		msgs []int64
		fds  []bool
	}{
		{"wrong version", []int64{7}, []bool{false}},
		{"negative id", []int64{0, -5}, []bool{false, false}},
		{"no window fd", []int64{0, 1, -1}, []bool{false, false, false}},
		{"closes early", []int64{0}, []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := fakeServer(t, tt.msgs, tt.fds)
			if c, err := ipi.Dial(ctxT(t), sock, 1); err == nil {
				c.Close()
				t.Fatal("Dial succeeded against a malformed server")
			}
		})
	}
}

func TestNewWindow(t *testing.T) {
	if _, err := ipi.NewWindow("x", 1000); err == nil {
		t.Error("window of 1000 bytes accepted")
	}
	w, err := ipi.NewWindow("x", 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := unix.Ftruncate(w.Fd(), 4096); err == nil {
		t.Error("a sealed window could be shrunk")
	}
	m, err := w.Map()
	if err != nil || len(m) != 64<<10 {
		t.Fatalf("Map = %d bytes, %v", len(m), err)
	}
	ipi.Unmap(m)
}
