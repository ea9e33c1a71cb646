package memmap

import (
	"cmp"
	"fmt"
	"slices"
)

// E820Type is the type field of an e820 entry, as the Linux boot protocol
// defines it.
type E820Type uint32

// E820 types popvmm uses.
const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
)

func (t E820Type) String() string {
	switch t {
	case E820RAM:
		return "ram"
	case E820Reserved:
		return "reserved"
	}
	return fmt.Sprintf("type%d", uint32(t))
}

// E820Entry is one line of the e820 table (struct boot_e820_entry).
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

// Range returns the entry's interval.
func (e E820Entry) Range() Range { return Range{e.Addr, e.Size} }

// e820 builds the table: usable RAM with the EBDA and BIOS area carved out
// of the first megabyte, the arch area of the hole and passthrough regions
// reserved.
func (l *Layout) e820() []E820Entry {
	var t []E820Entry
	low := l.RAM[0]
	// The first megabyte: conventional memory up to the EBDA, the EBDA
	// (MP table), and the BIOS area. MinRAM guarantees low.End() > 1 MiB.
	t = append(t,
		E820Entry{0, EBDAStart, E820RAM},
		E820Entry{EBDAStart, LowRAMEnd - EBDAStart, E820Reserved},
		E820Entry{BIOSROMStart, ConvMemLimit - BIOSROMStart, E820Reserved},
		E820Entry{ConvMemLimit, low.End() - ConvMemLimit, E820RAM},
		E820Entry{ArchStart, HoleEnd - ArchStart, E820Reserved},
	)
	for _, r := range l.RAM[1:] {
		t = append(t, E820Entry{r.Start, r.Size, E820RAM})
	}
	for _, p := range l.Passthrough {
		t = append(t, E820Entry{p.Start, p.Size, E820Reserved})
	}
	slices.SortFunc(t, func(a, b E820Entry) int { return cmp.Compare(a.Addr, b.Addr) })
	return t
}

// RAMBytes sums the usable RAM the e820 table reports.
func RAMBytes(t []E820Entry) uint64 {
	var n uint64
	for _, e := range t {
		if e.Type == E820RAM {
			n += e.Size
		}
	}
	return n
}

// FormatSize prints a byte count in the largest binary unit that divides it
// exactly, e.g. "512 MiB", "639 KiB", "4097 B".
func FormatSize(n uint64) string {
	units := []struct {
		v    uint64
		name string
	}{{TiB, "TiB"}, {GiB, "GiB"}, {MiB, "MiB"}, {KiB, "KiB"}}
	for _, u := range units {
		if n >= u.v && n%u.v == 0 {
			return fmt.Sprintf("%d %s", n/u.v, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
