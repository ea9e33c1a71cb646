// Package memmap computes the guest-physical memory layout of one popvmm kernel:
// where its RAM lies around the 32-bit MMIO hole, where the PCI windows, the
// shared inter-kernel window BAR and passthrough regions sit, where the boot
// structures go, and the e820 table the kernel receives. It is pure arithmetic
// with no I/O, so every property of the map can be tested anywhere.
//
// docs/memory-layout.md draws the map.
package memmap

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// Units and fixed addresses of the x86-64 guest map.
const (
	KiB = uint64(1) << 10
	MiB = uint64(1) << 20
	GiB = uint64(1) << 30
	TiB = uint64(1) << 40

	PageSize = 4 * KiB

	// HoleStart..HoleEnd is the 32-bit MMIO hole: no RAM there.
	HoleStart = 3 * GiB
	HoleEnd   = 4 * GiB
	// PCI32 is the window for 32-bit device BARs, the low part of the hole.
	PCI32Start = HoleStart
	PCI32End   = 0xFEC0_0000
	// ArchStart..HoleEnd holds the IOAPIC, LAPIC and the BIOS flash area;
	// it is reported reserved in e820.
	ArchStart  = PCI32End
	IOAPICBase = 0xFEC0_0000
	LAPICBase  = 0xFEE0_0000

	// HighRAMStart is where RAM beyond HoleStart continues.
	HighRAMStart = HoleEnd

	// MaxGPA bounds every guest-physical address popvmm hands out; it keeps
	// the map inside the 40 physical address bits every x86-64 host offers.
	MaxGPA = 1 * TiB

	// MinRAM is the smallest RAM a kernel may have: the boot structures
	// below 1 MiB plus room for a kernel loaded at 1 MiB.
	MinRAM = 2 * MiB

	// pci64Align aligns the 64-bit PCI window.
	pci64Align = 1 * GiB
)

// Boot structure addresses in low RAM. They are fixed so that a boot log, a
// crash dump or a test can name them.
const (
	BIOSDataEnd   = 0x500     // real-mode IVT and BIOS data area end
	GDTAddr       = 0x500     // boot GDT, 4 entries
	IDTAddr       = 0x520     // empty boot IDT
	PVHInfoAddr   = 0x6000    // PVH hvm_start_info
	PVHMemmapAddr = 0x6100    // PVH memory map entries (up to 0xF00 bytes)
	ZeroPageAddr  = 0x7000    // Linux boot_params ("zero page")
	BootStackTop  = 0x8ff0    // initial stack pointer
	PML4Addr      = 0x9000    // identity page tables: PML4
	PDPTAddr      = 0xa000    //   PDPT
	PDAddr        = 0xb000    //   4 page directories mapping 0..4 GiB with 2 MiB pages
	PDEnd         = 0xf000    //   end of the page directories
	CmdlineAddr   = 0x20000   // kernel command line
	CmdlineMax    = 0x10000   // bytes reserved for it (the kernel's own limit is lower)
	EBDAStart     = 0x9fc00   // extended BIOS data area: MP table lives here
	MPTableAddr   = EBDAStart // MP floating pointer + configuration table
	LowRAMEnd     = 0xa0000   // end of conventional memory
	BIOSROMStart  = 0xf0000   // reserved BIOS area
	KernelAddr    = 0x100000  // 1 MiB: protected-mode kernel load address
	ConvMemLimit  = 0x100000  // end of the first megabyte
)

// Kind says what a region of the map is.
type Kind int

// Region kinds.
const (
	KindRAM Kind = iota
	KindReserved
	KindPCI32
	KindArch
	KindPCI64
	KindWindow
	KindPassthrough
)

func (k Kind) String() string {
	switch k {
	case KindRAM:
		return "ram"
	case KindReserved:
		return "reserved"
	case KindPCI32:
		return "pci32"
	case KindArch:
		return "ioapic/lapic"
	case KindPCI64:
		return "pci64"
	case KindWindow:
		return "window"
	case KindPassthrough:
		return "passthrough"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// End returns base+size, one past the last byte of [base, base+size), and
// false when that sum does not fit in 64 bits. Every check of an address or
// offset plus a length that came from outside (a config, a kernel image, a
// guest) goes through End, so that a value near 2^64 cannot wrap around and
// pass a bounds check.
func End(base, size uint64) (uint64, bool) {
	end, carry := bits.Add64(base, size, 0)
	return end, carry == 0
}

// Range is a half-open guest-physical interval [Start, Start+Size).
type Range struct {
	Start, Size uint64
}

// End is one past the last byte. It wraps for a range that does not fit
// below 2^64; Valid says whether it does.
func (r Range) End() uint64 { return r.Start + r.Size }

// Valid reports whether the range fits below 2^64, i.e. End does not wrap.
func (r Range) Valid() bool {
	_, ok := End(r.Start, r.Size)
	return ok
}

// Overlaps reports whether r and o share a byte. It is exact even for
// ranges that do not fit below 2^64.
func (r Range) Overlaps(o Range) bool {
	if r.Size == 0 || o.Size == 0 {
		return false
	}
	if r.Start <= o.Start {
		return o.Start-r.Start < r.Size
	}
	return r.Start-o.Start < o.Size
}

// Contains reports whether o lies entirely within r. It is exact even for
// ranges that do not fit below 2^64.
func (r Range) Contains(o Range) bool {
	if o.Start < r.Start {
		return false
	}
	off := o.Start - r.Start
	return off <= r.Size && o.Size <= r.Size-off
}

func (r Range) String() string {
	if r.Size == 0 {
		return fmt.Sprintf("%#x (empty)", r.Start)
	}
	if !r.Valid() {
		return fmt.Sprintf("%#012x+%#x (past 2^64)", r.Start, r.Size)
	}
	return fmt.Sprintf("%#012x-%#012x", r.Start, r.End()-1)
}

// Region is a named range of the map.
type Region struct {
	Kind Kind
	Name string
	Range
}

// PassthroughSpec asks for a host region at a fixed guest address.
type PassthroughSpec struct {
	Name string
	GPA  uint64
	Size uint64
}

// Spec is what a layout is computed from.
type Spec struct {
	// RAM is the guest memory size in bytes, a multiple of RAMAlign.
	RAM uint64
	// RAMAlign is the backing page size (4 KiB, 2 MiB or 1 GiB); each RAM
	// slot starts and ends on it.
	RAMAlign uint64
	// WindowSize is the shared window BAR size, a power of two (0: none).
	WindowSize uint64
	// Passthrough regions, at guest addresses the user chose.
	Passthrough []PassthroughSpec
}

// Layout is one kernel's guest-physical map.
type Layout struct {
	// RAM are the memory slots backing guest RAM, in address order: below
	// the hole, then (if RAM is larger than HoleStart) from 4 GiB up.
	RAM []Range
	// PCI32 and PCI64 are the windows device BARs are placed in.
	PCI32, PCI64 Range
	// Window is the shared window BAR, at the start of PCI64.
	Window Range
	// Passthrough regions in the order given.
	Passthrough []Region
	// E820 is the table the kernel receives, sorted and non-overlapping.
	E820 []E820Entry
}

// Errors reported by New. They wrap the offending region so callers can
// name the config field.
var (
	ErrRAMSize = errors.New("invalid RAM size")
	ErrAlign   = errors.New("not aligned")
	ErrOverlap = errors.New("overlaps")
	ErrTooHigh = errors.New("beyond the guest physical address limit")
	ErrWindow  = errors.New("invalid window size")
	ErrEmpty   = errors.New("empty region")
	ErrNotRAM  = errors.New("not in the kernel's RAM below the PCI hole")
)

// PassthroughError names which passthrough region is at fault.
type PassthroughError struct {
	Index int
	Err   error
}

func (e *PassthroughError) Error() string { return e.Err.Error() }
func (e *PassthroughError) Unwrap() error { return e.Err }

// New computes the layout for spec. Every problem is reported, joined.
func New(spec Spec) (*Layout, error) {
	if err := checkRAM(spec.RAM, spec.RAMAlign); err != nil {
		return nil, err
	}
	if spec.WindowSize != 0 && (spec.WindowSize&(spec.WindowSize-1) != 0 || spec.WindowSize < PageSize) {
		return nil, fmt.Errorf("%w: %d bytes is not a power of two of at least 4 KiB", ErrWindow, spec.WindowSize)
	}
	if spec.WindowSize > MaxGPA/2 {
		return nil, fmt.Errorf("%w: %s cannot fit %w (%s)", ErrWindow, FormatSize(spec.WindowSize), ErrTooHigh, FormatSize(MaxGPA))
	}
	l := &Layout{
		PCI32: Range{PCI32Start, PCI32End - PCI32Start},
	}
	low := min(spec.RAM, HoleStart)
	l.RAM = append(l.RAM, Range{0, low})
	if spec.RAM > HoleStart {
		l.RAM = append(l.RAM, Range{HighRAMStart, spec.RAM - HoleStart})
	}
	top := max(HighRAMStart, l.RAM[len(l.RAM)-1].End())

	fixed := l.fixedRegions()
	var errs []error
	for i, p := range spec.Passthrough {
		r := Region{Kind: KindPassthrough, Name: p.Name, Range: Range{p.GPA, p.Size}}
		if err := checkPassthrough(r, fixed, l.Passthrough); err != nil {
			errs = append(errs, &PassthroughError{Index: i, Err: err})
		}
		l.Passthrough = append(l.Passthrough, r)
		if end, ok := End(r.Start, r.Size); ok && end > top && end <= MaxGPA {
			top = end
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	win := max(spec.WindowSize, PageSize)
	start := alignUp(alignUp(top, pci64Align), win)
	size := 2 * max(alignUp(win, pci64Align), pci64Align)
	l.PCI64 = Range{start, size}
	if spec.WindowSize != 0 {
		l.Window = Range{start, spec.WindowSize}
	}
	if end, ok := End(l.PCI64.Start, l.PCI64.Size); !ok || end > MaxGPA {
		return nil, fmt.Errorf("pci64 window %v: %w (%#x)", l.PCI64, ErrTooHigh, uint64(MaxGPA))
	}
	l.E820 = l.e820()
	return l, nil
}

func checkRAM(ram, align uint64) error {
	if align == 0 || align&(align-1) != 0 {
		return fmt.Errorf("%w: alignment %d is not a power of two", ErrRAMSize, align)
	}
	if ram < MinRAM {
		return fmt.Errorf("%w: %s is below the minimum of %s", ErrRAMSize, FormatSize(ram), FormatSize(MinRAM))
	}
	if ram%align != 0 {
		return fmt.Errorf("%w: %s is %w to %s", ErrRAMSize, FormatSize(ram), ErrAlign, FormatSize(align))
	}
	if end, ok := End(HighRAMStart, ram-min(ram, HoleStart)); ram > HoleStart && (!ok || end > MaxGPA) {
		return fmt.Errorf("%w: %s of RAM ends %w (%s)", ErrRAMSize, FormatSize(ram), ErrTooHigh, FormatSize(MaxGPA))
	}
	return nil
}

// fixedRegions are the parts of the map a passthrough region may not touch.
func (l *Layout) fixedRegions() []Region {
	rs := []Region{}
	for _, r := range l.RAM {
		rs = append(rs, Region{Kind: KindRAM, Name: "ram", Range: r})
	}
	rs = append(rs, Region{Kind: KindPCI32, Name: "mmio hole", Range: Range{HoleStart, HoleEnd - HoleStart}})
	return rs
}

func checkPassthrough(r Region, fixed, earlier []Region) error {
	if r.Size == 0 {
		return fmt.Errorf("passthrough at %#x: %w", r.Start, ErrEmpty)
	}
	if r.Start%PageSize != 0 || r.Size%PageSize != 0 {
		return fmt.Errorf("passthrough %v: %w to 4 KiB", r.Range, ErrAlign)
	}
	if end, ok := End(r.Start, r.Size); !ok || end > MaxGPA {
		return fmt.Errorf("passthrough at %#x size %s: %w (%s)", r.Start, FormatSize(r.Size), ErrTooHigh, FormatSize(MaxGPA))
	}
	for _, f := range fixed {
		if r.Overlaps(f.Range) {
			return fmt.Errorf("passthrough %v %w %s %v", r.Range, ErrOverlap, f.Name, f.Range)
		}
	}
	for j, e := range earlier {
		if r.Overlaps(e.Range) {
			return fmt.Errorf("passthrough %v %w passthrough[%d] %v", r.Range, ErrOverlap, j, e.Range)
		}
	}
	return nil
}

// Regions lists every top-level region of the map in address order.
func (l *Layout) Regions() []Region {
	var rs []Region
	for _, r := range l.RAM {
		rs = append(rs, Region{Kind: KindRAM, Name: "ram", Range: r})
	}
	rs = append(rs,
		Region{Kind: KindPCI32, Name: "pci32", Range: l.PCI32},
		Region{Kind: KindArch, Name: "ioapic/lapic", Range: Range{ArchStart, HoleEnd - ArchStart}},
	)
	rs = append(rs, l.Passthrough...)
	if l.Window.Size > 0 {
		rs = append(rs, Region{Kind: KindWindow, Name: "window bar", Range: l.Window})
		rest := Range{l.Window.End(), l.PCI64.End() - l.Window.End()}
		rs = append(rs, Region{Kind: KindPCI64, Name: "pci64", Range: rest})
	} else {
		rs = append(rs, Region{Kind: KindPCI64, Name: "pci64", Range: l.PCI64})
	}
	slices.SortStableFunc(rs, func(a, b Region) int { return cmp.Compare(a.Start, b.Start) })
	return rs
}

// BootRegions lists the boot structures inside low RAM.
func BootRegions() []Region {
	return []Region{
		{KindReserved, "gdt+idt", Range{GDTAddr, 0x30}},
		{KindReserved, "pvh start info", Range{PVHInfoAddr, PVHMemmapAddr - PVHInfoAddr}},
		{KindReserved, "pvh memmap", Range{PVHMemmapAddr, ZeroPageAddr - PVHMemmapAddr}},
		{KindReserved, "zero page", Range{ZeroPageAddr, 0x1000}},
		{KindReserved, "boot stack", Range{0x8000, 0x1000}},
		{KindReserved, "page tables", Range{PML4Addr, PDEnd - PML4Addr}},
		{KindReserved, "cmdline", Range{CmdlineAddr, CmdlineMax}},
		{KindReserved, "mp table", Range{MPTableAddr, LowRAMEnd - MPTableAddr}},
		{KindReserved, "kernel", Range{KernelAddr, 0}},
	}
}

// KernelArea is where a kernel may be loaded: from KernelAddr (the first
// megabyte holds the BIOS areas and every boot structure popvmm writes) to
// the end of the RAM below the PCI hole. The initrd goes at its top.
func (l *Layout) KernelArea() Range {
	return Range{KernelAddr, l.RAM[0].End() - KernelAddr}
}

// CheckKernel checks that r, a range a kernel image occupies once loaded
// (an ELF PT_LOAD segment, or a bzImage's load address and init_size), lies
// where popvmm puts nothing else: inside KernelArea, clear of every boot
// structure, of the first megabyte, of the PCI hole and of whatever lies
// beyond the kernel's RAM. The boot loaders and config validation both call
// it, so that they cannot disagree.
func (l *Layout) CheckKernel(r Range) error {
	if r.Size == 0 {
		return nil
	}
	if !r.Valid() {
		return fmt.Errorf("%v: %w", r, ErrTooHigh)
	}
	for _, b := range BootRegions() {
		if r.Overlaps(b.Range) {
			return fmt.Errorf("%v %w the %s %v; load the kernel at or above %#x", r, ErrOverlap, b.Name, b.Range, uint64(KernelAddr))
		}
	}
	if r.Start < KernelAddr {
		return fmt.Errorf("%v %w the first MiB (BIOS areas and boot structures); load the kernel at or above %#x",
			r, ErrOverlap, uint64(KernelAddr))
	}
	area := l.KernelArea()
	if area.Contains(r) {
		return nil
	}
	for _, o := range l.Regions() {
		if o.Kind != KindRAM && r.Overlaps(o.Range) {
			return fmt.Errorf("%v %w %s %v (%w %v)", r, ErrOverlap, o.Name, o.Range, ErrNotRAM, area)
		}
	}
	return fmt.Errorf("%v is %w %v", r, ErrNotRAM, area)
}

// InitrdAddr places an initrd of size bytes as high as possible in low RAM,
// page aligned, below limit (the kernel's initrd_addr_max+1; 0 means no
// limit) and above kernelEnd and the first megabyte.
func (l *Layout) InitrdAddr(size, kernelEnd, limit uint64) (uint64, error) {
	top := l.RAM[0].End()
	if limit != 0 && limit < top {
		top = limit
	}
	if size == 0 || size > top {
		return 0, fmt.Errorf("initrd of %s does not fit below %#x", FormatSize(size), top)
	}
	floor := max(kernelEnd, KernelAddr)
	// addr is page aligned, so addr >= floor means it is at or above floor
	// rounded up to a page, without rounding (and wrapping) floor.
	addr := alignDown(top-size, PageSize)
	if addr < floor {
		return 0, fmt.Errorf("initrd of %s does not fit between the kernel end %#x and %#x", FormatSize(size), floor, top)
	}
	return addr, nil
}

func alignUp(v, a uint64) uint64   { return (v + a - 1) &^ (a - 1) }
func alignDown(v, a uint64) uint64 { return v &^ (a - 1) }
