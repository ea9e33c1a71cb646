package machine

import (
	"log/slog"
	"testing"

	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/pci"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// fill is an MMIO device that reads as one byte value.
type fill byte

func (f fill) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = byte(f)
	}
}
func (fill) Write(uint64, []byte) {}

// nullDev is a virtio device with one queue and nothing behind it.
type nullDev struct{}

func (nullDev) DeviceID() uint16                                    { return 1 }
func (nullDev) Class() uint32                                       { return 0x020000 }
func (nullDev) Features() uint64                                    { return 0 }
func (nullDev) QueueMax() []uint16                                  { return []uint16{16} }
func (nullDev) ConfigLen() int                                      { return 8 }
func (nullDev) ReadConfig(int, []byte)                              {}
func (nullDev) WriteConfig(int, []byte)                             {}
func (nullDev) Activate(virtio.Host, uint64, []*virtio.Queue) error { return nil }
func (nullDev) Notify(int)                                          {}
func (nullDev) Reset()                                              {}

// TestBARMoveOntoAnotherDevice: the guest moves virtio BAR0 onto another
// device's BAR (Cloud Hypervisor #7938, #8202): the move is refused whole,
// BAR0 reads back where the transport still is, and moving it "back" or
// resetting the platform never unmaps the other device.
func TestBARMoveOntoAnotherDevice(t *testing.T) {
	const (
		virtioBAR = 0xc000_0000
		otherBAR  = 0xc001_0000
		freeBAR   = 0xc002_0000
	)
	mmio := bus.New("mmio", nil)
	h := &pciHost{log: slog.New(slog.DiscardHandler)}
	ram, mem := virtiotest.NewMemory(t)
	mover := &barMover{h: h, mmio: mmio, name: "virtio-net", size: virtio.BARSize}
	p, err := virtio.NewPCI(nullDev{}, virtio.PCIConfig{Mem: mem, BARAddr: virtioBAR, Router: virtiotest.NewRouter(2), Mover: mover})
	if err != nil {
		t.Fatal(err)
	}
	mover.dev = p
	if err := mmio.Insert(p, "virtio-net", virtioBAR, virtio.BARSize); err != nil {
		t.Fatal(err)
	}
	if err := mmio.Insert(fill(0xaa), "other-bar0", otherBAR, 256); err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, p, ram, mem)
	setBAR := func(addr uint64) {
		d.ConfigWrite(pci.OffBAR0, []byte{byte(addr), byte(addr >> 8), byte(addr >> 16), byte(addr >> 24)})
		d.ConfigWrite(pci.OffBAR0+4, []byte{byte(addr >> 32), byte(addr >> 40), byte(addr >> 48), byte(addr >> 56)})
	}
	readsAs := func(addr uint64) byte {
		b := make([]byte, 1)
		if !mmio.Read(addr, b) {
			return 0
		}
		return b[0]
	}
	bar0 := func() uint64 {
		return uint64(d.ConfigRead32(pci.OffBAR0)&^0xf) | uint64(d.ConfigRead32(pci.OffBAR0+4))<<32
	}
	for _, step := range []struct {
		what string
		move func()
	}{
		{"a move onto the other device", func() { setBAR(otherBAR) }},
		{"the move back", func() { setBAR(virtioBAR) }},
		{"a platform reset", d.Bus.Reset},
	} {
		step.move()
		if got := bar0(); got != virtioBAR {
			t.Errorf("after %s: BAR0 reads %#x, want %#x where the transport is", step.what, got, uint64(virtioBAR))
		}
		if p.BARAddr() != virtioBAR || !mmio.Read(virtioBAR, make([]byte, 4)) {
			t.Errorf("after %s: the transport is not mapped at %#x", step.what, uint64(virtioBAR))
		}
		if readsAs(otherBAR) != 0xaa {
			t.Errorf("after %s: the other device's BAR at %#x no longer decodes to it", step.what, uint64(otherBAR))
		}
	}
	// A move to free space still works, and back again.
	setBAR(freeBAR)
	if bar0() != freeBAR || p.BARAddr() != freeBAR || !mmio.Read(freeBAR, make([]byte, 4)) || mmio.Read(virtioBAR, make([]byte, 4)) {
		t.Errorf("a move to free space: BAR0 %#x, transport %#x", bar0(), p.BARAddr())
	}
	d.Bus.Reset()
	if bar0() != virtioBAR || !mmio.Read(virtioBAR, make([]byte, 4)) || readsAs(otherBAR) != 0xaa {
		t.Errorf("reset after a move: BAR0 %#x", bar0())
	}
}
