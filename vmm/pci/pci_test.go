package pci_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/popvmm/popvmm/vmm/pci"
)

// fn is a test function: 1af4:1110 with a 4 KiB BAR0 and a 64-bit
// prefetchable 16 MiB BAR2, and one byte of capability space.
type fn struct {
	moved map[int]uint64
	cap   byte
	// refuse, when set, decides whether a move is refused (as the VMM
	// refuses one onto another device's BAR).
	refuse func(i int, addr uint64) error
}

func (f *fn) Header() pci.Header {
	return pci.Header{Vendor: 0x1af4, Device: 0x1110, Class: 0x050000, Revision: 1, CapPtr: 0x40, IntPin: 1}
}
func (f *fn) BARs() [pci.NumBARs]pci.BAR {
	return [pci.NumBARs]pci.BAR{
		0: {Size: 0x1000, Addr: 0xc0000000},
		2: {Size: 16 << 20, Is64: true, Prefetchable: true, Addr: 0x100_0000_0000},
	}
}
func (f *fn) ConfigRead(off int, data []byte) {
	if off == 0x40 {
		data[0] = f.cap
	}
}
func (f *fn) ConfigWrite(off int, data []byte) {
	if off == 0x40 {
		f.cap = data[0]
	}
}
func (f *fn) BARMoved(i int, addr uint64) error {
	if f.refuse != nil {
		if err := f.refuse(i, addr); err != nil {
			return err
		}
	}
	f.moved[i] = addr
	return nil
}

func cfgAddr(dev, reg int) []byte {
	return binary.LittleEndian.AppendUint32(nil, 1<<31|uint32(dev)<<11|uint32(reg))
}

func read32(p *pci.Ports, dev, reg int) uint32 {
	p.Write(0, cfgAddr(dev, reg))
	b := make([]byte, 4)
	p.Read(4, b)
	return binary.LittleEndian.Uint32(b)
}

func write32(p *pci.Ports, dev, reg int, v uint32) {
	p.Write(0, cfgAddr(dev, reg))
	p.Write(4, binary.LittleEndian.AppendUint32(nil, v))
}

func TestEnumerate(t *testing.T) {
	b := pci.NewBus()
	f := &fn{moved: map[int]uint64{}}
	d, err := b.Add(f)
	if err != nil || d != 1 {
		t.Fatalf("Add = %d, %v", d, err)
	}
	p := b.ConfigPorts()
	if v := read32(p, 0, 0); v != 0x0d578086 {
		t.Errorf("host bridge id %#x", v)
	}
	if v := read32(p, 0, 8) >> 8; v != 0x060000 {
		t.Errorf("host bridge class %#x", v)
	}
	if v := read32(p, 1, 0); v != 0x11101af4 {
		t.Errorf("device id %#x", v)
	}
	if v := read32(p, 1, 8); v != 0x05000001 {
		t.Errorf("class/revision %#x", v)
	}
	if v := read32(p, 5, 0); v != 0xffffffff {
		t.Errorf("absent device reads %#x, want all ones", v)
	}
	p.Write(0, binary.LittleEndian.AppendUint32(nil, 1<<11)) // enable bit clear
	buf := make([]byte, 4)
	p.Read(4, buf)
	if binary.LittleEndian.Uint32(buf) != 0xffffffff {
		t.Error("config access without the enable bit answered")
	}
	// Byte read of the interrupt pin (0x3d) through the data window.
	p.Write(0, cfgAddr(1, 0x3c))
	one := make([]byte, 1)
	p.Read(5, one)
	if one[0] != 1 {
		t.Errorf("interrupt pin %d, want INTA#", one[0])
	}
	// Status advertises the capability list.
	if v := read32(p, 1, 4) >> 16; v&0x10 == 0 {
		t.Errorf("status %#x lacks the capability bit", v)
	}
}

func TestBARSizingAndMoving(t *testing.T) {
	b := pci.NewBus()
	f := &fn{moved: map[int]uint64{}}
	b.Add(f)
	p := b.ConfigPorts()
	// 32-bit BAR0: size probe, then restore.
	orig := read32(p, 1, 0x10)
	if orig != 0xc0000000 {
		t.Fatalf("BAR0 = %#x", orig)
	}
	write32(p, 1, 0x10, 0xffffffff)
	if v := read32(p, 1, 0x10); v != 0xfffff000 {
		t.Errorf("BAR0 size mask %#x, want 0xfffff000 (4 KiB)", v)
	}
	write32(p, 1, 0x10, orig)
	if v := read32(p, 1, 0x10); v != orig {
		t.Errorf("BAR0 after restore %#x", v)
	}
	// 64-bit BAR2: flags, size over both halves.
	lo, hi := read32(p, 1, 0x18), read32(p, 1, 0x1c)
	if lo != 0x0c || hi != 0x100 {
		t.Fatalf("BAR2 = %#x:%#x, want 0x100:0x0000000c", hi, lo)
	}
	write32(p, 1, 0x18, 0xffffffff)
	write32(p, 1, 0x1c, 0xffffffff)
	if l, h := read32(p, 1, 0x18), read32(p, 1, 0x1c); l != 0xff00000c || h != 0xffffffff {
		t.Errorf("BAR2 size mask %#x:%#x, want 16 MiB", h, l)
	}
	// The guest moves BAR2.
	write32(p, 1, 0x18, 0x0000000c)
	write32(p, 1, 0x1c, 0x200)
	if got := f.moved[2]; got != 0x200_0000_0000 {
		t.Errorf("BARMoved(2) = %#x", got)
	}
	if bars := b.BARs(1); bars[2].Addr != 0x200_0000_0000 {
		t.Errorf("BARs()[2] = %#x", bars[2].Addr)
	}
	// An unaligned address keeps the BAR aligned.
	write32(p, 1, 0x10, 0xc0000123)
	if v := read32(p, 1, 0x10); v != 0xc0000000 {
		t.Errorf("unaligned BAR write read back %#x", v)
	}
}

func TestCommandAndCapabilities(t *testing.T) {
	b := pci.NewBus()
	f := &fn{moved: map[int]uint64{}}
	b.Add(f)
	p := b.ConfigPorts()
	p.Write(0, cfgAddr(1, 4))
	p.Write(4, []byte{0x06, 0x00}) // memory decode + bus master, 16-bit write
	if c := b.Command(1); c != 0x06 {
		t.Errorf("command %#x", c)
	}
	p.Write(5, []byte{0x04}) // INTx disable (bit 10), byte write to the high half
	if c := b.Command(1); c != 0x0406 {
		t.Errorf("command after byte write %#x", c)
	}
	write32(p, 1, 0x40, 0xaa)
	if f.cap != 0xaa || read32(p, 1, 0x40)&0xff != 0xaa {
		t.Errorf("capability byte %#x", f.cap)
	}
}

// bars is a function with the given BARs.
type bars [pci.NumBARs]pci.BAR

func (b bars) Header() pci.Header              { return pci.Header{Vendor: 0x1af4, Device: 0x1110} }
func (b bars) BARs() [pci.NumBARs]pci.BAR      { return b }
func (b bars) ConfigRead(off int, data []byte) {}
func (b bars) ConfigWrite(int, []byte)         {}
func (b bars) BARMoved(int, uint64) error      { return nil }

// TestAddChecksBARs: malformed BARs (a range past 2^64 or above 4 GiB for
// a 32-bit BAR, sizes that break the sizing math) are refused at Add.
func TestAddChecksBARs(t *testing.T) {
	tests := []struct {
		name string
		bars bars
		ok   bool
	}{
		{"good", bars{0: {Size: 0x1000, Addr: 0xc0000000}, 2: {Size: 1 << 30, Is64: true, Addr: 1 << 40}}, true},
		{"64-bit at the top", bars{0: {Size: 0x1000, Is64: true, Addr: 0xffff_ffff_ffff_e000}}, true},
		{"64-bit ending at 2^64", bars{0: {Size: 0x1000, Is64: true, Addr: 0xffff_ffff_ffff_f000}}, false},
		{"32-bit past 4 GiB", bars{0: {Size: 0x1000, Addr: 0x1_0000_0000}}, false},
		{"32-bit too large", bars{0: {Size: 1 << 32}}, false},
		{"32-bit of 2 GiB", bars{0: {Size: 1 << 31, Addr: 1 << 31}}, true},
		{"size not a power of two", bars{0: {Size: 0x3000, Addr: 0xc0000000}}, false},
		{"size below 16", bars{0: {Size: 8, Addr: 0xc0000000}}, false},
		{"unaligned", bars{0: {Size: 0x2000, Addr: 0xc0001000}}, false},
		{"64-bit in the last slot", bars{5: {Size: 0x1000, Is64: true, Addr: 1 << 40}}, false},
		{"upper half reused", bars{0: {Size: 0x1000, Is64: true, Addr: 1 << 40}, 1: {Size: 0x1000, Addr: 0xc0000000}}, false},
	}
	for _, tt := range tests {
		_, err := pci.NewBus().Add(tt.bars)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Add = %v, want success %v", tt.name, err, tt.ok)
		}
	}
}

// TestBAREnd: a guest may move a 64-bit BAR to the top of the address
// space; End says its range does not fit rather than wrapping to 0.
func TestBAREnd(t *testing.T) {
	b := pci.NewBus()
	if _, err := b.Add(bars{0: {Size: 0x1000, Addr: 0xc0000000}, 2: {Size: 8 << 30, Is64: true, Addr: 1 << 40}}); err != nil {
		t.Fatal(err)
	}
	p := b.ConfigPorts()
	write32(p, 1, 0x18, 0x0000000c)
	write32(p, 1, 0x1c, 0xfffffffe) // all ones would be a size probe
	bar := b.BARs(1)[2]
	if end, ok := bar.End(); ok || bar.Addr != 0xffff_fffe_0000_0000 {
		t.Errorf("BAR2 at %#x: End = %#x, %v; want it not to fit below 2^64", bar.Addr, end, ok)
	}
	if end, ok := b.BARs(1)[0].End(); !ok || end != 0xc0001000 {
		t.Errorf("BAR0 End = %#x, %v", end, ok)
	}
	// A data-window write at an offset whose end wraps changes nothing.
	before := b.Command(1)
	p.Write(0, cfgAddr(1, 4))
	p.Write(^uint64(0)-1, []byte{0xff, 0xff, 0xff, 0xff})
	if c := b.Command(1); c != before {
		t.Errorf("command %#x after a write at offset 2^64-2, want %#x", c, before)
	}
}

// FuzzPorts: any sequence of accesses to 0xCF8-0xCFF is safe and never
// changes the host bridge's identity.
func FuzzPorts(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		b := pci.NewBus()
		b.Add(&fn{moved: map[int]uint64{}})
		p := b.ConfigPorts()
		for len(ops) >= 6 {
			off := uint64(ops[0] % 8)
			size := []int{1, 2, 4}[ops[1]%3]
			data := append([]byte(nil), ops[2:6][:size]...)
			if ops[1]&0x80 != 0 {
				p.Read(off, data)
			} else {
				p.Write(off, data)
			}
			ops = ops[6:]
		}
		if v := read32(p, 0, 0); v != 0x0d578086 {
			t.Fatalf("host bridge id became %#x", v)
		}
	})
}

// TestBARMoveRefused: a move the function cannot apply (onto another
// device's range) leaves the register reading the old address, for a
// 32-bit BAR and for a 64-bit one whichever half's write brings the
// refused address; a 64-bit move whose half-written address is refused
// still lands when the high half is written; a platform reset puts back a
// BAR whose first place was taken, once the taker moved away.
func TestBARMoveRefused(t *testing.T) {
	b := pci.NewBus()
	taken := map[uint64]bool{0xd0000000: true, 0x100_4000_0000: true, 0x300_0000_0000: true}
	f := &fn{moved: map[int]uint64{}, refuse: func(i int, addr uint64) error {
		if taken[addr] {
			return errors.New("overlaps another device")
		}
		return nil
	}}
	b.Add(f)
	p := b.ConfigPorts()
	write32(p, 1, 0x10, 0xd0000000)
	if v := read32(p, 1, 0x10); v != 0xc0000000 {
		t.Errorf("BAR0 after a refused move reads %#x, want the old 0xc0000000", v)
	}
	if _, ok := f.moved[0]; ok {
		t.Error("the refused move was applied")
	}
	// 64-bit: low half first gives 0x100_4000_0000 (refused), the high
	// half then gives 0x200_4000_0000 (free): the move lands.
	write32(p, 1, 0x18, 0x4000000c)
	write32(p, 1, 0x1c, 0x200)
	if got := b.BARs(1)[2].Addr; got != 0x200_4000_0000 || f.moved[2] != 0x200_4000_0000 {
		t.Errorf("64-bit move through a refused half: BAR2 %#x, moved %#x; want 0x200_4000_0000", got, f.moved[2])
	}
	// A 64-bit move refused at the high half rolls both halves back to
	// where the BAR is mapped (the free half-written address, here).
	write32(p, 1, 0x18, 0x0000000c)
	write32(p, 1, 0x1c, 0x300)
	if lo, hi := read32(p, 1, 0x18), read32(p, 1, 0x1c); hi != 0x200 || lo != 0x0000000c {
		t.Errorf("BAR2 after a refused 64-bit move reads %#x:%#x, want 0x200:0x0000000c", hi, lo)
	}
	if f.moved[2] != 0x200_0000_0000 {
		t.Errorf("BAR2 mapped at %#x, want 0x200_0000_0000", f.moved[2])
	}
	// Reset: BAR0's first place is taken while the first pass runs;
	// the second pass finds it free.
	write32(p, 1, 0x10, 0xc1000000)
	calls := 0
	f.refuse = func(i int, addr uint64) error {
		if i == 0 && addr == 0xc0000000 {
			if calls++; calls == 1 {
				return errors.New("overlaps another device")
			}
		}
		return nil
	}
	b.Reset()
	if got := b.BARs(1); got[0].Addr != 0xc0000000 || got[2].Addr != 0x100_0000_0000 {
		t.Errorf("after reset BAR0 %#x BAR2 %#x, want where Add found them", got[0].Addr, got[2].Addr)
	}
}
