package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotUp is returned when no supervisor answers at a socket.
var ErrNotUp = errors.New("cluster is not up")

// OpError is a failed Response as an error.
type OpError struct {
	Code    string
	Message string
}

func (e *OpError) Error() string { return e.Message }

// Client talks to one supervisor.
type Client struct {
	Socket string
}

// Call sends req and waits for the response, or for ctx.
func (c Client) Call(ctx context.Context, req Request) (*Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (no supervisor at %s)", ErrNotUp, c.Socket)
		}
		return nil, fmt.Errorf("connect to %s: %w", c.Socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("read %s reply: %w", req.Op, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("malformed %s reply: %w", req.Op, err)
	}
	if !resp.OK {
		return &resp, &OpError{Code: resp.Code, Message: resp.Error}
	}
	return &resp, nil
}

// Status asks for the cluster's status.
func (c Client) Status(ctx context.Context) (*Status, error) {
	resp, err := c.Call(ctx, Request{Op: OpStatus})
	if err != nil {
		return nil, err
	}
	if resp.Status == nil {
		return nil, errors.New("status reply without a status")
	}
	return resp.Status, nil
}

// Down asks the supervisor to stop and waits, on the run directory's lock,
// until it has released everything, or until ctx ends.
func (c Client) Down(ctx context.Context) error {
	// Open the lock before asking, so the wait is on the supervisor's file.
	lock, err := os.Open(filepath.Join(filepath.Dir(c.Socket), lockName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w (no supervisor at %s)", ErrNotUp, c.Socket)
		}
		return fmt.Errorf("open run directory lock: %w", err)
	}
	if _, err := c.Call(ctx, Request{Op: OpDown}); err != nil {
		lock.Close()
		return err
	}
	done := make(chan error, 1)
	go func() {
		defer lock.Close() // also drops the lock we take
		for {
			err := unix.Flock(int(lock.Fd()), unix.LOCK_EX)
			if err != unix.EINTR {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("wait for the supervisor to stop: %w", os.NewSyscallError("flock", err))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cluster did not stop: %w", ctx.Err())
	}
}

// Live lists the names of clusters whose supervisor listens under runRoot:
// in a run directory RUNROOT/NAME, or in one the run root's registry names
// (Register). Accepting a connection is the proof: a supervisor that died
// left a socket nobody listens on (connection refused at once), and a busy
// one is not mistaken for a dead one however long its status takes.
func Live(ctx context.Context, runRoot string) []string {
	socks, _ := filepath.Glob(filepath.Join(runRoot, "*", SocketName))
	names := registered(runRoot)
	for _, s := range socks {
		names = append(names, filepath.Base(filepath.Dir(s)))
	}
	slices.Sort(names)
	names = slices.Compact(names)
	live := names[:0]
	for _, n := range names {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := (&net.Dialer{}).DialContext(cctx, "unix", socketOf(runRoot, n))
		cancel()
		if err == nil {
			conn.Close()
			live = append(live, n)
		}
	}
	return live
}

// socketOf is the control socket of cluster name under runRoot.
func socketOf(runRoot, name string) string {
	return filepath.Join(ClusterDir(runRoot, name), SocketName)
}

// Find picks the cluster a command addresses: the one named, or, when name
// is empty, the only one up under runRoot.
func Find(ctx context.Context, runRoot, name string) (Client, error) {
	if name != "" {
		return Client{Socket: socketOf(runRoot, name)}, nil
	}
	live := Live(ctx, runRoot)
	switch len(live) {
	case 0:
		return Client{}, fmt.Errorf("%w: no cluster is up under %s", ErrNotUp, runRoot)
	case 1:
		return Client{Socket: socketOf(runRoot, live[0])}, nil
	}
	return Client{}, fmt.Errorf("%d clusters are up (%s): choose one with -c NAME", len(live), strings.Join(live, ", "))
}
