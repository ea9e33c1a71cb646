package vnet_test

import (
	"encoding/binary"
	"testing"

	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
	"github.com/popvmm/popvmm/vnet"
)

// FuzzNetDevice replays register accesses and a guest-memory image (the
// queues' rings and frames) against a virtio-net device on a tap: nothing
// may panic or hang, and a reset always stops the device.
func FuzzNetDevice(f *testing.F) {
	inNetns(f)
	tap, err := vnet.CreateTap("pv-fuzz0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { tap.Close() })
	setup := virtiotest.SetupProgram(0x40, ^uint64(0)>>31, 2) // every feature the seed can name
	good := make([]byte, 0xc00)
	hdr := make([]byte, vnet.HeaderLen+60)
	binary.BigEndian.PutUint16(hdr[vnet.HeaderLen+12:], 0x0800)
	copy(good[0x900:], hdr)
	virtiotest.Chain(good, 1, 0x900, []uint16{0}, []uint32{uint32(len(hdr))})
	virtiotest.Chain(good, 0, 0x800, []uint16{virtio.DescWrite}, []uint32{0x100})
	f.Add(virtiotest.Program(setup, good))
	short := make([]byte, 0xc00)
	virtiotest.Chain(short, 1, 0x900, []uint16{0}, []uint32{4})
	f.Add(virtiotest.Program(setup, short))
	f.Fuzz(func(t *testing.T, prog []byte) {
		ram, mem := virtiotest.NewMemorySize(t, 0x10000)
		n, err := vnet.NewNet(vnet.NetConfig{MAC: guestMAC, Tap: tap, QueueSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		p, err := virtio.NewPCI(n, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: virtiotest.NewRouter(3)})
		if err != nil {
			t.Fatal(err)
		}
		d := virtiotest.New(t, p, ram, mem)
		virtiotest.Replay(d, prog, virtio.BARSize)
		d.SetStatus(0)
		if s := d.Status(); s != 0 {
			t.Fatalf("status %#x after reset", s)
		}
	})
}
