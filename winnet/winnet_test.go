package winnet_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/winnet"
)

func window(t testing.TB, size uint64, peers int) []byte {
	t.Helper()
	mem := make([]byte, size)
	if _, err := winnet.Format(mem, peers); err != nil {
		t.Fatalf("Format(%d bytes, %d peers): %v", size, peers, err)
	}
	return mem
}

func ports(t testing.TB, mem []byte, n int) []*winnet.Port {
	t.Helper()
	var ps []*winnet.Port
	for i := range n {
		p, err := winnet.NewPort(mem, i)
		if err != nil {
			t.Fatalf("NewPort(%d): %v", i, err)
		}
		p.Up()
		ps = append(ps, p)
	}
	return ps
}

func frame(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

func TestGeometry(t *testing.T) {
	for _, tc := range []struct {
		size       uint64
		peers      int
		data       uint64
		mtu        int
		wantErrTxt bool
	}{
		{64 << 20, 2, 16<<20 - 2*4096, winnet.MaxMTU, false},
		{256 << 20, 2, winnet.MaxDataSize, winnet.MaxMTU, false},
		{16 << 20, 2, 4<<20 - 2*4096, winnet.MaxMTU, false},
		{64 << 20, 8, 1<<20 - 2*4096, winnet.MaxMTU, false},
		{1 << 20, 4, 64<<10 - 2*4096, (64<<10-2*4096)/4 - 64, false},
		{1 << 20, 8, 0, 0, true},
		{4096, 2, 0, 0, true},
		{64 << 20, 1, 0, 0, true},
		{64 << 20, winnet.MaxPeers + 1, 0, 0, true},
	} {
		g, err := winnet.For(tc.size, tc.peers)
		if tc.wantErrTxt {
			if err == nil {
				t.Errorf("For(%d, %d) = %+v, want an error", tc.size, tc.peers, g)
			}
			continue
		}
		if err != nil {
			t.Errorf("For(%d, %d): %v", tc.size, tc.peers, err)
			continue
		}
		if g.DataSize != tc.data || g.MTU != tc.mtu {
			t.Errorf("For(%d, %d) = data %d mtu %d, want %d, %d", tc.size, tc.peers, g.DataSize, g.MTU, tc.data, tc.mtu)
		}
		if g.Size > tc.size || g.SectionSize%winnet.PageSize != 0 || g.RingSize%winnet.PageSize != 0 {
			t.Errorf("For(%d, %d) = %+v: over the window or not page-aligned", tc.size, tc.peers, g)
		}
		if uint64(4*g.MaxFrame()) > g.DataSize {
			t.Errorf("For(%d, %d): a ring holds fewer than 4 frames of %d bytes", tc.size, tc.peers, g.MaxFrame())
		}
		if end := g.Data(tc.peers-1, tc.peers-1) + g.DataSize; end != g.Size {
			t.Errorf("For(%d, %d): last data area ends at %d, size %d", tc.size, tc.peers, end, g.Size)
		}
	}
}

func TestOpenChecksHeader(t *testing.T) {
	mem := window(t, 1<<20, 3)
	if _, err := winnet.Open(mem); err != nil {
		t.Fatalf("Open(formatted): %v", err)
	}
	for _, off := range []int{0, 8, 12, 16, 24, 32, 40, 44} {
		bad := bytes.Clone(mem)
		bad[off] ^= 0x10
		if _, err := winnet.Open(bad); !errors.Is(err, winnet.ErrFormat) {
			t.Errorf("Open with header byte %d changed = %v, want ErrFormat", off, err)
		}
	}
	if _, err := winnet.Open(mem[:2048]); !errors.Is(err, winnet.ErrFormat) {
		t.Errorf("Open(2 KiB) = %v, want ErrFormat", err)
	}
	if _, err := winnet.Open(mem[:1<<19]); !errors.Is(err, winnet.ErrFormat) {
		t.Errorf("Open(half the window) = %v, want ErrFormat (geometry of another size)", err)
	}
}

func TestSlots(t *testing.T) {
	const size = 64 << 20
	g, _ := winnet.For(size, 4)
	for peer := range 4 {
		slots, err := winnet.Slots(size, 4, peer, true)
		if err != nil {
			t.Fatalf("Slots(peer %d): %v", peer, err)
		}
		var at uint64
		writable := 0
		for _, s := range slots {
			if s.Offset != at || s.Offset%winnet.PageSize != 0 || s.Size%winnet.PageSize != 0 || s.Size == 0 {
				t.Fatalf("Slots(peer %d) = %+v: not page-aligned and contiguous", peer, slots)
			}
			if !s.ReadOnly {
				writable++
				if s.Offset != g.Section(peer) || s.Size != g.SectionSize {
					t.Errorf("Slots(peer %d): writable %+v, want its section at %#x", peer, s, g.Section(peer))
				}
			}
			at += s.Size
		}
		if at != size || writable != 1 {
			t.Errorf("Slots(peer %d) = %+v: cover %d bytes with %d writable", peer, slots, at, writable)
		}
	}
	if s, _ := winnet.Slots(size, 4, 1, false); len(s) != 1 || s[0].ReadOnly {
		t.Errorf("Slots(unprotected) = %+v, want one writable slot", s)
	}
	if _, err := winnet.Slots(size, 4, 4, true); err == nil {
		t.Error("Slots(peer 4 of 4) succeeded")
	}
}

func TestSendReceive(t *testing.T) {
	mem := window(t, 1<<20, 3)
	ps := ports(t, mem, 3)
	g := ps[0].Geometry()
	var rung []int
	ps[0].Ring = func(d int) { rung = append(rung, d) }
	sizes := []int{1, 60, 1500, g.MaxFrame(), 64, 9000}
	for i, n := range sizes {
		if _, err := ps[0].Send(2, frame(n, byte(i))); err != nil {
			t.Fatalf("Send(%d bytes): %v", n, err)
		}
	}
	var got [][]byte
	if n := ps[2].Receive(0, 100, func(b []byte) { got = append(got, b) }); n != len(sizes) {
		t.Fatalf("Receive = %d, want %d", n, len(sizes))
	}
	for i, n := range sizes {
		if !bytes.Equal(got[i], frame(n, byte(i))) {
			t.Errorf("frame %d (%d bytes) arrived as %d different bytes", i, n, len(got[i]))
		}
	}
	if n := ps[1].Receive(0, 100, func([]byte) { t.Error("peer 1 got peer 2's frame") }); n != 0 {
		t.Errorf("peer 1 Receive = %d", n)
	}
	if len(rung) != 0 {
		t.Errorf("doorbells %v for a receiver that never armed", rung)
	}
	if _, err := ps[0].Send(0, frame(10, 0)); !errors.Is(err, winnet.ErrPeer) {
		t.Errorf("Send to self = %v, want ErrPeer", err)
	}
	if _, err := ps[0].Send(1, frame(g.MaxFrame()+1, 0)); !errors.Is(err, winnet.ErrFrame) {
		t.Errorf("Send(MaxFrame+1) = %v, want ErrFrame", err)
	}
	st := winnet.ReadPeer(mem, g, 0)
	total := uint64(0)
	for _, n := range sizes {
		total += uint64(n)
	}
	if !st.Up || st.Generation != 1 || len(st.Peers) != 1 || st.Peers[0] != (winnet.PeerCounters{Peer: 2, TxPackets: 6, TxBytes: total}) {
		t.Errorf("ReadPeer(0) = %+v", st)
	}
	if st := winnet.ReadPeer(mem, g, 2); len(st.Peers) != 1 || st.Peers[0].RxPackets != 6 || st.Peers[0].RxBytes != total {
		t.Errorf("ReadPeer(2) = %+v", st)
	}
}

// TestRingWrapsAndFills sends random-sized frames while receiving at a
// random pace: every frame arrives in order and intact, full is reported
// only when the ring really holds no room, and nothing is lost.
func TestRingWrapsAndFills(t *testing.T) {
	mem := window(t, 1<<20, 2)
	ps := ports(t, mem, 2)
	g := ps[0].Geometry()
	rng := rand.New(rand.NewPCG(1, 2))
	var sent, got [][]byte
	fulls := 0
	for i := range 20000 {
		n := 1 + rng.IntN(g.MaxFrame())
		if rng.IntN(4) > 0 {
			n = 1 + rng.IntN(200)
		}
		f := frame(n, byte(i))
		_, err := ps[0].Send(1, f)
		switch {
		case err == nil:
			sent = append(sent, f)
		case errors.Is(err, winnet.ErrFull):
			fulls++
		default:
			t.Fatalf("Send: %v", err)
		}
		if rng.IntN(3) == 0 {
			ps[1].Receive(0, rng.IntN(8), func(b []byte) { got = append(got, b) })
		}
	}
	for ps[1].Receive(0, 64, func(b []byte) { got = append(got, b) }) > 0 {
	}
	if len(got) != len(sent) {
		t.Fatalf("received %d frames, sent %d", len(got), len(sent))
	}
	for i := range got {
		if !bytes.Equal(got[i], sent[i]) {
			t.Fatalf("frame %d: %d bytes arrived, %d sent, or different", i, len(got[i]), len(sent[i]))
		}
	}
	if fulls == 0 {
		t.Error("the ring was never full: the test does not exercise it")
	}
	c := winnet.ReadPeer(mem, g, 0).Peers[0]
	if c.TxPackets != uint64(len(sent)) || c.TxDrops != uint64(fulls) {
		t.Errorf("counters %+v, want %d sent, %d dropped", c, len(sent), fulls)
	}
	// An empty ring takes the largest frame whatever the position.
	if _, err := ps[0].Send(1, frame(g.MaxFrame(), 0)); err != nil {
		t.Errorf("Send(MaxFrame) to an empty ring: %v", err)
	}
}

func TestDownPeerDropsNotBlocks(t *testing.T) {
	mem := window(t, 1<<20, 3)
	ps := ports(t, mem, 3)
	ps[1].Down()
	if _, err := ps[0].Send(1, frame(100, 0)); !errors.Is(err, winnet.ErrPeerDown) {
		t.Errorf("Send to a down peer = %v, want ErrPeerDown", err)
	}
	// Peer 2 never reads: its ring fills, and traffic to peer 1 goes on.
	ps[1].Up()
	full := false
	for range 2 * winnet.RingSlots {
		if _, err := ps[0].Send(2, frame(100, 0)); errors.Is(err, winnet.ErrFull) {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("peer 2's ring never filled")
	}
	if _, err := ps[0].Send(1, frame(100, 1)); err != nil {
		t.Errorf("Send to peer 1 with peer 2's ring full: %v", err)
	}
	g := ps[0].Geometry()
	winnet.MarkDown(mem, g, 2)
	if st := winnet.ReadPeer(mem, g, 2); st.Up {
		t.Error("MarkDown left peer 2 up")
	}
}

// TestRebootResumes: a sender that comes up again is taken up at its
// ring's base (what its previous incarnation left is dropped, what the new
// one sends arrives); a receiver that comes up again starts at the tail.
func TestRebootResumes(t *testing.T) {
	mem := window(t, 1<<20, 2)
	ps := ports(t, mem, 2)
	for i := range 5 {
		ps[0].Send(1, frame(100, byte(i)))
	}
	// Sender reboots: a new Port over the same section.
	again, _ := winnet.NewPort(mem, 0)
	again.Up()
	if _, err := again.Send(1, frame(50, 9)); err != nil {
		t.Fatalf("Send after the sender's reboot: %v", err)
	}
	var got [][]byte
	ps[1].Receive(0, 64, func(b []byte) { got = append(got, b) })
	if len(got) != 1 || !bytes.Equal(got[0], frame(50, 9)) {
		t.Errorf("after the sender's reboot received %d frames, want only the new incarnation's", len(got))
	}
	// Receiver reboots with frames pending: they are dropped, new ones arrive.
	again.Send(1, frame(70, 1))
	rx, _ := winnet.NewPort(mem, 1)
	rx.Up()
	again.Send(1, frame(80, 2))
	got = nil
	rx.Receive(0, 64, func(b []byte) { got = append(got, b) })
	if len(got) != 1 || len(got[0]) != 80 {
		t.Errorf("after the receiver's reboot received %d frames, want the one sent since", len(got))
	}
}

// TestGarbageResyncs: a sender scribbling over its ring indexes and
// descriptors costs the receiver drops, never a panic or a wedge.
func TestGarbageResyncs(t *testing.T) {
	mem := window(t, 1<<20, 2)
	ps := ports(t, mem, 2)
	g := ps[0].Geometry()
	ring := g.Ring(0, 1)
	// A tail far ahead of the head.
	for i := range 8 {
		mem[ring+uint64(i)] = 0xff
	}
	if n := ps[1].Receive(0, 64, func([]byte) { t.Error("delivered a frame from a garbage tail") }); n != 0 {
		t.Errorf("Receive with a garbage tail consumed %d", n)
	}
	// Descriptors pointing outside the data area, or too long.
	mem[ring] = 0 // tail 0xff..ff00
	for i := range 16 {
		mem[ring+64+uint64(8*i)+7] = byte(i + 1)
	}
	ps[1].Receive(0, 1024, func(b []byte) {
		if len(b) > g.MaxFrame() {
			t.Errorf("delivered a %d-byte frame", len(b))
		}
	})
	if st := winnet.ReadPeer(mem, g, 1); len(st.Peers) != 1 || st.Peers[0].RxDrops == 0 {
		t.Errorf("ReadPeer(1) = %+v, want drops counted", st)
	}
	ps[0].Up() // the sender checks in again: traffic resumes
	ps[1].Receive(0, 1024, func([]byte) {})
	if _, err := ps[0].Send(1, frame(99, 3)); err != nil {
		t.Fatalf("Send after the garbage: %v", err)
	}
	var got [][]byte
	ps[1].Receive(0, 1024, func(b []byte) { got = append(got, b) })
	if len(got) != 1 || !bytes.Equal(got[0], frame(99, 3)) {
		t.Errorf("after the garbage received %d frames, want the one sent", len(got))
	}
}

// TestDoorbellMitigation: a sleeping receiver gets one doorbell per sender
// per sleep, a polling one none, and Arm refuses to sleep on a pending frame.
func TestDoorbellMitigation(t *testing.T) {
	mem := window(t, 1<<20, 3)
	ps := ports(t, mem, 3)
	rung := map[string]int{}
	for i, p := range ps {
		p.Ring = func(d int) { rung[fmt.Sprintf("%d->%d", i, d)]++ }
	}
	if !ps[2].Arm() {
		t.Fatal("Arm with nothing pending refused to sleep")
	}
	for range 10 {
		ps[0].Send(2, frame(64, 0))
		ps[1].Send(2, frame(64, 0))
	}
	if rung["0->2"] != 1 || rung["1->2"] != 1 {
		t.Errorf("doorbells %v, want one from each sender", rung)
	}
	ps[2].Disarm()
	ps[0].Send(2, frame(64, 0))
	if rung["0->2"] != 1 {
		t.Errorf("doorbells %v: rang a polling receiver", rung)
	}
	if ps[2].Arm() {
		t.Error("Arm with frames pending agreed to sleep")
	}
	for _, s := range []int{0, 1} {
		for ps[2].Receive(s, 64, func([]byte) {}) > 0 {
		}
	}
	if !ps[2].Arm() {
		t.Fatal("Arm after draining refused to sleep")
	}
	ps[0].Send(2, frame(64, 0))
	if rung["0->2"] != 2 {
		t.Errorf("doorbells %v: the second sleep was not rung", rung)
	}
}

// TestConcurrent runs a sender and a sleeping receiver on two goroutines
// with a channel as the doorbell: every frame arrives, none is stranded.
func TestConcurrent(t *testing.T) {
	mem := window(t, 1<<20, 2)
	tx, _ := winnet.NewPort(mem, 0)
	rx, _ := winnet.NewPort(mem, 1)
	rx.Up()
	tx.Up()
	bell := make(chan struct{}, 1)
	tx.Ring = func(int) {
		select {
		case bell <- struct{}{}:
		default:
		}
	}
	const frames = 20000
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < frames; {
			if _, err := tx.Send(1, frame(1+i%3000, byte(i))); err == nil {
				i++
			}
		}
	})
	next := 0
	for next < frames {
		if rx.Receive(0, 64, func(b []byte) {
			if !bytes.Equal(b, frame(1+next%3000, byte(next))) {
				t.Fatalf("frame %d corrupt", next)
			}
			next++
		}) > 0 {
			continue
		}
		if rx.Arm() {
			<-bell
			rx.Disarm()
		}
	}
	wg.Wait()
}
