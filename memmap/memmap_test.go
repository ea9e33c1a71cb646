package memmap_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/memmap"
)

const (
	KiB = memmap.KiB
	MiB = memmap.MiB
	GiB = memmap.GiB
)

func TestNewTable(t *testing.T) {
	tests := []struct {
		name       string
		spec       memmap.Spec
		wantRAM    []memmap.Range
		wantWindow memmap.Range
		wantPCI64  uint64 // start
	}{
		{
			name:       "small",
			spec:       memmap.Spec{RAM: 512 * MiB, RAMAlign: 4 * KiB, WindowSize: 16 * MiB},
			wantRAM:    []memmap.Range{{0, 512 * MiB}},
			wantWindow: memmap.Range{4 * GiB, 16 * MiB},
			wantPCI64:  4 * GiB,
		},
		{
			name:       "exactly the hole start",
			spec:       memmap.Spec{RAM: 3 * GiB, RAMAlign: 1 * GiB, WindowSize: 1 * MiB},
			wantRAM:    []memmap.Range{{0, 3 * GiB}},
			wantWindow: memmap.Range{4 * GiB, 1 * MiB},
			wantPCI64:  4 * GiB,
		},
		{
			name:       "split around the hole",
			spec:       memmap.Spec{RAM: 6 * GiB, RAMAlign: 2 * MiB, WindowSize: 64 * MiB},
			wantRAM:    []memmap.Range{{0, 3 * GiB}, {4 * GiB, 3 * GiB}},
			wantWindow: memmap.Range{7 * GiB, 64 * MiB},
			wantPCI64:  7 * GiB,
		},
		{
			name:       "window aligned to its size",
			spec:       memmap.Spec{RAM: 5 * GiB, RAMAlign: 4 * KiB, WindowSize: 4 * GiB},
			wantRAM:    []memmap.Range{{0, 3 * GiB}, {4 * GiB, 2 * GiB}},
			wantWindow: memmap.Range{8 * GiB, 4 * GiB},
			wantPCI64:  8 * GiB,
		},
		{
			name: "passthrough above RAM pushes pci64 up",
			spec: memmap.Spec{RAM: 1 * GiB, RAMAlign: 4 * KiB, WindowSize: 1 * MiB,
				Passthrough: []memmap.PassthroughSpec{{Name: "fb", GPA: 0x1_0000_0000, Size: 16 * MiB}}},
			wantRAM:    []memmap.Range{{0, 1 * GiB}},
			wantWindow: memmap.Range{5 * GiB, 1 * MiB},
			wantPCI64:  5 * GiB,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := memmap.New(tt.spec)
			if err != nil {
				t.Fatalf("New(%+v) = %v", tt.spec, err)
			}
			if len(l.RAM) != len(tt.wantRAM) {
				t.Fatalf("RAM = %v, want %v", l.RAM, tt.wantRAM)
			}
			for i := range l.RAM {
				if l.RAM[i] != tt.wantRAM[i] {
					t.Errorf("RAM[%d] = %v, want %v", i, l.RAM[i], tt.wantRAM[i])
				}
			}
			if l.Window != tt.wantWindow {
				t.Errorf("Window = %v, want %v", l.Window, tt.wantWindow)
			}
			if l.PCI64.Start != tt.wantPCI64 {
				t.Errorf("PCI64.Start = %#x, want %#x", l.PCI64.Start, tt.wantPCI64)
			}
			checkInvariants(t, tt.spec, l)
		})
	}
}

func TestE820Small(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 256 * MiB, RAMAlign: 4 * KiB, WindowSize: 1 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	want := []memmap.E820Entry{
		{0, 0x9fc00, memmap.E820RAM},
		{0x9fc00, 0x400, memmap.E820Reserved},
		{0xf0000, 0x10000, memmap.E820Reserved},
		{0x100000, 255 * MiB, memmap.E820RAM},
		{0xfec00000, 0x1400000, memmap.E820Reserved},
	}
	if len(l.E820) != len(want) {
		t.Fatalf("E820 = %+v, want %+v", l.E820, want)
	}
	for i := range want {
		if l.E820[i] != want[i] {
			t.Errorf("E820[%d] = %+v, want %+v", i, l.E820[i], want[i])
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name    string
		spec    memmap.Spec
		want    error
		wantIdx int // passthrough index, -1 when not a passthrough error
	}{
		{"zero RAM", memmap.Spec{RAM: 0, RAMAlign: 4 * KiB}, memmap.ErrRAMSize, -1},
		{"tiny RAM", memmap.Spec{RAM: 1 * MiB, RAMAlign: 4 * KiB}, memmap.ErrRAMSize, -1},
		{"unaligned RAM", memmap.Spec{RAM: 3 * MiB, RAMAlign: 2 * MiB}, memmap.ErrAlign, -1},
		{"RAM past limit", memmap.Spec{RAM: memmap.TiB, RAMAlign: 4 * KiB}, memmap.ErrTooHigh, -1},
		{"window not pow2", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB, WindowSize: 3 * MiB}, memmap.ErrWindow, -1},
		{"passthrough over RAM", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 32 * MiB, Size: 64 * MiB}}}, memmap.ErrOverlap, 0},
		{"passthrough in hole", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 8 * GiB, Size: 4 * KiB}, {GPA: 0xfee00000, Size: 4 * KiB}}}, memmap.ErrOverlap, 1},
		{"passthroughs overlap", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 8 * GiB, Size: 2 * MiB}, {GPA: 8*GiB + MiB, Size: 2 * MiB}}}, memmap.ErrOverlap, 1},
		{"passthrough unaligned", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 8*GiB + 1, Size: 4 * KiB}}}, memmap.ErrAlign, 0},
		{"passthrough wraps", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 0xffff_ffff_ffff_f000, Size: 8 * KiB}}}, memmap.ErrTooHigh, 0},
		{"passthrough ends at 2^64", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB,
			Passthrough: []memmap.PassthroughSpec{{GPA: 0xffff_ffff_ffff_f000, Size: 4 * KiB}}}, memmap.ErrTooHigh, 0},
		// RAM above the hole ends at 4 GiB + (RAM - 3 GiB): for RAM near
		// 2^64 that sum wraps and used to pass the limit check.
		{"RAM end wraps", memmap.Spec{RAM: 0xffff_ffff_ffff_f000, RAMAlign: 4 * KiB}, memmap.ErrTooHigh, -1},
		{"RAM end wraps 1G pages", memmap.Spec{RAM: 0xffff_ffff_c000_0000, RAMAlign: 1 * GiB}, memmap.ErrTooHigh, -1},
		{"window too large to place", memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB, WindowSize: 1 << 63}, memmap.ErrWindow, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := memmap.New(tt.spec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("New(%+v) = %v, want %v", tt.spec, err, tt.want)
			}
			var pe *memmap.PassthroughError
			if got := errors.As(err, &pe); got != (tt.wantIdx >= 0) || (got && pe.Index != tt.wantIdx) {
				t.Errorf("New(%+v) = %v, want passthrough index %d", tt.spec, err, tt.wantIdx)
			}
		})
	}
}

func TestInitrdAddr(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := l.InitrdAddr(10*MiB+1, 8*MiB, 0)
	if err != nil || addr != 64*MiB-10*MiB-4*KiB {
		t.Errorf("InitrdAddr = %#x, %v, want %#x", addr, err, 64*MiB-10*MiB-4*KiB)
	}
	addr, err = l.InitrdAddr(1*MiB, 8*MiB, 32*MiB)
	if err != nil || addr != 31*MiB {
		t.Errorf("InitrdAddr(limit 32M) = %#x, %v, want %#x", addr, err, 31*MiB)
	}
	if _, err := l.InitrdAddr(60*MiB, 8*MiB, 0); err == nil {
		t.Error("InitrdAddr(60M over an 8M kernel in 64M) succeeded, want error")
	}
	if _, err := l.InitrdAddr(0, 8*MiB, 0); err == nil {
		t.Error("InitrdAddr(0) succeeded, want error")
	}
}

func TestInitrdAddrBounds(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                   string
		size, kernelEnd, limit uint64
	}{
		// Rounding a kernel end near 2^64 up to a page used to wrap to 0
		// and put the initrd under the kernel.
		{"kernel end near 2^64", 4 * KiB, ^uint64(0) - 10, 0},
		{"kernel end at the RAM end", 4 * KiB, 64 * MiB, 0},
		// With no kernel end and a tiny initrd_addr_max the initrd used to
		// land over the boot structures in the first megabyte.
		{"limit inside the first MiB", 4 * KiB, 0, 0x10000},
		{"size near 2^64", ^uint64(0), 8 * MiB, 0},
	}
	for _, tt := range tests {
		if addr, err := l.InitrdAddr(tt.size, tt.kernelEnd, tt.limit); err == nil {
			t.Errorf("%s: InitrdAddr(%#x, %#x, %#x) = %#x, want an error", tt.name, tt.size, tt.kernelEnd, tt.limit, addr)
		}
	}
}

func TestEnd(t *testing.T) {
	const top = ^uint64(0)
	tests := []struct {
		base, size uint64
		want       uint64
		wantOK     bool
	}{
		{0, 0, 0, true},
		{0x1000, 0x2000, 0x3000, true},
		{top, 0, top, true},
		{top - 0xfff, 0xfff, top, true},
		{top - 0xfff, 0x1000, 0, false}, // ends exactly at 2^64
		{0xffff_ffff_ffff_f000, 0x2000, 0, false},
		{1 << 63, 1 << 63, 0, false},
		{top, top, 0, false},
	}
	for _, tt := range tests {
		got, ok := memmap.End(tt.base, tt.size)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("End(%#x, %#x) = %#x, %v, want %#x, %v", tt.base, tt.size, got, ok, tt.want, tt.wantOK)
		}
		if r := (memmap.Range{Start: tt.base, Size: tt.size}); r.Valid() != tt.wantOK {
			t.Errorf("Range%v.Valid() = %v, want %v", r, r.Valid(), tt.wantOK)
		}
	}
}

// TestRangeNoWrap: Overlaps and Contains are exact for ranges that run
// past 2^64; they used to compare wrapped ends.
func TestRangeNoWrap(t *testing.T) {
	high := memmap.Range{Start: 0xffff_ffff_ffff_f000, Size: 0x2000} // runs past 2^64
	low := memmap.Range{Start: 0, Size: 0x1000}
	ram := memmap.Range{Start: 0, Size: memmap.TiB}
	tests := []struct {
		a, b              memmap.Range
		overlaps, contain bool
	}{
		{high, low, false, false},
		{low, high, false, false},
		{high, memmap.Range{Start: 0xffff_ffff_ffff_f800, Size: 1}, true, true},
		{ram, memmap.Range{Start: memmap.GiB, Size: ^uint64(0)}, true, false},
		{ram, memmap.Range{Start: memmap.TiB - 1, Size: 1}, true, true},
		{ram, memmap.Range{Start: memmap.TiB, Size: 1}, false, false},
		{memmap.Range{Start: memmap.GiB, Size: ^uint64(0)}, ram, true, false},
	}
	for _, tt := range tests {
		if got := tt.a.Overlaps(tt.b); got != tt.overlaps {
			t.Errorf("%v.Overlaps(%v) = %v, want %v", tt.a, tt.b, got, tt.overlaps)
		}
		if got := tt.a.Contains(tt.b); got != tt.contain {
			t.Errorf("%v.Contains(%v) = %v, want %v", tt.a, tt.b, got, tt.contain)
		}
	}
}

func TestCheckKernel(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 64 * MiB, RAMAlign: 4 * KiB, WindowSize: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	big, err := memmap.New(memmap.Spec{RAM: 6 * GiB, RAMAlign: 2 * MiB, WindowSize: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		l    *memmap.Layout
		r    memmap.Range
		want error  // nil: accepted
		msg  string // in the error
	}{
		{"at 1 MiB", l, memmap.Range{Start: memmap.KernelAddr, Size: 8 * MiB}, nil, ""},
		{"at 16 MiB to the RAM end", l, memmap.Range{Start: 16 * MiB, Size: 48 * MiB}, nil, ""},
		{"empty", l, memmap.Range{Start: 0x5000, Size: 0}, nil, ""},
		{"over hvm_start_info", l, memmap.Range{Start: 0x5000, Size: 0x3000}, memmap.ErrOverlap, "pvh start info"},
		{"over the gdt", l, memmap.Range{Start: 0, Size: 0x1000}, memmap.ErrOverlap, "gdt+idt"},
		{"over the page tables", l, memmap.Range{Start: 0xa000, Size: 0x10}, memmap.ErrOverlap, "page tables"},
		{"over the command line", l, memmap.Range{Start: 0x1f000, Size: 0x2000}, memmap.ErrOverlap, "cmdline"},
		{"over the MP table", l, memmap.Range{Start: 0x9f000, Size: 0x1000}, memmap.ErrOverlap, "mp table"},
		{"BIOS area", l, memmap.Range{Start: 0xf0000, Size: 0x10000}, memmap.ErrOverlap, "first MiB"},
		{"crosses into 1 MiB", l, memmap.Range{Start: 0xff000, Size: 0x2000}, memmap.ErrOverlap, "first MiB"},
		{"past the RAM end", l, memmap.Range{Start: 60 * MiB, Size: 8 * MiB}, memmap.ErrNotRAM, ""},
		{"beyond RAM", l, memmap.Range{Start: 0x7f000000, Size: 0x1000}, memmap.ErrNotRAM, ""},
		{"in the PCI hole", l, memmap.Range{Start: memmap.HoleStart, Size: 0x1000}, memmap.ErrOverlap, "pci32"},
		{"in the IOAPIC", big, memmap.Range{Start: memmap.IOAPICBase, Size: 0x1000}, memmap.ErrOverlap, "ioapic"},
		{"across the hole", big, memmap.Range{Start: 3*GiB - MiB, Size: 2 * MiB}, memmap.ErrOverlap, "pci32"},
		{"in high RAM", big, memmap.Range{Start: 5 * GiB, Size: MiB}, memmap.ErrNotRAM, ""},
		{"in the window", l, memmap.Range{Start: l.Window.Start, Size: 0x1000}, memmap.ErrOverlap, "window"},
		{"wraps past 2^64", l, memmap.Range{Start: 0xffff_ffff_ffff_f000, Size: 0x2000}, memmap.ErrTooHigh, ""},
		{"wraps onto 1 MiB", l, memmap.Range{Start: 0xffff_ffff_fff0_0000, Size: 0x20_0000}, memmap.ErrTooHigh, ""},
	}
	for _, tt := range tests {
		err := tt.l.CheckKernel(tt.r)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: CheckKernel(%v) = %v, want nil", tt.name, tt.r, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) || !strings.Contains(fmt.Sprint(err), tt.msg) {
			t.Errorf("%s: CheckKernel(%v) = %v, want %v naming %q", tt.name, tt.r, err, tt.want, tt.msg)
		}
	}
}

// FuzzCheckKernel: whatever CheckKernel accepts lies in KernelArea, clear
// of every boot structure and every region of the map that is not RAM.
func FuzzCheckKernel(f *testing.F) {
	f.Add(uint64(0x5000), uint64(0x3000), uint64(64*MiB))
	f.Add(uint64(memmap.KernelAddr), uint64(8*MiB), uint64(64*MiB))
	f.Add(uint64(0xffff_ffff_fff0_0000), uint64(0x20_0000), uint64(6*GiB))
	f.Fuzz(func(t *testing.T, start, size, ram uint64) {
		l, err := memmap.New(memmap.Spec{RAM: ram, RAMAlign: 4 * KiB, WindowSize: 16 * MiB})
		if err != nil {
			return
		}
		r := memmap.Range{Start: start, Size: size}
		if l.CheckKernel(r) != nil || size == 0 {
			return
		}
		if !r.Valid() || !l.KernelArea().Contains(r) {
			t.Fatalf("CheckKernel accepted %v outside %v", r, l.KernelArea())
		}
		for _, b := range append(memmap.BootRegions(), l.Regions()...) {
			if b.Kind != memmap.KindRAM && r.Overlaps(b.Range) {
				t.Fatalf("CheckKernel accepted %v over %s %v", r, b.Name, b.Range)
			}
		}
	})
}

// TestProperties checks the map's invariants over many random specs.
func TestProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	aligns := []uint64{4 * KiB, 2 * MiB, 1 * GiB}
	ok := 0
	for range 5000 {
		spec := randomSpec(r, aligns)
		l, err := memmap.New(spec)
		if err != nil {
			continue
		}
		ok++
		checkInvariants(t, spec, l)
	}
	if ok < 1000 {
		t.Fatalf("only %d of 5000 random specs were valid; the generator is off", ok)
	}
}

func randomSpec(r *rand.Rand, aligns []uint64) memmap.Spec {
	align := aligns[r.IntN(len(aligns))]
	spec := memmap.Spec{
		RAM:      uint64(1+r.IntN(64)) * align,
		RAMAlign: align,
	}
	if align == 4*KiB {
		spec.RAM = uint64(r.IntN(1<<21)) * align // up to 8 GiB
	}
	if r.IntN(4) > 0 {
		spec.WindowSize = 1 << (20 + r.IntN(14))
	}
	for range r.IntN(4) {
		spec.Passthrough = append(spec.Passthrough, memmap.PassthroughSpec{
			GPA:  uint64(r.IntN(1<<16)) * 2 * MiB,
			Size: uint64(1+r.IntN(512)) * 4 * KiB,
		})
	}
	return spec
}

func checkInvariants(t *testing.T, spec memmap.Spec, l *memmap.Layout) {
	t.Helper()
	// All RAM covered, each slot aligned to the backing page size.
	var total uint64
	for _, r := range l.RAM {
		total += r.Size
		if r.Start%spec.RAMAlign != 0 || r.Size%spec.RAMAlign != 0 {
			t.Errorf("spec %+v: RAM slot %v not aligned to %#x", spec, r, spec.RAMAlign)
		}
		if r.Overlaps(memmap.Range{Start: memmap.HoleStart, Size: memmap.HoleEnd - memmap.HoleStart}) {
			t.Errorf("spec %+v: RAM slot %v in the MMIO hole", spec, r)
		}
	}
	if total != spec.RAM {
		t.Errorf("spec %+v: RAM slots sum to %#x, want %#x", spec, total, spec.RAM)
	}
	// Regions: sorted, disjoint, below the limit.
	rs := l.Regions()
	for i, a := range rs {
		if !a.Valid() || a.End() > memmap.MaxGPA {
			t.Errorf("spec %+v: region %s %v above MaxGPA", spec, a.Name, a.Range)
		}
		if i > 0 && rs[i-1].End() > a.Start {
			t.Errorf("spec %+v: region %s %v overlaps %s %v", spec, rs[i-1].Name, rs[i-1].Range, a.Name, a.Range)
		}
	}
	// Window: naturally aligned inside PCI64.
	if spec.WindowSize != 0 {
		if l.Window.Size != spec.WindowSize || l.Window.Start%spec.WindowSize != 0 || !l.PCI64.Contains(l.Window) {
			t.Errorf("spec %+v: window %v not aligned inside pci64 %v", spec, l.Window, l.PCI64)
		}
	}
	// e820: sorted, disjoint, RAM entries inside RAM slots, boot structures
	// never in usable RAM except the kernel load area.
	for i, e := range l.E820 {
		if i > 0 && l.E820[i-1].Range().End() > e.Addr {
			t.Errorf("spec %+v: e820 %d overlaps its predecessor", spec, i)
		}
		if e.Type != memmap.E820RAM {
			continue
		}
		in := false
		for _, r := range l.RAM {
			in = in || r.Contains(e.Range())
		}
		if !in {
			t.Errorf("spec %+v: e820 RAM %v outside RAM slots", spec, e.Range())
		}
		mp := memmap.Range{Start: memmap.MPTableAddr, Size: memmap.LowRAMEnd - memmap.MPTableAddr}
		if e.Range().Overlaps(mp) {
			t.Errorf("spec %+v: e820 RAM %v covers the MP table", spec, e.Range())
		}
	}
	if got, want := memmap.RAMBytes(l.E820), spec.RAM-(memmap.ConvMemLimit-memmap.EBDAStart); got != want {
		t.Errorf("spec %+v: e820 usable RAM = %#x, want %#x", spec, got, want)
	}
	for _, p := range l.Passthrough {
		found := false
		for _, e := range l.E820 {
			found = found || (e.Range() == p.Range && e.Type == memmap.E820Reserved)
		}
		if !found {
			t.Errorf("spec %+v: passthrough %v not reserved in e820", spec, p.Range)
		}
	}
}

func TestBootRegionsDisjoint(t *testing.T) {
	rs := memmap.BootRegions()
	for i, a := range rs {
		if a.End() > memmap.KernelAddr && a.Name != "kernel" {
			t.Errorf("boot region %s %v reaches the kernel at 1 MiB", a.Name, a.Range)
		}
		for _, b := range rs[i+1:] {
			if a.Overlaps(b.Range) {
				t.Errorf("boot region %s %v overlaps %s %v", a.Name, a.Range, b.Name, b.Range)
			}
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{{0, "0 B"}, {4097, "4097 B"}, {639 * KiB, "639 KiB"}, {512 * MiB, "512 MiB"}, {3 * GiB, "3 GiB"}, {memmap.TiB, "1 TiB"}}
	for _, tt := range tests {
		if got := memmap.FormatSize(tt.in); got != tt.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzNew(f *testing.F) {
	f.Add(uint64(512*MiB), uint64(4*KiB), uint64(16*MiB), uint64(8*GiB), uint64(2*MiB))
	f.Add(uint64(6*GiB), uint64(1*GiB), uint64(1*MiB), uint64(0), uint64(0))
	f.Add(uint64(3*GiB), uint64(2*MiB), uint64(4*GiB), uint64(0xfec00000), uint64(4*KiB))
	// Sums that wrap past 2^64: RAM above the hole, a passthrough end.
	f.Add(uint64(0xffff_ffff_ffff_f000), uint64(4*KiB), uint64(1*MiB), uint64(0), uint64(0))
	f.Add(uint64(64*MiB), uint64(4*KiB), uint64(1<<63), uint64(0xffff_ffff_ffff_f000), uint64(8*KiB))
	f.Fuzz(func(t *testing.T, ram, align, win, gpa, size uint64) {
		spec := memmap.Spec{RAM: ram, RAMAlign: align, WindowSize: win}
		if size != 0 {
			spec.Passthrough = []memmap.PassthroughSpec{{GPA: gpa, Size: size}}
		}
		l, err := memmap.New(spec)
		if err != nil {
			return
		}
		checkInvariants(t, spec, l)
	})
}

func BenchmarkNew(b *testing.B) {
	spec := memmap.Spec{RAM: 6 * GiB, RAMAlign: 2 * MiB, WindowSize: 16 * MiB,
		Passthrough: []memmap.PassthroughSpec{{GPA: 16 * GiB, Size: 2 * MiB}}}
	for b.Loop() {
		if _, err := memmap.New(spec); err != nil {
			b.Fatal(err)
		}
	}
}
