package boot_test

import (
	"testing"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
)

// Linux's bzImage decompressor, entered at its 64-bit entry on the page
// tables popvmm built, switches to 5-level paging (LA57, which the lab's
// CPU and many hosts have) through a 32-bit trampoline that it copies into
// low memory after zeroing 8 KiB there (arch/x86/boot/compressed/
// pgtable_64.c in Linux 6.1: find_trampoline_placement and
// configure_5level_paging). Where it goes is read from what popvmm wrote:
// the BIOS data area's EBDA segment (0x40e) and base memory size (0x413),
// and the zero page's e820 table. These constants and trampolineAt mirror
// that code.
const (
	biosStartMin   = 0x20000
	biosStartMax   = 0x9f000
	trampolineSize = 2 * 4096
	e820RAM        = 1
)

// trampolineAt is find_trampoline_placement over guest memory: the
// trampoline's 8 KiB, just below the BIOS area, in the highest usable
// e820 entry under it.
func trampolineAt(t *testing.T, read func(gpa, n uint64) []byte) memmap.Range {
	t.Helper()
	zp := read(memmap.ZeroPageAddr, 4096)
	ebda := uint64(le.Uint16(read(0x40e, 2))) << 4
	bios := uint64(le.Uint16(read(0x413, 2))) << 10
	if bios < biosStartMin || bios > biosStartMax {
		bios = biosStartMax
	}
	if ebda > biosStartMin && ebda < bios {
		bios = ebda
	}
	bios &^= 4095
	n := int(zp[0x1e8])
	for i := n - 1; i >= 0; i-- {
		e := zp[0x2d0+20*i:]
		addr, size, typ := le.Uint64(e), le.Uint64(e[8:]), le.Uint32(e[16:])
		if bios <= addr || typ != e820RAM {
			continue
		}
		next := bios
		if bios > addr+size {
			next = addr + size
		}
		next &^= 4095
		if next-trampolineSize < addr {
			continue
		}
		if next-trampolineSize > bios {
			break
		}
		bios = next
		break
	}
	return memmap.Range{Start: bios - trampolineSize, Size: trampolineSize}
}

// TestDecompressorTrampolineMissesBootData: the 8 KiB the decompressor
// zeroes for its trampoline lie in usable RAM and miss every structure
// popvmm wrote that is still in use then (the page tables it runs on, the
// GDT, the zero page and command line it has not yet copied) or later (the
// MP table, read in setup_arch). Moving one of them under 640 KiB's top,
// or writing a BIOS data area that points the trampoline elsewhere, fails
// here first.
func TestDecompressorTrampolineMissesBootData(t *testing.T) {
	for _, ram := range []uint64{64 * memmap.MiB, 512 * memmap.MiB, 4 * memmap.GiB} {
		m, l := guest(t, ram)
		cmdline := "console=ttyS0 panic=-1"
		if _, err := boot.LoadBzImage(m, l, bzImage(false, 0x20000, []byte("kernel")), cmdline, []byte("initrd")); err != nil {
			t.Fatal(err)
		}
		if err := boot.WriteMPTable(m, 2); err != nil {
			t.Fatal(err)
		}
		tr := trampolineAt(t, func(gpa, n uint64) []byte { return read(t, m, gpa, n) })
		inRAM := false
		for _, e := range l.E820 {
			if e.Type == memmap.E820RAM && e.Range().Contains(tr) {
				inRAM = true
			}
		}
		if !inRAM {
			t.Errorf("%s RAM: trampoline at %v is not in usable e820 RAM %v", memmap.FormatSize(ram), tr, l.E820)
		}
		for _, d := range []struct {
			name string
			r    memmap.Range
		}{
			{"GDT and IDT", memmap.Range{Start: memmap.GDTAddr, Size: memmap.IDTAddr + 16 - memmap.GDTAddr}},
			{"zero page", memmap.Range{Start: memmap.ZeroPageAddr, Size: 4096}},
			{"boot stack", memmap.Range{Start: memmap.BootStackTop - 0x800, Size: 0x800}},
			{"page tables", memmap.Range{Start: memmap.PML4Addr, Size: memmap.PDEnd - memmap.PML4Addr}},
			{"command line", memmap.Range{Start: memmap.CmdlineAddr, Size: uint64(len(cmdline) + 1)}},
			{"MP table", memmap.Range{Start: memmap.MPTableAddr, Size: memmap.LowRAMEnd - memmap.MPTableAddr}},
		} {
			if tr.Overlaps(d.r) {
				t.Errorf("%s RAM: the decompressor's trampoline %v zeroes popvmm's %s %v", memmap.FormatSize(ram), tr, d.name, d.r)
			}
		}
	}
}
