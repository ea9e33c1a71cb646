package agent_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/syncbuf"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
)

func TestReadInfo(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)
	}
	write("sys/kernel/osrelease", "6.1.192\n")
	write("uptime", "123.45 200.00\n")
	write("loadavg", "0.50 0.25 0.10 1/80 999\n")
	write("meminfo", "MemTotal:      262144 kB\nMemFree: 1 kB\nMemAvailable:  131072 kB\n")
	got, err := agent.ReadInfo("primary", root)
	if err != nil {
		t.Fatal(err)
	}
	want := agent.Info{Name: "primary", Release: "6.1.192", Uptime: 123.45, Load: [3]float64{0.5, 0.25, 0.1},
		MemTotal: 256 << 20, MemAvailable: 128 << 20}
	if got != want {
		t.Errorf("ReadInfo = %+v, want %+v", got, want)
	}
	if _, err := agent.ReadInfo("x", t.TempDir()); err == nil {
		t.Error("ReadInfo without osrelease succeeded")
	}
}

// chanBell is an in-process doorbell pair.
type chanBell struct {
	ch [2]chan struct{}
	id int
}

func (b chanBell) Ring(peer int) error {
	select {
	case b.ch[peer] <- struct{}{}:
	default:
	}
	return nil
}

func (b chanBell) Wait(ctx context.Context) error {
	select {
	case <-b.ch[b.id]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func pair(t *testing.T) (*msg.Node, *msg.Node) {
	t.Helper()
	mem := make([]byte, 4<<20)
	if _, err := msg.Format(mem, 2); err != nil {
		t.Fatal(err)
	}
	ch := [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
	a, _ := msg.Join(mem, 0, "agent", chanBell{ch, 0}, msg.Options{})
	b, _ := msg.Join(mem, 1, "client", chanBell{ch, 1}, msg.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	wg.Go(func() { b.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, b
}

func TestPingInfo(t *testing.T) {
	a, b := pair(t)
	agent.Serve(a, "agent", "")
	c := agent.NewCaller(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, 0); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx, 0)
	if err != nil || info.Name != "agent" || info.Release == "" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
}

// TestTTY opens a shell through the window, runs a command in it and
// exits; the session ends when the shell does.
func TestTTY(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	a, b := pair(t)
	agent.ServeTTY(a, "/bin/sh")
	in, inW := io.Pipe()
	var out syncbuf.Buffer
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() { done <- agent.TTY(ctx, b, 0, in, &out) }()
	io.WriteString(inW, "echo hello-$((6*7))\n")
	io.WriteString(inW, "exit\n")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("shell session did not end; output so far %q", out.String())
	}
	if !strings.Contains(out.String(), "hello-42") {
		t.Errorf("tty output %q lacks hello-42", out.String())
	}
}

func TestDetachReader(t *testing.T) {
	d := &agent.DetachReader{R: strings.NewReader("ls\x1dafter")}
	b := make([]byte, 16)
	n, err := d.Read(b)
	if err != nil || string(b[:n]) != "ls" {
		t.Fatalf("Read = %q, %v; want what precedes Ctrl-]", b[:n], err)
	}
	if _, err := d.Read(b); !errors.Is(err, agent.ErrDetached) {
		t.Errorf("Read after Ctrl-] = %v, want ErrDetached", err)
	}
}

// TestTTYSessionIsOneIncarnations: a TTY session belongs to the
// incarnations of the two peers that opened it. When the requester's id
// checks in anew, the shell is ended (the new holder neither sees its
// output nor types into it); when the serving agent's id checks in anew,
// the requester's session ends with an error instead of waiting forever.
func TestTTYSessionIsOneIncarnations(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	// The shell records its pid, so the test can tell when it is gone.
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	shell := filepath.Join(dir, "shell")
	script := "#!/bin/sh\necho $$ > " + pidFile + "\nexec /bin/sh \"$@\"\n"
	if err := os.WriteFile(shell, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, a, b *msg.Node) (int, <-chan error) {
		t.Helper()
		os.Remove(pidFile)
		agent.ServeTTY(a, shell)
		in, inW := io.Pipe()
		t.Cleanup(func() { inW.Close() })
		var out syncbuf.Buffer
		done := make(chan error, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		t.Cleanup(cancel)
		go func() { done <- agent.TTY(ctx, b, 0, in, &out) }()
		io.WriteString(inW, "echo ready-$((6*7))\n")
		waitFor(t, "the shell's answer", func() bool { return strings.Contains(out.String(), "ready-42") })
		raw, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
		return pid, done
	}

	t.Run("requester checks in anew", func(t *testing.T) {
		mem, nodes := window(t)
		a, b := nodes[0], nodes[1]
		start(t, a)
		stopB := start(t, b)
		pid, _ := open(t, a, b)
		stopB()
		if _, err := msg.Join(mem, 1, "client-next", nil, msg.Options{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the old requester's shell to end", func() bool {
			return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
		})
	})
	t.Run("agent checks in anew", func(t *testing.T) {
		mem, nodes := window(t)
		a, b := nodes[0], nodes[1]
		stopA := start(t, a)
		start(t, b)
		_, done := open(t, a, b)
		stopA()
		if _, err := msg.Join(mem, 0, "agent-next", nil, msg.Options{}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "went away") {
				t.Errorf("TTY = %v, want the peer went away", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("TTY still open 10s after the agent's incarnation went")
		}
	})
}

// window formats a window for two peers and joins agent 0 and client 1.
func window(t *testing.T) ([]byte, []*msg.Node) {
	t.Helper()
	mem := make([]byte, 4<<20)
	if _, err := msg.Format(mem, 2); err != nil {
		t.Fatal(err)
	}
	ch := [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
	a, _ := msg.Join(mem, 0, "agent", chanBell{ch, 0}, msg.Options{})
	b, _ := msg.Join(mem, 1, "client", chanBell{ch, 1}, msg.Options{})
	return mem, []*msg.Node{a, b}
}

// start runs n until the returned function (or the test's end) stops it.
func start(t *testing.T, n *msg.Node) func() {
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { n.Run(ctx); close(ran) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-ran }) }
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond (state another goroutine or process changes) for up
// to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRepliesOnlyFromThePeerAsked: peer 2 floods peer 0 with answers to
// every id peer 0 is likely to use (ids carry the asker's generation, which
// the peer table shows to all): pongs, info replies, TTY opened. Peer 1,
// which was asked, runs no agent. None of peer 2's answers may pass for
// peer 1's; peer 2's own agent still answers what is asked of it.
func TestRepliesOnlyFromThePeerAsked(t *testing.T) {
	mem := make([]byte, 4<<20)
	if _, err := msg.Format(mem, 3); err != nil {
		t.Fatal(err)
	}
	bells := make([]chan struct{}, 3)
	for i := range bells {
		bells[i] = make(chan struct{}, 1)
	}
	var nodes []*msg.Node
	for i, name := range []string{"popvmm", "primary", "secondary"} {
		n, err := msg.Join(mem, i, name, multiBell{bells, i}, msg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		start(t, n)
		nodes = append(nodes, n)
	}
	host, rogue := nodes[0], nodes[2]
	agent.Serve(rogue, "secondary", "")
	caller := agent.NewCaller(host)
	ttys := agent.NewTTYClient(host)

	forged, _ := json.Marshal(agent.Info{Name: "primary", Release: "forged-by-peer-2"})
	stop := make(chan struct{})
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		for {
			for k := range uint64(16) {
				id := binary.LittleEndian.AppendUint64(nil, uint64(rogue.Generation(0))<<32|k)
				rogue.Send(0, agent.SvcPong, id)
				rogue.Send(0, agent.SvcInfoReply, append(id, forged...))
				rogue.Send(0, agent.SvcTTYOpened, append(id, 1, 0, 0, 0))
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond): // a flood, not a handshake
			}
		}
	}()
	var endFlood sync.Once
	stopFlood := func() { endFlood.Do(func() { close(stop); <-flooded }) }
	defer stopFlood()

	for _, tc := range []struct {
		name string
		ask  func(ctx context.Context) error
	}{
		{"ping", func(ctx context.Context) error { _, err := caller.Ping(ctx, 1); return err }},
		{"info", func(ctx context.Context) error {
			info, err := caller.Info(ctx, 1)
			if err == nil {
				return fmt.Errorf("got %+v", info)
			}
			return err
		}},
		{"tty", func(ctx context.Context) error { return ttys.Open(ctx, 1, strings.NewReader(""), io.Discard) }},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := tc.ask(ctx)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s of peer 1 (no agent) = %v, want no reply within the deadline", tc.name, err)
		}
	}
	// Peer 2's own agent answers for peer 2, once peer 2 stops forging
	// (a peer may say anything of itself; a reply it forges under the
	// id of a request to peer 2 is its own answer).
	// Forged replies already in the ring would still be read after the
	// flood stops, and one could carry the id of the request below: wait
	// until the host has received everything peer 2 sent it.
	stopFlood()
	exchanged := func(n *msg.Node, peer int) (sent, received uint64) {
		for _, p := range n.Peers() {
			if p.ID == peer {
				return p.Sent, p.Received
			}
		}
		return 0, 0
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		sent, _ := exchanged(rogue, 0)
		_, received := exchanged(host, 2)
		if received >= sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host received %d of the %d messages peer 2 sent it", received, sent)
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if info, err := caller.Info(ctx, 2); err != nil || info.Name != "secondary" {
		t.Errorf("Info(peer 2) = %+v, %v; want its own agent's answer", info, err)
	}
}

// multiBell is an in-process doorbell fabric for any number of peers.
type multiBell struct {
	ch []chan struct{}
	id int
}

func (b multiBell) Ring(peer int) error {
	select {
	case b.ch[peer] <- struct{}{}:
	default:
	}
	return nil
}

func (b multiBell) Wait(ctx context.Context) error {
	select {
	case <-b.ch[b.id]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestTTYOutputBeforeOpenReturns: an agent's shell may write, and even
// end, before the client has taken up the agent's answer (the agent
// starts the shell as it answers). That output reaches the client's
// writer, in order, and the session ends with the shell, instead of the
// bytes being dropped and the session waiting for an end it missed.
func TestTTYOutputBeforeOpenReturns(t *testing.T) {
	a, b := pair(t)
	a.HandleRequests(agent.SvcTTYOpen, func(r msg.Request) {
		sid := []byte{7, 0, 0, 0}
		a.Reply(r, agent.SvcTTYOpened, sid)
		a.Send(r.From.ID, agent.SvcTTYOutput, append(append([]byte{}, sid...), "first "...))
		a.Send(r.From.ID, agent.SvcTTYOutput, append(append([]byte{}, sid...), "second"...))
		a.Send(r.From.ID, agent.SvcTTYClosed, sid)
	})
	var out syncbuf.Buffer
	in, inW := io.Pipe()
	defer inW.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.NewTTYClient(b).Open(ctx, 0, in, &out); err != nil {
		t.Fatalf("Open = %v (output so far %q)", err, out.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("the session ended only with the deadline: its end was missed (output %q)", out.String())
	}
	if got, want := out.String(), "first second"; got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
}
