package vnet_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
	"github.com/popvmm/popvmm/vnet"
)

const (
	rxBufLen = 2048
	rxBufs   = 64
)

var guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// nic is a virtio-net device with the test playing its guest driver:
// receive queue filled with buffers, MSI-X vectors 0 (config), 1 (rx),
// 2 (tx).
type nic struct {
	t      testing.TB
	n      *vnet.Net
	d      *virtiotest.Driver
	r      *virtiotest.Router
	rx, tx *virtiotest.DriverQueue
	bufs   map[uint16]uint64 // rx chain head → its buffer
	txBuf  []uint64
	txNext int
	feat   uint64
	got    [][]byte // received frames not yet returned by recv
}

// newNIC makes the device on tap and drives it up to DRIVER_OK with the
// features in want that it offers.
func newNIC(t testing.TB, tap *os.File, want uint64) *nic {
	t.Helper()
	ram, mem := virtiotest.NewMemory(t)
	n, err := vnet.NewNet(vnet.NetConfig{MAC: guestMAC, Tap: tap})
	if err != nil {
		t.Fatal(err)
	}
	r := virtiotest.NewRouter(3)
	p, err := virtio.NewPCI(n, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() }) // before the memory goes
	d := virtiotest.New(t, p, ram, mem)
	g := &nic{t: t, n: n, d: d, r: r, bufs: map[uint16]uint64{}}
	var ok bool
	g.feat, ok = d.Negotiate(want)
	if !ok {
		t.Fatalf("features %#x refused", want)
	}
	d.EnableMSIX()
	d.Write(0x10, 2, 0)
	g.rx = d.SetupQueue(0, 0, 1)
	g.tx = d.SetupQueue(1, 0, 2)
	for range rxBufs {
		a := d.Alloc(rxBufLen)
		h, _ := g.rx.Offer(virtiotest.Buf{Addr: a, Len: rxBufLen, Write: true})
		g.bufs[h] = a
	}
	for range 32 {
		g.txBuf = append(g.txBuf, d.Alloc(vnet.HeaderLen+65536))
	}
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.Status()&virtio.StatusDriverOK == 0 {
		t.Fatal("DRIVER_OK refused")
	}
	g.rx.Kick()
	return g
}

// send transmits hdr+frame from one buffer and waits until the device has
// used it.
func (g *nic) send(hdr [vnet.HeaderLen]byte, frame []byte) {
	g.t.Helper()
	a := g.txBuf[g.txNext%len(g.txBuf)]
	g.txNext++
	g.d.Mem.Write(a, hdr[:])
	g.d.Mem.Write(a+vnet.HeaderLen, frame)
	g.tx.Offer(virtiotest.Buf{Addr: a, Len: uint32(vnet.HeaderLen + len(frame))})
	g.tx.Kick()
	for n := 0; n < 1; {
		g.tx.SetUsedEvent(uint16(g.txNext - 1))
		n += len(g.tx.TakeUsed())
		if n == 0 {
			g.wait(2, "transmit interrupt")
		}
	}
}

func (g *nic) wait(vector int, what string) {
	g.t.Helper()
	select {
	case <-g.r.Signals[vector]:
	case <-time.After(10 * time.Second):
		g.t.Fatalf("no %s within 10s (device status %#x, stats %+v)", what, g.d.Status(), g.n.Stats())
	}
}

// recv returns the next received frame (header stripped) that match
// accepts, recycling every buffer.
func (g *nic) recv(match func([]byte) bool) (hdr, frame []byte) {
	g.t.Helper()
	for {
		for len(g.got) > 0 {
			b := g.got[0]
			g.got = g.got[1:]
			if len(b) >= vnet.HeaderLen && match(b[vnet.HeaderLen:]) {
				return b[:vnet.HeaderLen], b[vnet.HeaderLen:]
			}
		}
		g.rx.SetUsedEvent(g.rxUsed())
		used := g.rx.TakeUsed()
		for _, u := range used {
			a := g.bufs[u.Head]
			b := make([]byte, u.Len)
			g.d.Mem.Read(a, b)
			g.got = append(g.got, b)
			delete(g.bufs, u.Head)
			h, _ := g.rx.Offer(virtiotest.Buf{Addr: a, Len: rxBufLen, Write: true})
			g.bufs[h] = a
		}
		if len(used) > 0 {
			g.rx.Kick()
		} else {
			g.wait(1, "receive interrupt")
		}
	}
}

func (g *nic) rxUsed() uint16 {
	idx, _ := g.d.Mem.ReadU16(g.rx.Used + 2)
	return idx
}

// Frames built by hand.

func arpReply(srcMAC, dstMAC net.HardwareAddr, srcIP, dstIP netip.Addr) []byte {
	f := append(append([]byte{}, dstMAC...), srcMAC...)
	f = append(f, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2)
	f = append(f, srcMAC...)
	f = append(f, srcIP.AsSlice()...)
	f = append(f, dstMAC...)
	f = append(f, dstIP.AsSlice()...)
	return f
}

func isARPRequestFor(ip netip.Addr) func([]byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 1 && bytes.Equal(f[38:42], ip.AsSlice())
	}
}

func ipChecksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	f := append(append([]byte{}, dstMAC...), srcMAC...)
	f = append(f, 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:], src.Addr().AsSlice())
	copy(ip[16:], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload))) // checksum 0: none
	return append(append(append(f, ip...), udp...), payload...)
}

func isUDPTo(dst netip.AddrPort) func([]byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0 && f[23] == 17 &&
			bytes.Equal(f[30:34], dst.Addr().AsSlice()) && binary.BigEndian.Uint16(f[36:]) == dst.Port()
	}
}

// TestNetEndToEnd plays a guest on the device over a real tap on a
// bridge in a fresh network namespace: the host's ARP request and a UDP
// datagram reach the guest (receive), and the guest's ARP reply and UDP
// answer reach the host's socket (transmit).
func TestNetEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name string
		want uint64
	}{
		{"all features", ^uint64(0)},
		{"no merged buffers, no event index, no offloads", virtio.FeatureVersion1 | vnet.FeatureMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inNetns(t)
			hostIP, guestIP := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")
			b, err := vnet.EnsureBridge("pv-e2e", netip.PrefixFrom(hostIP, 24))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Remove() })
			tap, err := vnet.OpenTap("pv-e2e-0", b)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tap.Close() })
			g := newNIC(t, tap.File, tc.want)
			if mac := g.d.Read(g.d.DevCfg, 4) | g.d.Read(g.d.DevCfg+4, 2)<<32; !bytes.Equal(binary.LittleEndian.AppendUint64(nil, mac)[:6], guestMAC) {
				t.Errorf("MAC in config space %#x, want %s", mac, guestMAC)
			}

			pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(hostIP, 5555)))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			guestPort := netip.AddrPortFrom(guestIP, 4444)
			if _, err := pc.WriteToUDPAddrPort([]byte("ping"), guestPort); err != nil {
				t.Fatal(err)
			}
			// Receive: the host asks who has the guest's address.
			_, arp := g.recv(isARPRequestFor(guestIP))
			bridgeMAC := net.HardwareAddr(arp[6:12])
			// Transmit: the guest answers.
			g.send([vnet.HeaderLen]byte{}, arpReply(guestMAC, bridgeMAC, guestIP, hostIP))
			// Receive: the datagram follows.
			_, udp := g.recv(isUDPTo(guestPort))
			if got := udp[42:]; string(got) != "ping" {
				t.Errorf("guest received %q, want ping", got)
			}
			// Transmit: the guest's answer reaches the host's socket.
			g.send([vnet.HeaderLen]byte{}, udpFrame(guestMAC, bridgeMAC, guestPort, netip.AddrPortFrom(hostIP, 5555), []byte("pong")))
			pc.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 64)
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "pong" || from != guestPort {
				t.Fatalf("host received %q from %v, %v; want pong from %v", buf[:n], from, err, guestPort)
			}
			st := g.n.Stats()
			if st.TxFrames != 2 || st.RxFrames < 2 || st.TxDropped != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
