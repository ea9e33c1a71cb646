package msg_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
	"github.com/popvmm/popvmm/ipi/msg"
)

// Services of the multi-process test.
const (
	svcEcho  = 1 // the peer sends the payload back on svcReply
	svcReply = 2
	svcNews  = 3 // multicast; echo peers subscribe only when told
)

// TestMain lets the test binary act as a peer process: with
// POPVMM_MSG_PEER=SOCKET it joins the window at SOCKET and echoes.
func TestMain(m *testing.M) {
	if sock := os.Getenv("POPVMM_MSG_PEER"); sock != "" {
		var err error
		switch os.Getenv("POPVMM_MSG_ROLE") {
		case "stall":
			err = stallPeer(sock)
		case "garbage":
			err = garbagePeer(sock)
		default:
			err = echoPeer(sock, os.Getenv("POPVMM_MSG_SUBSCRIBE") == "1")
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// echoPeer is the child process: join, say "ready ID" on stdout, echo
// until the window's server goes away or stdin closes.
func echoPeer(sock string, subscribe bool) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := ipi.Dial(ctx, sock, 1)
	if err != nil {
		return err
	}
	defer c.Close()
	node, err := msg.Join(c.Mem, c.ID, fmt.Sprintf("echo%d", c.ID), ipi.Bell{C: c}, msg.Options{})
	if err != nil {
		return err
	}
	node.Register(svcEcho, func(from int, p []byte) {
		for errors.Is(node.Send(from, svcReply, p), msg.ErrRingFull) {
		}
	})
	node.Register(svcNews, func(from int, p []byte) {
		node.Send(from, svcReply, append([]byte("news:"), p...))
	})
	if subscribe {
		node.Subscribe(svcNews)
	}
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }() // parent gone: stop
	fmt.Printf("ready %d\n", c.ID)
	return node.Run(ctx)
}

// stallPeer checks in and never reads: its rings fill.
func stallPeer(sock string) error {
	c, err := ipi.Dial(context.Background(), sock, 1)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := msg.Join(c.Mem, c.ID, "stall", ipi.Bell{C: c}, msg.Options{}); err != nil {
		return err
	}
	fmt.Printf("ready %d\n", c.ID)
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// garbagePeer checks in, then plants in its own ring to peer 0 (the test
// process) a header that looks published but claims 16 MiB, and rings.
func garbagePeer(sock string) error {
	c, err := ipi.Dial(context.Background(), sock, 1)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := msg.Join(c.Mem, c.ID, "garbage", ipi.Bell{C: c}, msg.Options{}); err != nil {
		return err
	}
	tail := msg.Tail(c.Mem, c.ID, 0)
	msg.SetSlotHeader(c.Mem, c.ID, 0, tail, uint64(uint32(tail+1))|uint64(0xffffff)<<32)
	c.Ring(0, 0)
	fmt.Printf("ready %d\n", c.ID)
	io.Copy(io.Discard, os.Stdin)
	return nil
}

type peerProc struct {
	id  int
	cmd *exec.Cmd
}

func startPeer(t *testing.T, sock string, subscribe bool) *peerProc {
	return startRole(t, sock, "echo", subscribe)
}

func startRole(t *testing.T, sock, role string, subscribe bool) *peerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "POPVMM_MSG_PEER="+sock, "POPVMM_MSG_ROLE="+role, "POPVMM_MSG_SUBSCRIBE="+map[bool]string{true: "1"}[subscribe])
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		id, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(s, "ready ")))
		if err != nil {
			t.Fatalf("peer said %q", s)
		}
		return &peerProc{id: id, cmd: cmd}
	case <-time.After(20 * time.Second):
		t.Fatal("peer process not ready in 20s")
	}
	return nil
}

// TestMultiProcess: three peer processes and this one join through the
// ivshmem server; ordering across processes, multicast to subscribers
// only, and a killed peer announced and refused.
func TestMultiProcess(t *testing.T) {
	sock, _ := ipitest.Serve(t, 8<<20, 8, ipi.ServerConfig{Vectors: 1, FirstID: 0, MaxPeers: 8})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	me, err := ipi.Dial(ctx, sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer me.Close()
	node, err := msg.Join(me.Mem, me.ID, "parent", ipi.Bell{C: me}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	node.Register(svcReply, c.handle)
	rctx, stopRun := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { node.Run(rctx); close(ran) }()
	defer func() { stopRun(); <-ran }() // before me.Close unmaps the window

	p1 := startPeer(t, sock, true)
	p2 := startPeer(t, sock, false)
	p3 := startPeer(t, sock, true)

	// Ordering across processes: 500 messages of growing size to p2.
	const n = 500
	for i := range n {
		p := []byte(strings.Repeat(strconv.Itoa(i%10), i%300) + "#" + strconv.Itoa(i))
		for {
			err := node.Send(p2.id, svcEcho, p)
			if err == nil {
				break
			}
			if !errors.Is(err, msg.ErrRingFull) {
				t.Fatal(err)
			}
		}
	}
	got := c.wait(t, n)
	for i := range n {
		if !strings.HasSuffix(string(got[i]), "#"+strconv.Itoa(i)) || len(got[i]) != i%300+1+len(strconv.Itoa(i)) {
			t.Fatalf("reply %d = %q: order or content broken", i, got[i])
		}
	}

	// Multicast reaches p1 and p3 (subscribed), not p2.
	sent, err := node.Multicast(svcNews, []byte("hello"))
	if err != nil || sent != 2 {
		t.Fatalf("Multicast = %d, %v; want 2", sent, err)
	}
	got = c.wait(t, n+2)
	from := map[int]bool{}
	c.mu.Lock()
	for _, f := range c.from[n:] {
		from[f] = true
	}
	c.mu.Unlock()
	if !from[p1.id] || !from[p3.id] || from[p2.id] {
		t.Errorf("multicast replies from %v, want %d and %d only", from, p1.id, p3.id)
	}

	// Mitigation: over the burst, far fewer doorbells than messages.
	if s := node.Stats(); s.DoorbellsRung*2 > s.Sent {
		t.Errorf("%d doorbells for %d messages: mitigation not working", s.DoorbellsRung, s.Sent)
	}

	// A peer process that never reads: its ring fills and sends are
	// refused, without blocking.
	stall := startRole(t, sock, "stall", false)
	full := false
	for range 100000 {
		if err := node.Send(stall.id, svcEcho, make([]byte, 200)); errors.Is(err, msg.ErrRingFull) {
			full = true
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if !full || node.Stats().RingFull == 0 {
		t.Errorf("ring to a stalled peer never filled (stats %+v)", node.Stats())
	}

	// A peer process that writes garbage into its own section: counted as
	// a protocol error; the others are still served.
	startRole(t, sock, "garbage", false)
	for deadline := time.Now().Add(20 * time.Second); node.Stats().ProtocolErrors == 0; {
		if time.Now().After(deadline) {
			t.Fatal("garbage peer not detected")
		}
		time.Sleep(10 * time.Millisecond) // the receive loop runs on its own; counters are its only trace
	}
	if err := node.Send(p1.id, svcEcho, []byte("still served")); err != nil {
		t.Fatal(err)
	}
	if got := c.wait(t, n+3); string(got[n+2]) != "still served" {
		t.Errorf("after the garbage peer, reply %q", got[n+2])
	}

	// Kill p3: the server announces its departure; popvmm's node marks it
	// gone; sends to it are refused.
	p3.cmd.Process.Kill()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-me.Events():
			if e.ID == p3.id && !e.Joined {
				node.MarkGone(p3.id, node.Generation(p3.id), true) // p3 is dead: its generation stays
				if err := node.Send(p3.id, svcEcho, []byte("x")); !errors.Is(err, msg.ErrPeerOffline) {
					t.Errorf("send to killed peer = %v, want ErrPeerOffline", err)
				}
				s := node.Stats()
				t.Logf("parent stats: %+v", s)
				return
			}
		case <-deadline:
			t.Fatal("killed peer's departure not announced in 20s")
		}
	}
}
