package vnet_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
	"github.com/popvmm/popvmm/vnet"
)

const benchBatch = 32

func benchNIC(b *testing.B) (*nic, *vnet.Tap) {
	inNetns(b)
	br, err := vnet.EnsureBridge("pv-bench", netip.MustParsePrefix("10.78.0.1/24"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Remove() })
	tap, err := vnet.OpenTap("pv-bench-0", br)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tap.Close() })
	return newNIC(b, tap.File, ^uint64(0)), tap
}

// BenchmarkNetTx sends 1514-byte frames from the guest through the device
// to the tap, in batches of 32 chains per kick.
func BenchmarkNetTx(b *testing.B) {
	g, _ := benchNIC(b)
	frame := udpFrame(guestMAC, net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9},
		netip.MustParseAddrPort("10.78.0.2:1"), netip.MustParseAddrPort("10.78.0.9:9"), make([]byte, 1472))
	for _, a := range g.txBuf {
		g.d.Mem.Write(a+vnet.HeaderLen, frame)
	}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(benchBatch, b.N-sent)
		for i := range n {
			g.tx.Offer(virtiotest.Buf{Addr: g.txBuf[i], Len: uint32(vnet.HeaderLen + len(frame))})
		}
		g.tx.Kick()
		for got := 0; got < n; {
			idx, _ := g.d.Mem.ReadU16(g.tx.Used + 2)
			g.tx.SetUsedEvent(idx)
			k := len(g.tx.TakeUsed())
			if got += k; got < n && k == 0 {
				g.wait(2, "transmit interrupt")
			}
		}
		sent += n
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}

// BenchmarkNetRx sends 1514-byte frames for the guest's MAC on the bridge
// (a packet socket) and receives them through the tap and the device, in
// batches of 32.
func BenchmarkNetRx(b *testing.B) {
	g, _ := benchNIC(b)
	br, err := net.InterfaceByName("pv-bench")
	if err != nil {
		b.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: br.Index, Halen: 6}
	copy(to.Addr[:], guestMAC)
	frame := udpFrame(br.HardwareAddr, guestMAC, netip.MustParseAddrPort("10.78.0.1:9"), netip.MustParseAddrPort("10.78.0.2:1"), make([]byte, 1472))
	isBench := func(f []byte) bool { return len(f) == len(frame) && binary.BigEndian.Uint16(f[36:]) == 1 }
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(benchBatch, b.N-done)
		for range n {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				b.Fatal(err)
			}
		}
		for range n {
			g.recv(isBench)
		}
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}
