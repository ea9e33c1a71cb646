package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
	"github.com/popvmm/popvmm/internal/syncbuf"
)

// TestTransient: the errors a server outlives, however wrapped (as
// net.Listener.Accept and os.File.Read return them), and none other.
func TestTransient(t *testing.T) {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EPROTO, unix.EINTR, unix.EAGAIN} {
		for _, wrapped := range []error{e,
			&net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", e)},
			&os.PathError{Op: "read", Path: "/dev/net/tun", Err: e},
			fmt.Errorf("accept control connection: %w", e)} {
			if !retry.Transient(wrapped) {
				t.Errorf("Transient(%v) = false", wrapped)
			}
		}
	}
	for _, e := range []error{nil, io.EOF, net.ErrClosed, os.ErrDeadlineExceeded, unix.EBADF, unix.EINVAL, unix.EBADFD, unix.EIO,
		context.Canceled, errors.New("too many open files")} {
		if retry.Transient(e) {
			t.Errorf("Transient(%v) = true", e)
		}
	}
}

// TestBackoff: 5 ms doubling to 1 s, and back to 5 ms after Reset.
func TestBackoff(t *testing.T) {
	var b retry.Backoff
	var got []time.Duration
	for range 10 {
		got = append(got, b.Next())
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != retry.MinDelay {
		t.Errorf("after Reset: %v", d)
	}
}

// TestAcceptRetriesTransient: Accept outlives a run of transient errors
// (logging them rate-limited, with the count), returns the connection that
// follows, and returns at once an error that does not pass or one that
// comes once ctx has ended.
func TestAcceptRetriesTransient(t *testing.T) {
	var b syncbuf.Buffer
	log := ratelog.New(slog.New(slog.NewTextHandler(&b, nil)), 2, time.Hour)
	errs := []error{unix.EMFILE, unix.EMFILE, unix.ENFILE, unix.ECONNABORTED, unix.EINTR, unix.ENOBUFS, unix.ENOMEM}
	calls := 0
	accept := func() (string, error) {
		calls++
		if calls <= len(errs) {
			return "", &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", errs[calls-1])}
		}
		return "conn", nil
	}
	c, err := retry.Accept(context.Background(), accept, log, "test socket")
	if c != "conn" || err != nil || calls != len(errs)+1 {
		t.Fatalf("Accept = %q, %v after %d calls", c, err, calls)
	}
	log.Flush()
	if n := strings.Count(b.String(), "accept failed; retrying"); n != 3 || !strings.Contains(b.String(), "suppressed=5") {
		t.Errorf("log (%d lines, want 2 and a count of 5):\n%s", n, b.String())
	}

	calls = 0
	_, err = retry.Accept(context.Background(), func() (string, error) { calls++; return "", net.ErrClosed }, log, "test socket")
	if !errors.Is(err, net.ErrClosed) || calls != 1 {
		t.Errorf("a closed listener: %v after %d calls", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = retry.Accept(ctx, func() (string, error) { return "", unix.EMFILE }, log, "test socket")
	if !errors.Is(err, unix.EMFILE) {
		t.Errorf("ended ctx: %v", err)
	}
}

// TestAcceptOutOfFds: a real listener while the process is out of file
// descriptors (RLIMIT_NOFILE lowered under what is open) keeps accepting
// once they are back; the connections that waited meanwhile are accepted.
func TestAcceptOutOfFds(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var b syncbuf.Buffer
	log := ratelog.New(slog.New(slog.NewTextHandler(&b, nil)), 1, time.Hour)
	accepted := make(chan error, 64)
	gate := make(chan struct{})
	go func() {
		<-gate // accept once every fd is taken
		for {
			c, err := retry.Accept(ctx, ln.AcceptUnix, log, "test socket")
			accepted <- err
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var conns []net.Conn
	lowerFds(t, func() {
		for range 64 { // until the process is out of fds
			c, err := net.Dial("unix", sock)
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		close(gate)
		time.Sleep(100 * time.Millisecond) // Accept meets EMFILE meanwhile
	})
	if len(conns) == 0 {
		t.Fatal("no connection made under the lowered limit")
	}
	for range conns {
		select {
		case err := <-accepted:
			if err != nil {
				t.Fatalf("Accept = %v, want the waiting connections", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the waiting connections were not accepted once fds were back")
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if !strings.Contains(b.String(), "too many open files") {
		t.Errorf("no EMFILE logged:\n%s", b.String())
	}
}

// lowerFds runs f with RLIMIT_NOFILE a few above the fds open now, so
// that f soon runs out of them (EMFILE); the limit is restored after.
func lowerFds(t *testing.T, f func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(len(fds) + 4)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	f()
}
