package msg_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

// chanBells is an in-process doorbell fabric: one buffered channel per peer.
type chanBells struct {
	ch []chan struct{}
}

func newBells(n int) *chanBells {
	b := &chanBells{}
	for range n {
		b.ch = append(b.ch, make(chan struct{}, 1))
	}
	return b
}

type bell struct {
	all *chanBells
	id  int
}

func (b bell) Ring(peer int) error {
	select {
	case b.all.ch[peer] <- struct{}{}:
	default: // already pending
	}
	return nil
}

func (b bell) Wait(ctx context.Context) error {
	select {
	case <-b.all.ch[b.id]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cluster formats a window and joins peers 0..n-1 (not running yet).
func cluster(t *testing.T, size, peers, n int, opt msg.Options) ([]byte, []*msg.Node) {
	t.Helper()
	mem := make([]byte, size)
	if _, err := msg.Format(mem, peers); err != nil {
		t.Fatal(err)
	}
	bells := newBells(peers)
	var nodes []*msg.Node
	for i := range n {
		node, err := msg.Join(mem, i, fmt.Sprintf("node%d", i), bell{bells, i}, opt)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node)
	}
	return mem, nodes
}

func run(t *testing.T, n *msg.Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop")
		}
	})
}

// collector records deliveries and lets a test wait for a count.
type collector struct {
	mu   sync.Mutex
	msgs [][]byte
	from []int
	more chan struct{}
}

func newCollector() *collector { return &collector{more: make(chan struct{}, 1)} }

func (c *collector) handle(from int, p []byte) {
	c.mu.Lock()
	c.msgs = append(c.msgs, bytes.Clone(p))
	c.from = append(c.from, from)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *collector) wait(t *testing.T, n int) [][]byte {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.msgs)
		c.mu.Unlock()
		if got >= n {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.msgs
		}
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("got %d messages within 10s, want %d", got, n)
		}
	}
}

func TestOrderingAndChunking(t *testing.T) {
	_, nodes := cluster(t, 4<<20, 4, 2, msg.Options{})
	a, b := nodes[0], nodes[1]
	c := newCollector()
	b.Register(7, c.handle)
	run(t, b)

	var want [][]byte
	for i := range 300 {
		// Sizes cross slot boundaries: 0, 55, 56, 57, ... up to 4 KiB.
		p := bytes.Repeat([]byte{byte(i)}, (i*37)%4100)
		binary.LittleEndian.PutUint32(append(p, 0, 0, 0, 0)[len(p):], uint32(i))
		p = append(p, byte(i>>8), byte(i))
		want = append(want, p)
		for {
			err := a.Send(1, 7, p)
			if errors.Is(err, msg.ErrRingFull) {
				continue // the receiver is draining
			}
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	got := c.wait(t, len(want))
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d: %d bytes, want %d (order or content broken)", i, len(got[i]), len(want[i]))
		}
	}
	if s := b.Stats(); s.Received != uint64(len(want)) || s.ProtocolErrors != 0 {
		t.Errorf("receiver stats %+v", s)
	}
}

func TestMulticastOnlySubscribers(t *testing.T) {
	_, nodes := cluster(t, 4<<20, 4, 4, msg.Options{})
	cs := []*collector{nil, newCollector(), newCollector(), newCollector()}
	for i := 1; i < 4; i++ {
		nodes[i].Register(3, cs[i].handle)
		run(t, nodes[i])
	}
	nodes[1].Subscribe(3)
	nodes[3].Subscribe(3)
	n, err := nodes[0].Multicast(3, []byte("to the interested"))
	if err != nil || n != 2 {
		t.Fatalf("Multicast = %d, %v; want 2 receivers", n, err)
	}
	cs[1].wait(t, 1)
	cs[3].wait(t, 1)
	// Node 2 is not subscribed: a unicast after the multicast arrives first
	// in its ring, so if the multicast had reached it we would see two.
	nodes[0].Send(2, 3, []byte("direct"))
	if got := cs[2].wait(t, 1); len(got) != 1 || string(got[0]) != "direct" {
		t.Errorf("unsubscribed node got %q", got)
	}
	nodes[3].Unsubscribe(3)
	if n, _ := nodes[0].Multicast(3, []byte("again")); n != 1 {
		t.Errorf("after unsubscribe Multicast reached %d, want 1", n)
	}
}

func TestRingFullAndSendErrors(t *testing.T) {
	_, nodes := cluster(t, 1<<20, 4, 3, msg.Options{})
	a := nodes[0]
	// Nobody drains node 1: its ring fills.
	full := 0
	for range 10000 {
		if err := a.Send(1, 1, make([]byte, 100)); errors.Is(err, msg.ErrRingFull) {
			full++
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if full == 0 || a.Stats().RingFull != 1 {
		t.Fatalf("ring never filled (stats %+v)", a.Stats())
	}
	if err := a.Send(3, 1, nil); !errors.Is(err, msg.ErrPeerOffline) {
		t.Errorf("Send(never joined) = %v, want ErrPeerOffline", err)
	}
	if err := a.Send(0, 1, nil); !errors.Is(err, msg.ErrBadPeer) {
		t.Errorf("Send(self) = %v, want ErrBadPeer", err)
	}
	if err := a.Send(99, 1, nil); !errors.Is(err, msg.ErrBadPeer) {
		t.Errorf("Send(99) = %v, want ErrBadPeer", err)
	}
	if err := a.Send(2, 1, make([]byte, 1<<20)); !errors.Is(err, msg.ErrTooLarge) {
		t.Errorf("Send(1 MiB) = %v, want ErrTooLarge", err)
	}
}

// TestMitigation: with a busy receiver, doorbells per message fall towards
// zero; an idle receiver is rung.
func TestMitigation(t *testing.T) {
	_, nodes := cluster(t, 4<<20, 2, 2, msg.Options{})
	a, b := nodes[0], nodes[1]
	c := newCollector()
	b.Register(1, c.handle)
	run(t, b)

	// Idle receiver: one message, one doorbell (once b has armed).
	waitArmed(t, b)
	a.Send(1, 1, []byte("wake"))
	c.wait(t, 1)
	if s := a.Stats(); s.DoorbellsRung != 1 {
		t.Errorf("idle receiver: %d doorbells for 1 message", s.DoorbellsRung)
	}

	// A burst: the receiver drains with doorbells disarmed.
	const burst = 20000
	sent := 0
	for sent < burst {
		if err := a.Send(1, 1, []byte("burst message")); err == nil {
			sent++
		} else if !errors.Is(err, msg.ErrRingFull) {
			t.Fatal(err)
		}
	}
	c.wait(t, burst+1)
	s := a.Stats()
	ratio := float64(s.DoorbellsRung) / float64(s.Sent)
	t.Logf("burst of %d: %d doorbells, %d saved, %.4f doorbells/message; receiver woke %d times",
		burst, s.DoorbellsRung, s.DoorbellsSaved, ratio, b.Stats().Wakeups)
	if ratio > 0.25 {
		t.Errorf("%.3f doorbells per message under load, want well under 1", ratio)
	}
}

// waitArmed waits until b is idle with doorbells armed.
func waitArmed(t *testing.T, b *msg.Node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !b.Armed() {
		if time.Now().After(deadline) {
			t.Fatal("receiver never armed its doorbells")
		}
		time.Sleep(time.Millisecond) // polling a flag another goroutine sets, bounded by the deadline
	}
}

// TestGarbageSender: a peer that scribbles over its own section (rings,
// tails) cannot crash a receiver; the receiver counts a protocol error and
// keeps serving other senders.
func TestGarbageSender(t *testing.T) {
	mem, nodes := cluster(t, 4<<20, 4, 3, msg.Options{})
	evil, good, victim := nodes[0], nodes[2], nodes[1]
	c := newCollector()
	victim.Register(1, c.handle)
	run(t, victim)

	evil.Send(1, 1, []byte("a sane message first"))
	c.wait(t, 1)
	// Scribble over evil's whole section: ring headers, slots, tails.
	sec := msg.SectionOffset(mem, evil.ID())
	size := msg.SectionSize(mem)
	junk := make([]byte, size-4096)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	msg.Scribble(mem, sec+4096, junk)
	good.Send(1, 1, []byte("from the good peer"))
	got := c.wait(t, 2)
	if string(got[1]) != "from the good peer" {
		t.Errorf("victim got %q, want the good peer's message", got[1])
	}
	// Garbage that looks published (right seq) but claims 16 MiB: a
	// protocol error, counted; the good peer is still heard.
	head := msg.Head(mem, victim.ID(), evil.ID())
	msg.SetSlotHeader(mem, evil.ID(), victim.ID(), head, uint64(uint32(head+1))|uint64(0xffffff)<<32)
	deadline := time.Now().Add(10 * time.Second)
	for n := 3; victim.Stats().ProtocolErrors == 0; n++ {
		if time.Now().After(deadline) {
			t.Fatal("garbage not detected")
		}
		good.Send(1, 1, []byte("nudge"))
		c.wait(t, n)
	}
}

func TestPeerEvents(t *testing.T) {
	_, nodes := cluster(t, 4<<20, 4, 2, msg.Options{Heartbeat: 10 * time.Millisecond, PeerTimeout: 200 * time.Millisecond})
	a, b := nodes[0], nodes[1]
	run(t, a)
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateOnline, Generation: 1})
	// b never runs, so its heartbeat stands still: reported offline.
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateOffline, Generation: 1})
	// b comes alive: online again. Then popvmm reports it crashed.
	run(t, b)
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateOnline, Generation: 1})
	if !a.MarkGone(1, 1, true) {
		t.Error("MarkGone(1, generation 1) = false for the incarnation in the table")
	}
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateCrashed, Generation: 1})
	if err := a.Send(1, 1, nil); !errors.Is(err, msg.ErrPeerOffline) {
		t.Errorf("Send to a crashed peer = %v, want ErrPeerOffline", err)
	}
}

// TestDepartureTouchesOnlyItsIncarnation: peer 1 leaves and its id is
// checked in again at once. The old incarnation's departure, however late
// it is recorded (popvmm's MarkGone, the old node's own Run returning),
// leaves the new incarnation online.
func TestDepartureTouchesOnlyItsIncarnation(t *testing.T) {
	mem, nodes := cluster(t, 4<<20, 4, 2, msg.Options{})
	a, old := nodes[0], nodes[1]
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- old.Run(ctx) }()
	oldGen := a.Generation(1)

	if _, err := msg.Join(mem, 1, "node1-next", newBells(4).bell(1), msg.Options{}); err != nil {
		t.Fatal(err)
	}
	newGen := a.Generation(1)
	if newGen == oldGen {
		t.Fatalf("generation %d after a check-in, want a new one", newGen)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if st := a.PeerState(1); st != msg.StateOnline {
		t.Errorf("after the old incarnation's Run returned, peer 1 is %v, want online", st)
	}
	if a.MarkGone(1, oldGen, false) {
		t.Errorf("MarkGone(1, old generation %d) = true", oldGen)
	}
	if st := a.PeerState(1); st != msg.StateOnline {
		t.Errorf("after the old incarnation's MarkGone, peer 1 is %v, want online", st)
	}
	if err := a.Send(1, 1, []byte("to the new incarnation")); err != nil {
		t.Errorf("Send to the new incarnation = %v", err)
	}
	if !a.MarkGone(1, newGen, true) || a.PeerState(1) != msg.StateCrashed {
		t.Errorf("MarkGone(1, generation %d) did not mark the incarnation in the table: %v", newGen, a.PeerState(1))
	}
}

// TestPeerEventsAcrossRejoin: a peer that checks in again between two
// scans is reported gone (its old generation) and online (its new one),
// not left online as if nothing happened.
func TestPeerEventsAcrossRejoin(t *testing.T) {
	opt := msg.Options{Heartbeat: 10 * time.Millisecond, PeerTimeout: time.Minute}
	mem, nodes := cluster(t, 4<<20, 4, 2, opt)
	a := nodes[0]
	run(t, a)
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateOnline, Generation: 1})
	if _, err := msg.Join(mem, 1, "node1-next", newBells(4).bell(1), opt); err != nil {
		t.Fatal(err)
	}
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1", State: msg.StateOffline, Generation: 1})
	waitPeerEvent(t, a, msg.PeerEvent{Peer: 1, Name: "node1-next", State: msg.StateOnline, Generation: 2})
}

func (b *chanBells) bell(id int) bell { return bell{b, id} }

func waitPeerEvent(t *testing.T, n *msg.Node, want msg.PeerEvent) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-n.Events():
			if e == want {
				return
			}
		case <-deadline:
			t.Fatalf("no event %+v within 10s", want)
		}
	}
}

func TestFormatAndJoinErrors(t *testing.T) {
	if _, err := msg.Format(make([]byte, 1<<20), 1); err == nil {
		t.Error("Format with 1 peer succeeded")
	}
	if _, err := msg.Format(make([]byte, 64<<10), 56); err == nil {
		t.Error("Format of a too-small window succeeded")
	}
	mem := make([]byte, 1<<20)
	if _, err := msg.Join(mem, 0, "x", bell{newBells(1), 0}, msg.Options{}); !errors.Is(err, msg.ErrFormat) {
		t.Errorf("Join(unformatted) = %v, want ErrFormat", err)
	}
	slots, err := msg.Format(mem, 4)
	if err != nil || slots < 16 {
		t.Fatalf("Format = %d, %v", slots, err)
	}
	if _, err := msg.Join(mem, 4, "x", bell{newBells(5), 4}, msg.Options{}); !errors.Is(err, msg.ErrBadPeer) {
		t.Errorf("Join(id 4 of 4) = %v, want ErrBadPeer", err)
	}
	mem[12] = 200 // maxPeers garbage
	if _, err := msg.Join(mem, 0, "x", bell{newBells(1), 0}, msg.Options{}); !errors.Is(err, msg.ErrFormat) {
		t.Errorf("Join(garbage header) = %v, want ErrFormat", err)
	}
}

func FuzzReceiveGarbage(f *testing.F) {
	f.Add([]byte{1, 2, 3}, uint16(0), uint64(5))
	f.Add(bytes.Repeat([]byte{0xff}, 200), uint16(64), uint64(1<<63))
	f.Fuzz(func(t *testing.T, junk []byte, at uint16, tail uint64) {
		mem := make([]byte, 1<<20)
		if _, err := msg.Format(mem, 2); err != nil {
			t.Fatal(err)
		}
		bells := newBells(2)
		sender, _ := msg.Join(mem, 0, "s", bell{bells, 0}, msg.Options{})
		recv, _ := msg.Join(mem, 1, "r", bell{bells, 1}, msg.Options{Poll: true})
		sender.Send(1, 1, []byte("hello"))
		// The sender's section is the sender's to scribble on.
		sec := msg.SectionOffset(mem, 0) + 4096
		msg.Scribble(mem, sec+int(at)&^7, junk)
		msg.SetTail(mem, 0, 1, tail)
		recv.Register(1, func(int, []byte) {})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := recv.Run(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRejoinKeepsNewMessages: a sender that checks in again and sends at
// once is heard, however late the receiver notices the new generation; what
// it sent before is not replayed to the receiver's next incarnation.
func TestRejoinKeepsNewMessages(t *testing.T) {
	mem, nodes := cluster(t, 4<<20, 4, 2, msg.Options{})
	a, b := nodes[0], nodes[1]
	c := newCollector()
	b.Register(1, c.handle)
	a.Send(1, 1, []byte("old incarnation"))
	b.Poll(64)
	if got := c.wait(t, 1); string(got[0]) != "old incarnation" {
		t.Fatalf("got %q", got)
	}
	// a checks in again and sends before b polls.
	bells := newBells(4)
	a2, err := msg.Join(mem, 0, "node0", bell{bells, 0}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = a
	a2.Send(1, 1, []byte("new incarnation"))
	b.Poll(64)
	if got := c.wait(t, 2); string(got[1]) != "new incarnation" {
		t.Errorf("after rejoin got %q", got[1:])
	}
	// b checks in again: nothing pending is replayed to it.
	a2.Send(1, 1, []byte("to the old b"))
	b2, _ := msg.Join(mem, 1, "node1", bell{bells, 1}, msg.Options{})
	c2 := newCollector()
	b2.Register(1, c2.handle)
	if n := b2.Poll(64); n != 0 {
		t.Errorf("new incarnation of b received %d old messages", n)
	}
}

// brokenBell cannot ring anyone.
type brokenBell struct{ bell }

func (brokenBell) Ring(int) error { return errors.New("no eventfd for that peer yet") }

// TestDoorbellFailureDelivers: a send whose doorbell fails is still a
// delivered message: no error, a counter, and the receiver finds it at its
// next heartbeat.
func TestDoorbellFailureDelivers(t *testing.T) {
	mem := make([]byte, 4<<20)
	msg.Format(mem, 2)
	bells := newBells(2)
	a, _ := msg.Join(mem, 0, "a", brokenBell{bell{bells, 0}}, msg.Options{})
	b, _ := msg.Join(mem, 1, "b", bell{bells, 1}, msg.Options{Heartbeat: 20 * time.Millisecond})
	c := newCollector()
	b.Register(1, c.handle)
	run(t, b)
	waitArmed(t, b)
	if err := a.Send(1, 1, []byte("late doorbell")); err != nil {
		t.Fatalf("Send with a failing doorbell = %v, want nil (the message is published)", err)
	}
	if got := c.wait(t, 1); string(got[0]) != "late doorbell" {
		t.Errorf("got %q", got[0])
	}
	if s := a.Stats(); s.DoorbellErrors != 1 {
		t.Errorf("DoorbellErrors = %d, want 1", s.DoorbellErrors)
	}
}

// TestReservedNames: ids 0 and 1 own the names "primary" and "secondary";
// peer 2 checks in calling itself "primary". PeerByName resolves the name
// to id 0 only (not found while 0 is offline, never 2), Peers flags peer 2
// an impostor, and unreserved names resolve as before.
func TestReservedNames(t *testing.T) {
	mem := make([]byte, 1<<20)
	if _, err := msg.Format(mem, 4); err != nil {
		t.Fatal(err)
	}
	bells := newBells(4)
	obs, err := msg.Join(mem, 3, "popvmm", bells.bell(3), msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	obs.Reserve([]string{"primary", "secondary"})
	if _, err := msg.Join(mem, 2, "primary", bells.bell(2), msg.Options{}); err != nil {
		t.Fatal(err)
	}
	if id, ok := obs.PeerByName("primary"); ok {
		t.Errorf(`PeerByName("primary") = %d, true with kernel 0 offline; want not found`, id)
	}
	for _, p := range obs.Peers() {
		if want := p.ID == 2; p.Impostor != want {
			t.Errorf("peer %d (%q): Impostor = %v, want %v", p.ID, p.Name, p.Impostor, want)
		}
	}
	if id, ok := obs.ReservedFor("secondary"); !ok || id != 1 {
		t.Errorf(`ReservedFor("secondary") = %d, %v; want 1, true`, id, ok)
	}
	if _, err := msg.Join(mem, 0, "primary", bells.bell(0), msg.Options{}); err != nil {
		t.Fatal(err)
	}
	if id, ok := obs.PeerByName("primary"); !ok || id != 0 {
		t.Errorf(`PeerByName("primary") = %d, %v with kernel 0 online; want 0, true`, id, ok)
	}
	if _, err := msg.Join(mem, 1, "host-tool", bells.bell(1), msg.Options{}); err != nil {
		t.Fatal(err)
	}
	if id, ok := obs.PeerByName("host-tool"); !ok || id != 1 {
		t.Errorf(`PeerByName("host-tool") = %d, %v; want 1, true`, id, ok)
	}
}
