package pci_test

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/popvmm/popvmm/vmm/pci"
)

// resetFn is a function with MSI-X in BAR0, a 64-bit BAR2, an INTx pin
// on line 11, and a Reset that lowers its interrupt; it logs Reset and
// BARMoved calls in order.
type resetFn struct {
	pci.CapList
	m      *pci.MSIX
	x      *pci.INTx
	events []string
}

var (
	_ pci.Resetter     = (*resetFn)(nil)
	_ pci.MSIXFunction = (*resetFn)(nil)
)

func (f *resetFn) Header() pci.Header {
	return pci.Header{Vendor: 0x1af4, Device: 0x1110, Class: 0x050000, CapPtr: f.First(), IntPin: 1, IntLine: 11}
}
func (f *resetFn) BARs() [pci.NumBARs]pci.BAR {
	return [pci.NumBARs]pci.BAR{
		0: {Size: 0x1000, Addr: 0xc0000000},
		2: {Size: 16 << 20, Is64: true, Prefetchable: true, Addr: 0x100_0000_0000},
	}
}
func (f *resetFn) BARMoved(i int, addr uint64) error {
	f.events = append(f.events, fmt.Sprintf("moved %d %#x", i, addr))
	return nil
}
func (f *resetFn) INTx() *pci.INTx { return f.x }
func (f *resetFn) MSIX() *pci.MSIX { return f.m }
func (f *resetFn) Reset() {
	f.events = append(f.events, fmt.Sprintf("reset msix=%v", f.m.Enabled()))
	f.x.Set(false)
}

func TestBusReset(t *testing.T) {
	r := newRouter()
	m, err := pci.NewMSIX(pci.MSIXConfig{Vectors: 2, BAR: 0, TableOffset: 0, PBAOffset: 0x800}, r, func(err error) { t.Log(err) })
	if err != nil {
		t.Fatal(err)
	}
	irq := &line{}
	f := &resetFn{m: m, x: pci.NewINTx(irq)}
	if _, err := f.Add(m); err != nil {
		t.Fatal(err)
	}
	b := pci.NewBus()
	d, err := b.Add(f)
	if err != nil {
		t.Fatal(err)
	}
	p := b.ConfigPorts()
	initial := read32(p, d, pci.OffBAR0)

	// What a kernel leaves behind: decoding, bus mastering and INTx on,
	// BARs moved (BAR0 left half-way through sizing), another line,
	// MSI-X on with vector 0 unmasked, the pin asserted.
	write32(p, d, pci.OffCommand, pci.CommandMemory|pci.CommandMaster)
	write32(p, d, pci.OffBAR0, 0xd0000000)
	write32(p, d, pci.OffBAR0, 0xffffffff)
	write32(p, d, pci.OffBAR0+8, 0x0000000c)
	write32(p, d, pci.OffBAR0+12, 0x200)
	write32(p, d, pci.OffIntLine, 5)
	write32(p, d, 0x40, 0x8000<<16) // MSI-X enable
	m.Write(0, binary.LittleEndian.AppendUint64(nil, 0xfee00000))
	m.Write(8, binary.LittleEndian.AppendUint64(nil, 0x41)) // data 0x41, unmasked
	f.x.Set(true)
	if !m.Enabled() || r.routes[0].Masked || !irqUp(irq) {
		t.Fatalf("setup: MSI-X enabled %v, vector 0 %+v, INTx %v", m.Enabled(), r.routes[0], irqUp(irq))
	}
	f.events = nil

	b.Reset()

	a := make([]byte, 4)
	p.Read(0, a)
	if v := binary.LittleEndian.Uint32(a); v != 0 {
		t.Errorf("0xCF8 reads %#x after reset, want 0", v)
	}
	want := []string{"reset msix=false", "moved 0 0xc0000000", "moved 2 0x10000000000"}
	if !slices.Equal(f.events, want) {
		t.Errorf("Reset called %q, want %q", f.events, want)
	}
	if c := b.Command(d); c != 0 {
		t.Errorf("command %#x after reset, want 0", c)
	}
	if v := read32(p, d, pci.OffBAR0); v != initial {
		t.Errorf("BAR0 %#x after reset, want %#x (no size mask, initial address)", v, initial)
	}
	if lo, hi := read32(p, d, pci.OffBAR0+8), read32(p, d, pci.OffBAR0+12); lo != 0x0c || hi != 0x100 {
		t.Errorf("BAR2 %#x:%#x after reset, want 0x100:0x0000000c", hi, lo)
	}
	if got := b.BARs(d); got != f.BARs() {
		t.Errorf("BARs after reset %+v, want %+v", got, f.BARs())
	}
	if v := read32(p, d, pci.OffIntLine); v != 0x010b {
		t.Errorf("interrupt pin/line %#x, want 0x010b", v)
	}
	if v := read32(p, d, 0x40) >> 16; v != 1 { // table size 2, disabled, not masked
		t.Errorf("MSI-X message control %#x, want 1", v)
	}
	if !r.routes[0].Masked || m.Pending(0) {
		t.Errorf("vector 0 after reset: %+v, pending %v; want masked, not pending", r.routes[0], m.Pending(0))
	}
	var e [16]byte
	m.Read(0, e[:8])
	m.Read(8, e[8:])
	if want := [16]byte{12: 1}; e != want {
		t.Errorf("MSI-X entry 0 after reset % x, want % x", e, want)
	}
	if irqUp(irq) || read32(p, d, pci.OffCommand)>>16&pci.StatusInterrupt != 0 {
		t.Errorf("INTx still asserted after reset")
	}

	// Nothing moved since: a second reset only resets the function.
	f.events = nil
	b.Reset()
	if want := []string{"reset msix=false"}; !slices.Equal(f.events, want) {
		t.Errorf("second Reset called %q, want %q", f.events, want)
	}
}

// irqUp is the line's last level.
func irqUp(l *line) bool { return len(l.levels) > 0 && l.levels[len(l.levels)-1] }

// space is a fake MMIO bus for BAR0s of one size: who sits at each
// address; a move onto another function's address is refused.
type space map[uint64]*placedFn

// placedFn is a function with one 4 KiB BAR0 at first, on a space.
type placedFn struct {
	first uint64
	at    uint64
	sp    space
}

func (f *placedFn) Header() pci.Header {
	return pci.Header{Vendor: 0x1af4, Device: 0x1110, Class: 0x050000}
}
func (f *placedFn) BARs() [pci.NumBARs]pci.BAR {
	return [pci.NumBARs]pci.BAR{0: {Size: 0x1000, Addr: f.first}}
}
func (f *placedFn) ConfigRead(int, []byte)  {}
func (f *placedFn) ConfigWrite(int, []byte) {}
func (f *placedFn) BARMoved(i int, addr uint64) error {
	if o := f.sp[addr]; o != nil && o != f {
		return fmt.Errorf("%#x is taken", addr)
	}
	delete(f.sp, f.at)
	f.sp[addr], f.at = f, addr
	return nil
}

// TestBusResetChainedMoves: a guest moves A to free space, B onto A's
// first address, C onto B's, and so on (each move legal when made), then
// reboots. Every function's move back is refused until the one after it
// in the chain has moved, so one extra pass after the first left all but
// the last two where the guest put them; Reset must bring each BAR back to
// where Add found it, whatever the chain's length.
func TestBusResetChainedMoves(t *testing.T) {
	for _, n := range []int{2, 3, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			sp := space{}
			b := pci.NewBus()
			p := b.ConfigPorts()
			var fns []*placedFn
			var devs []int
			for i := range n {
				f := &placedFn{first: 0xc000_0000 + uint64(i)*0x1000, sp: sp}
				f.at = f.first
				sp[f.first] = f
				d, err := b.Add(f)
				if err != nil {
					t.Fatal(err)
				}
				fns, devs = append(fns, f), append(devs, d)
			}
			write32(p, devs[0], pci.OffBAR0, 0xd000_0000)
			for i := 1; i < n; i++ {
				write32(p, devs[i], pci.OffBAR0, uint32(fns[i-1].first))
			}
			for i, f := range fns {
				if want := fns[max(i-1, 0)].first; i > 0 && f.at != want {
					t.Fatalf("setup: function %d at %#x, want %#x", i, f.at, want)
				}
			}
			b.Reset()
			for i, f := range fns {
				if f.at != f.first {
					t.Errorf("after reset: function %d of a chain of %d mapped at %#x, want %#x where Add found it", i, n, f.at, f.first)
				}
				if v := read32(p, devs[i], pci.OffBAR0) &^ 0xf; uint64(v) != f.first {
					t.Errorf("after reset: function %d's BAR0 reads %#x, want %#x", i, v, f.first)
				}
			}
		})
	}
}
