package virtio_test

import (
	"testing"

	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// FuzzTransport replays register accesses and a guest-memory image
// against the transport and the echo device: nothing may panic, and a
// reset always brings the device back to status 0.
func FuzzTransport(f *testing.F) {
	msixCap := 0x40 // the first capability: see NewPCI
	setup := virtiotest.SetupProgram(msixCap, virtio.FeatureVersion1|virtio.FeatureEventIdx|virtio.FeatureIndirectDesc, 2)
	im := make([]byte, 0xc00)
	virtiotest.Chain(im, 0, 0x800, []uint16{0, 0, virtio.DescWrite}, []uint32{12, 100, 64})
	f.Add(virtiotest.Program(setup, im))
	garbage := make([]byte, 0xc00)
	virtiotest.Chain(garbage, 0, 0x800, []uint16{virtio.DescIndirect}, []uint32{48})
	f.Add(virtiotest.Program(setup, garbage))
	f.Add(virtiotest.Program(setup[:8], nil))
	f.Fuzz(func(t *testing.T, prog []byte) {
		ram, mem := virtiotest.NewMemorySize(t, 0x10000)
		p, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: virtiotest.NewRouter(3), IRQ: &level{}})
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
