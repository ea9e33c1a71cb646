package main

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// flakyListener fails its first Accepts with transient errors, as a
// process out of file descriptors or a client that gave up would, then
// accepts from the real listener.
type flakyListener struct {
	net.Listener
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: err}
	}
	return l.Listener.Accept()
}

// TestServeLocalOutlivesAcceptErrors: EMFILE, ENFILE and ECONNABORTED on
// the local socket's accept do not end `popagent tty`'s service: the next
// client is answered.
func TestServeLocalOutlivesAcceptErrors(t *testing.T) {
	ln, err := net.Listen("unix", t.TempDir()+"/agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fl := &flakyListener{Listener: ln, errs: []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveLocal(ctx, fl, nil, nil, slog.New(slog.DiscardHandler))
	}()
	conn, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	conn.Write([]byte("hello\n"))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "error: unknown request") {
		t.Fatalf("answer after three accept errors: %q, %v", line, err)
	}
	cancel()
	ln.Close()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("serveLocal did not end with its context and listener")
	}
}
