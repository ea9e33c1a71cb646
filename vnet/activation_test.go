package vnet_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
	"github.com/popvmm/popvmm/vnet"
)

// rawTap makes a tap (MTU 9000, up, on no bridge, with no address and
// no IPv6: nothing of the host's own reaches it) in a fresh network
// namespace and returns its file with a function that sends a raw frame
// out of the tap, so that it arrives on the tap's file: the device's
// receive side.
func rawTap(t *testing.T, name string) (*os.File, func(frame []byte)) {
	t.Helper()
	inNetns(t)
	for _, k := range []string{"all", "default"} {
		os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644)
	}
	tap, err := vnet.CreateTap(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMTU(l, 9000); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6}
	copy(sa.Addr[:], guestMAC)
	return tap, func(frame []byte) {
		t.Helper()
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatalf("inject a %d-byte frame: %v", len(frame), err)
		}
	}
}

// testFrame is an n-byte frame to the guest, of a local experimental
// ethertype, with a recognisable payload.
func testFrame(n int) []byte {
	f := make([]byte, n)
	copy(f, guestMAC)
	copy(f[6:], []byte{0x02, 0, 0, 0, 0, 1})
	f[12], f[13] = 0x88, 0xb5
	for i := 14; i < n; i++ {
		f[i] = byte(i)
	}
	return f
}

// rxDriver is a guest driver bringing the device up, again and again,
// with the receive queue size, buffers and features of its choice.
type rxDriver struct {
	t  *testing.T
	n  *vnet.Net
	d  *virtiotest.Driver
	rx *virtiotest.DriverQueue
}

func newRxDriver(t *testing.T, tap *os.File) *rxDriver {
	t.Helper()
	ram, mem := virtiotest.NewMemory(t)
	n, err := vnet.NewNet(vnet.NetConfig{MAC: guestMAC, Tap: tap})
	if err != nil {
		t.Fatal(err)
	}
	p, err := virtio.NewPCI(n, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: virtiotest.NewRouter(3)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &rxDriver{t: t, n: n, d: virtiotest.New(t, p, ram, mem)}
}

// postKind is how the driver posts its receive buffers.
type postKind int

const (
	oneBuffer    postKind = iota // one descriptor per chain
	twoBuffers                   // two descriptors per chain, each half the length
	fourIndirect                 // an indirect table of four, each a quarter
)

// up resets the device and brings it up with features, a receive queue of
// size entries and chains posted as kind of bufLen bytes each (as many as
// the descriptor table holds, or posted when not zero).
func (r *rxDriver) up(features uint64, size uint16, bufLen uint32, kind postKind, posted int) {
	r.t.Helper()
	d := r.d
	d.SetStatus(0)
	if _, ok := d.Negotiate(features); !ok {
		r.t.Fatalf("features %#x refused", features)
	}
	d.EnableMSIX()
	d.Write(d.Common+0x10, 2, 0)
	r.rx = d.SetupQueue(0, size, 1)
	d.SetupQueue(1, 0, 2)
	if posted == 0 {
		posted = int(size)
		if kind == twoBuffers {
			posted /= 2
		}
	}
	for range posted {
		var ok bool
		switch kind {
		case oneBuffer:
			_, ok = r.rx.Offer(virtiotest.Buf{Addr: d.Alloc(uint64(bufLen)), Len: bufLen, Write: true})
		case twoBuffers:
			_, ok = r.rx.Offer(virtiotest.Buf{Addr: d.Alloc(uint64(bufLen / 2)), Len: bufLen / 2, Write: true},
				virtiotest.Buf{Addr: d.Alloc(uint64(bufLen / 2)), Len: bufLen / 2, Write: true})
		case fourIndirect:
			var bufs []virtiotest.Buf
			for range 4 {
				bufs = append(bufs, virtiotest.Buf{Addr: d.Alloc(uint64(bufLen / 4)), Len: bufLen / 4, Write: true})
			}
			_, ok = r.rx.OfferIndirect(bufs...)
		}
		if !ok {
			r.t.Fatal("receive queue full")
		}
	}
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.Status()&virtio.StatusDriverOK == 0 {
		r.t.Fatal("DRIVER_OK refused")
	}
	r.rx.Kick()
}

// used waits up to 3 s for want used receive chains.
func (r *rxDriver) used(want int) []virtiotest.Used {
	var got []virtiotest.Used
	for deadline := time.Now().Add(3 * time.Second); len(got) < want && time.Now().Before(deadline); {
		got = append(got, r.rx.TakeUsed()...)
		if len(got) < want {
			time.Sleep(2 * time.Millisecond)
		}
	}
	return got
}

// numBuffers reads num_buffers from the header in the first used chain's
// first buffer.
func (r *rxDriver) numBuffers(u virtiotest.Used) uint16 {
	addr, _ := r.d.Mem.ReadU64(r.rx.Desc + 16*uint64(u.Head))
	if flags, _ := r.d.Mem.ReadU16(r.rx.Desc + 16*uint64(u.Head) + 12); flags&virtio.DescIndirect != 0 {
		addr, _ = r.d.Mem.ReadU64(addr) // the table's first buffer
	}
	nb, _ := r.d.Mem.ReadU16(addr + 10)
	return nb
}

const (
	mrgFeatures   = virtio.FeatureVersion1 | vnet.FeatureMAC | vnet.FeatureMrgRxbuf | virtio.FeatureIndirectDesc
	plainFeatures = virtio.FeatureVersion1 | vnet.FeatureMAC | virtio.FeatureIndirectDesc
)

// TestRxDerivedAtEveryActivation: whatever a driver brought the device up
// with before its reset (queue size, merged buffers, how it posts), the
// next activation takes a frame exactly as a fresh device brought up the
// same way: a frame the posted buffers hold is delivered whole in as many
// chains as it needs (num_buffers saying how many), one they cannot hold is
// dropped, counted, and every buffer it took comes back with nothing
// written; a small frame after it is delivered.
func TestRxDerivedAtEveryActivation(t *testing.T) {
	type bringUp struct {
		features uint64
		size     uint16
		bufLen   uint32
		kind     postKind
	}
	big := bringUp{mrgFeatures, 256, 2048, oneBuffer}
	small := bringUp{mrgFeatures, 16, 64, oneBuffer}
	smallQueue := bringUp{mrgFeatures, 16, 2048, oneBuffer}
	tests := []struct {
		name        string
		before, now bringUp
		frame       int
		chains      int // used chains for the frame
		delivered   bool
	}{
		{"shrink 256 to 16: a frame over all 16 buffers", big, small, 2000, 16, false},
		{"grow 16 to 256: a frame over 32 of 256 buffers", smallQueue, bringUp{mrgFeatures, 256, 64, oneBuffer}, 2000, 32, true},
		{"grow 16 to 256 with two-buffer chains", smallQueue, bringUp{mrgFeatures, 256, 64, twoBuffers}, 2000, 32, true},
		{"shrink with two-buffer chains: 8 chains fill the 16-entry table", big, bringUp{mrgFeatures, 16, 64, twoBuffers}, 2000, 8, false},
		{"indirect chains take one entry each: 16 of them", big, bringUp{mrgFeatures, 16, 64, fourIndirect}, 1000, 16, true},
		{"indirect chains: a frame over all 16", big, bringUp{mrgFeatures, 16, 64, fourIndirect}, 2000, 16, false},
		{"merged buffers dropped: one chain per frame", big, bringUp{plainFeatures, 16, 64, oneBuffer}, 200, 1, false},
		{"merged buffers taken again", bringUp{plainFeatures, 256, 2048, oneBuffer}, small, 200, 4, true},
	}
	tap, inject := rawTap(t, "pv-act")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRxDriver(t, tap)
			defer r.n.Close() // the next device takes the tap
			r.up(tt.before.features, tt.before.size, tt.before.bufLen, tt.before.kind, 0)
			inject(testFrame(100))
			if got := r.used(1); len(got) != 1 || got[0].Len != vnet.HeaderLen+100 {
				t.Fatalf("before the reset: used %+v, want one chain of %d bytes", got, vnet.HeaderLen+100)
			}
			r.up(tt.now.features, tt.now.size, tt.now.bufLen, tt.now.kind, 0)
			before := r.n.Stats()
			inject(testFrame(tt.frame))
			got := r.used(tt.chains)
			st := r.n.Stats()
			if len(got) != tt.chains {
				t.Fatalf("%d chains used for a %d-byte frame, want %d (stats %+v, status %#x)", len(got), tt.frame, tt.chains, st, r.d.Status())
			}
			written := 0
			for _, u := range got {
				written += int(u.Len)
			}
			switch {
			case tt.delivered && (st.RxFrames != before.RxFrames+1 || written != vnet.HeaderLen+tt.frame):
				t.Errorf("frame not delivered whole: %d bytes written, stats %+v", written, st)
			case tt.delivered && int(r.numBuffers(got[0])) != tt.chains:
				t.Errorf("num_buffers %d, want %d", r.numBuffers(got[0]), tt.chains)
			case !tt.delivered && (st.RxDropped != before.RxDropped+1 || written != 0):
				t.Errorf("frame that cannot fit: %d bytes written, stats %+v; want it dropped, counted, nothing written", written, st)
			}
			if r.d.Status()&virtio.StatusDeviceNeedsReset != 0 {
				t.Errorf("device needs a reset (status %#x)", r.d.Status())
			}
		})
	}
}

// TestRxFrameFitsNoPostedBuffers: a driver that posts fewer buffers than
// its queue holds, too few for a frame, gets them back (nothing written,
// the frame dropped and counted) instead of a receive queue that waits
// for more while holding them; once it posts bigger ones, the next frame
// arrives.
func TestRxFrameFitsNoPostedBuffers(t *testing.T) {
	for _, features := range []uint64{mrgFeatures, plainFeatures} {
		t.Run(fmt.Sprintf("features %#x", features), func(t *testing.T) {
			tap, inject := rawTap(t, "pv-few")
			r := newRxDriver(t, tap)
			want := 4
			if features&vnet.FeatureMrgRxbuf == 0 {
				want = 1 // one chain per frame without merged buffers
			}
			r.up(features, 64, 64, oneBuffer, want)
			inject(testFrame(2000))
			got := r.used(want)
			if st := r.n.Stats(); len(got) != want || st.RxDropped != 1 {
				t.Fatalf("%d of %d posted buffers came back for a frame that fits none, stats %+v", len(got), want, st)
			}
			for _, u := range got {
				if u.Len != 0 {
					t.Errorf("chain %d came back with %d bytes written, want 0", u.Head, u.Len)
				}
			}
			// The driver posts a buffer that fits, and the next frame
			// arrives.
			r.rx.Offer(virtiotest.Buf{Addr: r.d.Alloc(2048), Len: 2048, Write: true})
			r.rx.Kick()
			inject(testFrame(1500))
			deadline := time.Now().Add(3 * time.Second)
			for r.n.Stats().RxFrames != 1 && time.Now().Before(deadline) {
				r.rx.TakeUsed()
				time.Sleep(2 * time.Millisecond)
			}
			if st := r.n.Stats(); st.RxFrames != 1 {
				t.Errorf("a frame that fits was not delivered after the drop: stats %+v", st)
			}
		})
	}
}

// TestRxWaitsForBuffersHoldingNone: with no receive buffer posted at all a
// frame waits for the driver (nothing is held, nothing dropped), and is
// delivered when a buffer comes.
func TestRxWaitsForBuffersHoldingNone(t *testing.T) {
	tap, inject := rawTap(t, "pv-none")
	r := newRxDriver(t, tap)
	r.up(mrgFeatures, 16, 2048, oneBuffer, 0)
	inject(testFrame(60)) // takes one buffer
	if got := r.used(1); len(got) != 1 {
		t.Fatalf("used %+v", got)
	}
	for range 15 { // the rest, one frame each: none posted any more
		inject(testFrame(60))
	}
	if got := r.used(15); len(got) != 15 {
		t.Fatalf("%d used, want 15", len(got))
	}
	inject(testFrame(300))
	time.Sleep(50 * time.Millisecond) // more than the refill grace
	if st := r.n.Stats(); st.RxDropped != 0 {
		t.Fatalf("a frame was dropped while no buffer was posted: stats %+v", st)
	}
	r.rx.Offer(virtiotest.Buf{Addr: r.d.Alloc(2048), Len: 2048, Write: true})
	r.rx.Kick()
	if got := r.used(1); len(got) != 1 || got[0].Len != vnet.HeaderLen+300 {
		t.Errorf("used %+v, want the waiting 300-byte frame", got)
	}
}
