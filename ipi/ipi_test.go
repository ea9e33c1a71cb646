package ipi_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
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

// waitEvent waits for c's next event, which must be want's (ID, Joined),
// and returns it.
func waitEvent(t *testing.T, c *ipi.Client, want ipi.PeerEvent) ipi.PeerEvent {
	t.Helper()
	select {
	case e, ok := <-c.Events():
		if !ok || e.ID != want.ID || e.Joined != want.Joined {
			t.Fatalf("peer %d: event %+v (open %v), want %+v", c.ID, e, ok, want)
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("peer %d: no event %+v within 10s", c.ID, want)
	}
	panic("unreachable")
}

func TestJoinShareRingLeave(t *testing.T) {
	sock, srv := serve(t, ipi.ServerConfig{Vectors: 2, FirstID: 3, MaxPeers: 4})
	a := dial(t, sock, 2)
	b := dial(t, sock, 2)
	if a.ID != 3 || b.ID != 4 {
		t.Fatalf("ids %d %d, want 3 4 (kernels own 0-2)", a.ID, b.ID)
	}
	joined := waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: true})
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
	if left := waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: false}); left.Incarnation != joined.Incarnation {
		t.Errorf("departure of incarnation %d, want %d (the join's)", left.Incarnation, joined.Incarnation)
	}
	if err := a.Ring(4, 0); !errors.Is(err, ipi.ErrNoPeer) {
		t.Errorf("Ring(departed) = %v, want ErrNoPeer", err)
	}
	c := dial(t, sock, 2)
	if c.ID != 4 {
		t.Errorf("new peer got id %d, want the freed 4", c.ID)
	}
	if again := waitEvent(t, a, ipi.PeerEvent{ID: 4, Joined: true}); again.Incarnation <= joined.Incarnation {
		t.Errorf("id 4's next holder is incarnation %d, want more than %d", again.Incarnation, joined.Incarnation)
	}
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
			if e.ID == late.ID && e.Joined && slices.Contains(a.Peers(), late.ID) {
				return
			}
		case <-deadline:
			t.Fatalf("late peer %d's join not announced within 10s", late.ID)
		}
	}
}

// fakeFd is what rides with a fake server's message.
type fakeFd int

const (
	noFd     fakeFd = iota
	eventFd         // a fresh eventfd
	windowFd        // a 1 MiB window
	pipeFd          // a pipe: not an eventfd
	twoFds          // two eventfds in one message
)

type fakeMsg struct {
	v  int64
	fd fakeFd
}

// greeting is a well-formed opening for a client with id own: version, id,
// window, vectors eventfds of each peer, then as many of its own.
func greeting(own, vectors int, peers ...int) []fakeMsg {
	msgs := []fakeMsg{{0, noFd}, {int64(own), noFd}, {-1, windowFd}}
	for _, p := range append(peers, own) {
		for range vectors {
			msgs = append(msgs, fakeMsg{int64(p), eventFd})
		}
	}
	return msgs
}

// fakeServer serves one client: it sends first, then what the test sends
// on the returned channel, and keeps the connection open until the test
// ends, or hangs up after first when hangUp is set.
func fakeServer(t *testing.T, first []fakeMsg, hangUp bool) (string, chan<- []fakeMsg) {
	t.Helper()
	win, err := ipi.NewWindow("fake", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	more := make(chan []fakeMsg)
	end := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() {
		close(end)
		ln.Close()
		<-done
		win.Close()
	})
	send := func(c *net.UnixConn, m fakeMsg) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(m.v))
		var fds []int
		switch m.fd {
		case eventFd:
			fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
			fds = []int{fd}
		case windowFd:
			fd, _ := unix.Dup(win.Fd())
			fds = []int{fd}
		case pipeFd:
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			unix.Close(p[0])
			fds = []int{p[1]}
		case twoFds:
			a, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
			b, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
			fds = []int{a, b}
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		c.WriteMsgUnix(b[:], oob, nil)
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	go func() {
		defer close(done)
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		for _, m := range first {
			send(c, m)
		}
		if hangUp {
			return
		}
		for {
			select {
			case msgs := <-more:
				for _, m := range msgs {
					send(c, m)
				}
			case <-end:
				return
			}
		}
	}()
	return sock, more
}

// TestDialRejectsMalformedServers: every malformed or unexpected greeting
// is a protocol error that says what was wrong, and Dial never waits for
// a greeting that stopped: a server with fewer vectors than the client is
// found out within a second, whatever the context allows.
func TestDialRejectsMalformedServers(t *testing.T) {
	tests := []struct {
		name    string
		msgs    []fakeMsg
		hangUp  bool
		vectors int
		want    string
	}{
		{"wrong version", []fakeMsg{{7, noFd}}, false, 1, "version 7, want 0"},
		{"version with fd", []fakeMsg{{0, eventFd}}, false, 1, "version message carries an fd"},
		{"negative id", []fakeMsg{{0, noFd}, {-5, noFd}}, false, 1, "own id -5 out of range"},
		{"id too large", []fakeMsg{{0, noFd}, {1 << 16, noFd}}, false, 1, "own id 65536 out of range"},
		{"id with fd", []fakeMsg{{0, noFd}, {1, eventFd}}, false, 1, "own id message carries an fd"},
		{"no window fd", []fakeMsg{{0, noFd}, {1, noFd}, {-1, noFd}}, false, 1, "expected the window fd"},
		{"closes early", []fakeMsg{{0, noFd}}, true, 1, "closed the connection during the greeting"},
		{"silent after the window", greeting(1, 1)[:3], false, 1, "stopped in the greeting"},
		{"departure in greeting", append(greeting(1, 1)[:3], fakeMsg{0, noFd}), false, 1, "peer 0 message without eventfd"},
		{"two fds", append(greeting(1, 1)[:3], fakeMsg{0, twoFds}), false, 1, "more than one fd in one message"},
		{"peer id out of range", append(greeting(1, 1)[:3], fakeMsg{70000, eventFd}), false, 1, "peer id 70000 out of range"},
		{"not an eventfd", append(greeting(1, 1)[:3], fakeMsg{0, pipeFd}), false, 1, "not an eventfd"},
		{"duplicate peer", greeting(3, 1, 0, 2, 0), false, 1, "peer 0 announced again"},
		{"peer after own", append(greeting(3, 1), fakeMsg{0, eventFd}), false, 2, "eventfd of peer 0 after this client's own"},
		{"server fewer vectors", greeting(0, 1), false, 2,
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for this client, then nothing"},
		{"server fewer vectors, with peers", greeting(2, 1, 0, 1), false, 2,
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for peer 0, then an eventfd of peer 1)"},
		{"server fewer vectors, one peer", greeting(2, 1, 0), false, 2,
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for peer 0, then this client's own)"},
		{"server more vectors, with peers", greeting(2, 2, 0), false, 1,
			"vectors mismatch: the server has at least 2 vectors, this client 1 (it sent eventfd 2 for peer 0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock, _ := fakeServer(t, tt.msgs, tt.hangUp)
			start := time.Now()
			c, err := ipi.Dial(context.Background(), sock, tt.vectors)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded against a malformed server")
			}
			if !errors.Is(err, ipi.ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Dial = %v, want a protocol error containing %q", err, tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Dial took %v", d)
			}
		})
	}
}

// TestClientRejectsMalformedMessages: after the greeting, an unexpected
// message ends the client's connection with a protocol error (Err), closes
// its events and forgets the peers, whose eventfds can no longer be
// trusted.
func TestClientRejectsMalformedMessages(t *testing.T) {
	tests := []struct {
		name    string
		vectors int
		msgs    []fakeMsg
		want    string
	}{
		{"own id as a peer (server more vectors)", 1, []fakeMsg{{1, eventFd}},
			"vectors mismatch: the server has at least 2 vectors, this client 1 (it sent eventfd 2 for this client's own id 1"},
		{"own departure", 1, []fakeMsg{{1, noFd}}, "departure of this client's own id 1"},
		{"unknown departure", 1, []fakeMsg{{5, noFd}}, "departure of unknown peer 5"},
		{"peer id out of range", 1, []fakeMsg{{-7, eventFd}}, "peer id -7 out of range"},
		{"duplicate join", 1, []fakeMsg{{5, eventFd}, {5, noFd}, {0, eventFd}}, "peer 0 announced again without leaving"},
		{"greeted peer again", 1, []fakeMsg{{0, eventFd}}, "peer 0 announced again without leaving"},
		{"two fds", 1, []fakeMsg{{5, twoFds}}, "more than one fd in one message"},
		{"not an eventfd", 1, []fakeMsg{{5, pipeFd}}, "not an eventfd"},
		{"server more vectors", 1, []fakeMsg{{5, eventFd}, {5, eventFd}},
			"vectors mismatch: the server has at least 2 vectors, this client 1 (it sent eventfd 2 for peer 5)"},
		{"server fewer vectors", 2, []fakeMsg{{5, eventFd}, {6, eventFd}},
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for peer 5, then an eventfd of peer 6)"},
		{"server fewer vectors, silence", 2, []fakeMsg{{5, eventFd}},
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for peer 5, then nothing for 1s)"},
		{"server fewer vectors, departure", 2, []fakeMsg{{5, eventFd}, {5, noFd}},
			"vectors mismatch: the server has 1 vectors, this client 2 (it sent 1 eventfds for peer 5, then its departure)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock, more := fakeServer(t, greeting(1, tt.vectors, 0), false)
			c := dial(t, sock, tt.vectors)
			more <- tt.msgs
			deadline := time.After(10 * time.Second)
			for open := true; open; {
				select {
				case _, open = <-c.Events():
				case <-deadline:
					t.Fatal("event stream still open 10s after a malformed message")
				}
			}
			if err := c.Err(); !errors.Is(err, ipi.ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Err = %v, want a protocol error containing %q", err, tt.want)
			}
			if p := c.Peers(); len(p) != 0 {
				t.Errorf("Peers = %v after a protocol error, want none", p)
			}
			if err := c.Ring(0, 0); !errors.Is(err, ipi.ErrNoPeer) {
				t.Errorf("Ring(0) = %v after a protocol error, want ErrNoPeer", err)
			}
		})
	}
}

// TestVectorsMismatch: against the real server, a client expecting
// another number of vectors gets a protocol error naming both counts and
// never lists itself as a peer.
func TestVectorsMismatch(t *testing.T) {
	tests := []struct {
		name            string
		server, client  int
		othersFirst     bool
		want            string
		mayJoinThenFail bool // the server's extra eventfds may come after Dial returned
	}{
		{"server fewer", 1, 2, false, "the server has 1 vectors, this client 2", false},
		{"server fewer, with a peer", 1, 2, true, "the server has 1 vectors, this client 2", false},
		{"server more", 2, 1, false, "the server has at least 2 vectors, this client 1", true},
		{"server more, with a peer", 2, 1, true, "the server has at least 2 vectors, this client 1", false},
		{"server many more", 8, 3, false, "this client 3", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock, _ := serve(t, ipi.ServerConfig{Vectors: tt.server, FirstID: 0, MaxPeers: 4})
			if tt.othersFirst {
				dial(t, sock, tt.server)
			}
			c, err := ipi.Dial(context.Background(), sock, tt.client)
			if err == nil && tt.mayJoinThenFail {
				defer c.Close()
				for range c.Events() {
				}
				err = c.Err()
				if slices.Contains(c.Peers(), c.ID) {
					t.Errorf("client %d lists itself as a peer", c.ID)
				}
			} else if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !errors.Is(err, ipi.ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want a protocol error containing %q", err, tt.want)
			}
		})
	}
}

// TestDialCancelled: a server that accepts and never speaks holds Dial
// only until its context ends.
func TestDialCancelled(t *testing.T) {
	sock, _ := fakeServer(t, nil, false)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		c, err := ipi.Dial(ctx, sock, 1)
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Dial still waiting 5s after its context was cancelled")
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

// TestNonReadingPeerIsDropped: a peer that joins and never reads its
// socket is disconnected once its messages pile up, and meanwhile every
// other peer joins and leaves at full speed: nobody waits for its socket.
func TestNonReadingPeerIsDropped(t *testing.T) {
	sock, srv := serve(t, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 8})
	stuck, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	waitPeers(t, srv, func(ids []int) bool { return slices.Contains(ids, 0) })
	// Each cycle queues a join and a departure for the stuck peer: enough
	// to fill its socket buffer and its queue several times over.
	for i := range 1000 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := ipi.Dial(ctx, sock, 1)
		cancel()
		if err != nil {
			t.Fatalf("cycle %d: join with a non-reading peer present: %v", i, err)
		}
		c.Close()
	}
	waitPeers(t, srv, func(ids []int) bool { return !slices.Contains(ids, 0) })
}

// TestSilentClientsDoNotStallJoins: clients that connect and neither read
// nor send, with greetings larger than a socket buffer holds, hold up
// neither the accept loop nor anyone's join, and ringing still works.
func TestSilentClientsDoNotStallJoins(t *testing.T) {
	sock, _ := serve(t, ipi.ServerConfig{Vectors: ipi.MaxVectors, FirstID: 0, MaxPeers: 16})
	a := dial(t, sock, ipi.MaxVectors)
	for range 4 {
		dial(t, sock, ipi.MaxVectors)
	}
	for range 3 {
		silent, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, err := ipi.Dial(ctx, sock, ipi.MaxVectors)
	if err != nil {
		t.Fatalf("join behind silent clients: %v", err)
	}
	defer b.Close()
	deadline := time.After(10 * time.Second)
	for joined := false; !joined; {
		select {
		case e := <-a.Events():
			joined = e.ID == b.ID && e.Joined
		case <-deadline:
			t.Fatalf("peer %d never learned of peer %d", a.ID, b.ID)
		}
	}
	if err := a.Ring(b.ID, ipi.MaxVectors-1); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Wait(ctxT(t), ipi.MaxVectors-1); err != nil || n != 1 {
		t.Errorf("b.Wait = %d, %v", n, err)
	}
}

// TestOnLeaveBeforeIDReuse: the server reports a departure while the id
// is still the leaver's, so what is recorded about it then (popvmm marks
// it gone in the peer table) cannot reach the id's next holder.
func TestOnLeaveBeforeIDReuse(t *testing.T) {
	var once atomic.Bool
	reporting := make(chan int)
	release := make(chan struct{})
	cfg := ipi.ServerConfig{Vectors: 1, FirstID: 2, MaxPeers: 1, OnLeave: func(id int) {
		if once.CompareAndSwap(false, true) {
			reporting <- id
			<-release
		}
	}}
	sock, _ := ipitest.Serve(t, 1<<20, 0, cfg)
	a := dial(t, sock, 1)
	a.Close()
	select {
	case id := <-reporting:
		if id != a.ID {
			t.Errorf("OnLeave(%d), want %d", id, a.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("departure not reported within 10s")
	}
	// While the departure is being reported, the only id is still taken.
	if c, err := ipi.Dial(ctxT(t), sock, 1); err == nil {
		c.Close()
		t.Errorf("peer %d joined while the departure of its id's holder was being reported", c.ID)
	}
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := ipi.Dial(ctxT(t), sock, 1)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("id not free 10s after the departure was reported: %v", err)
		}
	}
}

// waitPeers waits until the server's peer ids satisfy ok.
func waitPeers(t *testing.T, srv *ipi.Server, ok func([]int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(srv.Peers()) {
		if time.Now().After(deadline) {
			t.Fatalf("server peers %v after 10s", srv.Peers())
		}
		time.Sleep(time.Millisecond) // the server changes its table on its own goroutines
	}
}

// TestServerOutlivesFdExhaustion: a server whose process runs out of file
// descriptors for a while (its accept fails with EMFILE) waits and accepts
// again (internal/retry): Serve does not return, and a host peer joins
// once fds are back.
func TestServerOutlivesFdExhaustion(t *testing.T) {
	sock, srv := serve(t, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 100})
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	lim := old
	lim.Cur = uint64(len(fds) + 8)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 64 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond) // the server's accepts meet EMFILE
	for _, c := range conns {
		c.Close()
	}
	unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	if len(conns) == 0 {
		t.Fatal("no connection made under the lowered limit")
	}
	b := dial(t, sock, 1)
	waitPeers(t, srv, func(ids []int) bool { return slices.Contains(ids, b.ID) })
}
