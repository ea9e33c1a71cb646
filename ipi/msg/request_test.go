package msg_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

const (
	svcAsk    uint8 = 20
	svcAnswer uint8 = 21
	svcOther  uint8 = 22 // another reply service
)

// reply builds a reply message to id by hand, as any peer could.
func reply(id uint64, body string) []byte {
	p := binary.LittleEndian.AppendUint64(nil, id)
	return append(p, body...)
}

// TestRepliesOnlyFromIncarnationAsked: a reply counts only when it comes
// from the peer asked, in the incarnation asked, under the request's id. A
// third peer answering with the right id, and the asked peer's next
// incarnation answering its predecessor's request, are both ignored; ids
// of a new incarnation of the asker never repeat the old one's.
func TestRepliesOnlyFromIncarnationAsked(t *testing.T) {
	opt := msg.Options{Heartbeat: 10 * time.Millisecond, PeerTimeout: time.Minute}
	mem := make([]byte, 4<<20)
	if _, err := msg.Format(mem, 3); err != nil {
		t.Fatal(err)
	}
	bells := newBells(3)
	join := func(id int, name string) *msg.Node {
		t.Helper()
		n, err := msg.Join(mem, id, name, bells.bell(id), opt)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	host, asked, rogue := join(0, "host"), join(1, "asked"), join(2, "rogue")
	host.HandleReplies(svcAnswer)
	host.HandleReplies(svcOther)
	reqs := make(chan msg.Request, 4)
	asked.HandleRequests(svcAsk, func(r msg.Request) { reqs <- r })
	for _, n := range []*msg.Node{host, asked, rogue} {
		run(t, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// received waits until host has taken n messages in all.
	received := func(n uint64) {
		t.Helper()
		for host.Stats().Received < n {
			if ctx.Err() != nil {
				t.Fatalf("host received %d messages, want %d", host.Stats().Received, n)
			}
			time.Sleep(time.Millisecond)
		}
	}

	c, err := host.Ask(1, svcAsk, svcAnswer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var r msg.Request
	select {
	case r = <-reqs:
	case <-ctx.Done():
		t.Fatal("the request did not arrive")
	}
	if r.ID != msg.CallID(c) || r.From != (msg.Sender{ID: 0, Gen: host.Generation(0)}) {
		t.Fatalf("request arrived as %+v, want id %#x from %+v", r, msg.CallID(c), msg.Sender{ID: 0, Gen: host.Generation(0)})
	}
	// Peer 2 answers first, with the request's very id: not taken, so the
	// real reply that follows is.
	base := host.Stats().Received
	if err := rogue.Send(0, svcAnswer, reply(r.ID, "forged by peer 2")); err != nil {
		t.Fatal(err)
	}
	received(base + 1)
	// The asked peer itself answers under the id, but as another reply
	// service (a pong for an info request): not taken either.
	if err := asked.Reply(r, svcOther, []byte("another service")); err != nil {
		t.Fatal(err)
	}
	received(base + 2)
	if err := asked.Reply(r, svcAnswer, []byte("real")); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Wait(ctx); err != nil || string(got) != "real" {
		t.Errorf("Wait = %q, %v; want the asked peer's %q", got, err, "real")
	}

	// The asked peer checks in anew; its new incarnation answers the
	// old one's request: not taken, and the request ends as gone.
	c2, err := host.Ask(1, svcAsk, svcAnswer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := <-reqs
	next := join(1, "asked-next")
	run(t, next)
	base = host.Stats().Received
	if err := next.Send(0, svcAnswer, reply(r2.ID, "from the next incarnation")); err != nil {
		t.Fatal(err)
	}
	received(base + 1)
	if got, err := c2.Wait(ctx); !errors.Is(err, msg.ErrPeerGone) {
		t.Errorf("Wait for the old incarnation's answer = %q, %v; want ErrPeerGone", got, err)
	}

	// The asker checks in anew: a reply to its old incarnation is not
	// sent, and its new ids differ from every old one.
	old := msg.CallID(c2)
	hostNext := join(0, "host-next")
	if err := next.Reply(r2, svcAnswer, []byte("late")); !errors.Is(err, msg.ErrPeerGone) {
		t.Errorf("Reply to the asker's old incarnation = %v, want ErrPeerGone", err)
	}
	c3, err := hostNext.Ask(1, svcAsk, svcAnswer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if id := msg.CallID(c3); id == msg.CallID(c) || id == old {
		t.Errorf("the asker's next incarnation asks under id %#x, which its predecessor used", id)
	}
}

// TestAskOffline: asking a peer that is not online fails at once.
func TestAskOffline(t *testing.T) {
	_, nodes := cluster(t, 4<<20, 3, 1, msg.Options{})
	if _, err := nodes[0].Ask(2, svcAsk, svcAnswer, nil); !errors.Is(err, msg.ErrPeerOffline) {
		t.Errorf("Ask(offline peer) = %v, want ErrPeerOffline", err)
	}
}
