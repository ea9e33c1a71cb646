package pci_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/pci"
)

// router records what an MSIX hands to the VMM.
type router struct {
	routes  map[int]pci.MSIRoute
	signals []int
	log     []string
	fail    error
}

func newRouter() *router { return &router{routes: map[int]pci.MSIRoute{}} }

func (r *router) SetRoute(v int, rt pci.MSIRoute) error {
	r.routes[v] = rt
	r.log = append(r.log, fmt.Sprintf("route %d %#x/%#x masked=%v", v, rt.Addr, rt.Data, rt.Masked))
	return r.fail
}

func (r *router) Signal(v int) error {
	r.signals = append(r.signals, v)
	return r.fail
}

// msixFn is a function with an MSI-X capability (table at 0, PBA at
// 0x800 of BAR1, as QEMU's ivshmem lays it out) after a vendor capability.
type msixFn struct {
	pci.CapList
	m *pci.MSIX
	x *pci.INTx
}

type vendorCap struct{ b [6]byte }

func (c *vendorCap) CapID() uint8 { return pci.CapVendor }
func (c *vendorCap) CapLen() int  { return len(c.b) }
func (c *vendorCap) ReadCap(off int, data []byte) {
	for i := range data {
		if off+i < len(c.b) {
			data[i] = c.b[off+i]
		}
	}
}
func (c *vendorCap) WriteCap(off int, data []byte) {
	for i, v := range data {
		if off+i < len(c.b) {
			c.b[off+i] = v
		}
	}
}

func (f *msixFn) Header() pci.Header {
	return pci.Header{Vendor: 0x1af4, Device: 0x1110, Class: 0x050000, CapPtr: f.First(), IntPin: 1}
}
func (f *msixFn) BARs() [pci.NumBARs]pci.BAR {
	return [pci.NumBARs]pci.BAR{1: {Size: 0x1000, Addr: 0xc0001000}}
}
func (f *msixFn) BARMoved(int, uint64) error { return nil }
func (f *msixFn) INTx() *pci.INTx            { return f.x }

func newMSIXFn(t *testing.T, vectors int, r pci.MSIRouter) (*pci.Ports, *msixFn, int) {
	t.Helper()
	m, err := pci.NewMSIX(pci.MSIXConfig{Vectors: vectors, BAR: 1, TableOffset: 0, PBAOffset: 0x800}, r, func(err error) { t.Log(err) })
	if err != nil {
		t.Fatal(err)
	}
	f := &msixFn{m: m}
	vc := &vendorCap{b: [6]byte{0, 0, 6, 0xaa, 0xbb, 0xcc}}
	if off, err := f.Add(vc); err != nil || off != 0x40 {
		t.Fatalf("Add(vendor) = %#x, %v", off, err)
	}
	if off, err := f.Add(m); err != nil || off != 0x48 {
		t.Fatalf("Add(msix) = %#x, %v", off, err)
	}
	b := pci.NewBus()
	d, err := b.Add(f)
	if err != nil {
		t.Fatal(err)
	}
	return b.ConfigPorts(), f, d
}

func TestCapabilityList(t *testing.T) {
	p, _, d := newMSIXFn(t, 3, newRouter())
	if st := read32(p, d, pci.OffCommand) >> 16; st&pci.StatusCapList == 0 {
		t.Errorf("status %#x without the capability-list bit", st)
	}
	if ptr := read32(p, d, pci.OffCapPtr) & 0xff; ptr != 0x40 {
		t.Fatalf("capability pointer %#x, want 0x40", ptr)
	}
	// Walk the list the way Linux's pci_find_capability does.
	var ids []uint32
	for ptr := read32(p, d, pci.OffCapPtr) & 0xfc; ptr != 0; {
		v := read32(p, d, int(ptr))
		ids = append(ids, v&0xff)
		ptr = (v >> 8) & 0xfc
		if len(ids) > 48 {
			t.Fatal("capability list loops")
		}
	}
	if !slices.Equal(ids, []uint32{pci.CapVendor, pci.CapMSIX}) {
		t.Errorf("capability IDs %#x, want [0x9 0x11]", ids)
	}
	if v := read32(p, d, 0x40); v != 0xaa060000|0x4809 {
		t.Errorf("vendor capability dword %#x", v)
	}
	// The header bytes are the list's: a write cannot break the chain.
	write32(p, d, 0x40, 0xffffffff)
	if v := read32(p, d, 0x40); v&0xffff != 0x4809 {
		t.Errorf("after writing the header: %#x", v)
	}
	// MSI-X: table size 3 (N-1 = 2), table BIR 1 offset 0, PBA BIR 1 offset 0x800.
	if v := read32(p, d, 0x48); v != 0x0002_0011 {
		t.Errorf("MSI-X dword 0 %#x, want 0x20011", v)
	}
	if v := read32(p, d, 0x4c); v != 1 {
		t.Errorf("MSI-X table offset/BIR %#x, want 1", v)
	}
	if v := read32(p, d, 0x50); v != 0x801 {
		t.Errorf("MSI-X PBA offset/BIR %#x, want 0x801", v)
	}
	if v := read32(p, d, 0x54); v != 0 {
		t.Errorf("beyond the list: %#x, want 0", v)
	}
}

func TestCapListFull(t *testing.T) {
	var l pci.CapList
	for i := 0; ; i++ {
		_, err := l.Add(&vendorCap{})
		if err != nil {
			if i != (pci.ConfigSize-0x40)/8 {
				t.Errorf("list full after %d capabilities of 8 bytes", i)
			}
			break
		}
	}
}

func msixWrite32(m *pci.MSIX, off uint64, v uint32) {
	m.Write(off, binary.LittleEndian.AppendUint32(nil, v))
}

func msixRead(m *pci.MSIX, off uint64, n int) uint64 {
	b := make([]byte, n)
	m.Read(off, b)
	var v uint64
	for i := range b {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}

// setCtrl writes the MSI-X message control through configuration space.
func setCtrl(p *pci.Ports, d int, ctrl uint16) {
	p.Write(0, cfgAddr(d, 0x48))
	p.Write(6, binary.LittleEndian.AppendUint16(nil, ctrl))
}

func TestMSIXMaskAndPending(t *testing.T) {
	r := newRouter()
	p, f, d := newMSIXFn(t, 3, r)
	m := f.m
	// Disabled: nothing is delivered, nothing is pending.
	if m.Trigger(0) || len(r.signals) != 0 || m.Pending(0) {
		t.Fatalf("Trigger with MSI-X disabled delivered or made pending")
	}
	// The guest programs vector 1 while it is masked (as Linux does).
	msixWrite32(m, 16, 0xfee00000)
	msixWrite32(m, 20, 0)
	msixWrite32(m, 24, 0x4041)
	if got := msixRead(m, 16, 8); got != 0xfee00000 {
		t.Errorf("entry 1 address reads %#x", got)
	}
	if got := msixRead(m, 28, 4); got != 1 {
		t.Errorf("entry 1 vector control %#x, want masked", got)
	}
	setCtrl(p, d, 0x8000) // enable
	if !m.Enabled() {
		t.Fatal("not enabled after setting the enable bit")
	}
	if v := read32(p, d, 0x48) >> 16; v != 0x8002 {
		t.Errorf("message control %#x, want 0x8002", v)
	}
	// Vector 1 still masked: pending.
	if !m.Trigger(1) || len(r.signals) != 0 || !m.Pending(1) {
		t.Fatalf("masked Trigger: signals %v pending %v", r.signals, m.Pending(1))
	}
	if pba := msixRead(m, 0x800, 8); pba != 2 {
		t.Errorf("PBA %#x, want 2", pba)
	}
	// Unmasking routes the vector and delivers what was pending.
	r.log = nil
	msixWrite32(m, 28, 0)
	if rt := r.routes[1]; rt.Masked || rt.Addr != 0xfee00000 || rt.Data != 0x4041 {
		t.Errorf("route after unmask %+v", rt)
	}
	if !slices.Equal(r.signals, []int{1}) || m.Pending(1) {
		t.Errorf("after unmask: signals %v pending %v", r.signals, m.Pending(1))
	}
	m.Trigger(1)
	if !slices.Equal(r.signals, []int{1, 1}) {
		t.Errorf("unmasked Trigger: signals %v", r.signals)
	}
	// Rewriting the data of an unmasked vector reroutes it; rewriting the
	// same value does not.
	r.log = nil
	msixWrite32(m, 24, 0x4042)
	msixWrite32(m, 24, 0x4042)
	if !slices.Equal(r.log, []string{"route 1 0xfee00000/0x4042 masked=false"}) {
		t.Errorf("routes after data rewrite: %q", r.log)
	}
	// The function mask masks every vector; events go pending.
	r.log = nil
	setCtrl(p, d, 0xc000)
	if !slices.Equal(r.log, []string{"route 1 0xfee00000/0x4042 masked=true"}) {
		t.Errorf("routes after function mask: %q", r.log)
	}
	m.Trigger(1)
	if len(r.signals) != 2 || !m.Pending(1) {
		t.Errorf("function-masked Trigger: signals %v pending %v", r.signals, m.Pending(1))
	}
	setCtrl(p, d, 0x8000)
	if len(r.signals) != 3 || m.Pending(1) {
		t.Errorf("function unmask: signals %v pending %v", r.signals, m.Pending(1))
	}
	// The PBA is read-only; out-of-range vectors are ignored.
	m.Write(0x800, make([]byte, 8))
	if m.Trigger(3) || m.Trigger(-1) {
		t.Error("Trigger of a vector beyond the table")
	}
	// A 64-bit table write, and odd-sized accesses ignored.
	m.Write(32, binary.LittleEndian.AppendUint64(nil, 0x1_fee0_1000))
	if got := msixRead(m, 32, 8); got != 0x1_fee0_1000 {
		t.Errorf("64-bit address %#x", got)
	}
	m.Write(32, []byte{1, 2})
	m.Write(34, []byte{1, 2, 3, 4})
	if got := msixRead(m, 32, 8); got != 0x1_fee0_1000 {
		t.Errorf("after odd writes %#x", got)
	}
	if got := msixRead(m, 33, 4); got != 0xffffffff {
		t.Errorf("unaligned read %#x, want all ones", got)
	}
	// Reset masks what was unmasked.
	r.log = nil
	m.Reset()
	if m.Enabled() || !slices.Equal(r.log, []string{"route 1 0x0/0x0 masked=true"}) {
		t.Errorf("after Reset: enabled %v routes %q", m.Enabled(), r.log)
	}
}

func TestMSIXRouterErrors(t *testing.T) {
	r := newRouter()
	var got []error
	m, err := pci.NewMSIX(pci.MSIXConfig{Vectors: 1, BAR: 0, PBAOffset: 16}, r, func(err error) { got = append(got, err) })
	if err != nil {
		t.Fatal(err)
	}
	r.fail = errors.New("no GSI left")
	m.WriteCap(2, []byte{0, 0x80})
	msixWrite32(m, 12, 0)
	m.Trigger(0)
	if len(got) != 2 || !errors.Is(got[0], r.fail) || !errors.Is(got[1], r.fail) {
		t.Errorf("errors %v, want a route and a signal error", got)
	}
}

func TestMSIXConfigRefused(t *testing.T) {
	for _, c := range []pci.MSIXConfig{
		{Vectors: 0},
		{Vectors: 2049},
		{Vectors: 1, BAR: 6},
		{Vectors: 1, TableOffset: 4, PBAOffset: 64},
		{Vectors: 4, TableOffset: 0, PBAOffset: 32},
		{Vectors: 1, TableOffset: 0xfffffff8, PBAOffset: 0},
	} {
		if _, err := pci.NewMSIX(c, newRouter(), nil); err == nil {
			t.Errorf("NewMSIX(%+v) = nil error", c)
		}
	}
	if _, err := pci.NewMSIX(pci.MSIXConfig{Vectors: 1, PBAOffset: 16}, nil, nil); err == nil {
		t.Error("NewMSIX without a router = nil error")
	}
}

type line struct{ levels []bool }

func (l *line) Set(v bool) { l.levels = append(l.levels, v) }

func TestINTx(t *testing.T) {
	l := &line{}
	p, f, d := newMSIXFn(t, 1, newRouter())
	f.x = pci.NewINTx(l)
	if v := read32(p, d, pci.OffIntLine); v>>8&0xff != 1 {
		t.Errorf("interrupt pin %#x, want INTA", v>>8&0xff)
	}
	f.x.Set(true)
	f.x.Set(true)
	if st := read32(p, d, pci.OffCommand) >> 16; st&pci.StatusInterrupt == 0 {
		t.Errorf("status %#x without the interrupt bit", st)
	}
	write32(p, d, pci.OffCommand, pci.CommandIntxOff)
	if st := read32(p, d, pci.OffCommand) >> 16; st&pci.StatusInterrupt == 0 {
		t.Errorf("interrupt status hidden by the disable bit")
	}
	write32(p, d, pci.OffCommand, 0)
	f.x.Set(false)
	if !slices.Equal(l.levels, []bool{true, false, true, false}) {
		t.Errorf("line levels %v", l.levels)
	}
}

func TestAllocator(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 4 * memmap.GiB, RAMAlign: memmap.PageSize, WindowSize: 64 * memmap.MiB})
	if err != nil {
		t.Fatal(err)
	}
	a := pci.NewAllocator(l)
	bars, err := a.Place([pci.NumBARs]pci.BAR{
		0: {Size: 0x1000},
		1: {Size: 0x100},
		2: {Size: 1 << 20, Is64: true, Prefetchable: true},
		4: {Size: 0x4000, Is64: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range bars {
		if b.Size == 0 {
			continue
		}
		win := l.PCI32
		if b.Is64 {
			win = l.PCI64
		}
		r := memmap.Range{Start: b.Addr, Size: b.Size}
		if b.Addr%b.Size != 0 || !win.Contains(r) || r.Overlaps(l.Window) {
			t.Errorf("BAR%d at %v: not aligned, outside %v or over the window %v", i, r, win, l.Window)
		}
		for j, o := range bars[:i] {
			if o.Size != 0 && r.Overlaps(memmap.Range{Start: o.Addr, Size: o.Size}) {
				t.Errorf("BAR%d %v overlaps BAR%d", i, r, j)
			}
		}
	}
	// A second function's BARs go elsewhere; a window runs out.
	b2, err := a.Place([pci.NumBARs]pci.BAR{0: {Size: 0x1000}})
	if err != nil || b2[0].Addr == bars[0].Addr {
		t.Errorf("second Place = %#x, %v", b2[0].Addr, err)
	}
	if _, err := a.Alloc(1<<30, false); err == nil {
		t.Error("a 1 GiB 32-bit BAR fits in what is left of pci32")
	}
	if _, err := a.Alloc(3, false); err == nil {
		t.Error("Alloc of a size that is no power of two")
	}
	if _, err := a.Place([pci.NumBARs]pci.BAR{5: {Size: 0x1000, Is64: true}}); err == nil {
		t.Error("Place of a 64-bit BAR in slot 5")
	}
}
