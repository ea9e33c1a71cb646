package boot

import (
	"debug/elf"
	"encoding/binary"
	"fmt"

	"github.com/popvmm/popvmm/internal/pvhnote"
	"github.com/popvmm/popvmm/memmap"
)

// Placement is where a kernel image goes in guest memory, read from its
// headers alone (ParseImage, through BzImagePlacement or PVHPlacement):
// what the loaders write and what config validation checks (package
// cluster's InspectKernel parses the files a config names with
// ParseImage, and calls Fits and InitrdAddr against the kernel's layout),
// so that `popvmm validate` refuses exactly what the loaders refuse.
type Placement struct {
	// Kernel are the guest-physical ranges the kernel occupies: for a
	// bzImage its load address and init_size (the kernel decompresses
	// there), for an ELF kernel every non-empty PT_LOAD segment (file
	// bytes and bss).
	Kernel []memmap.Range `json:"kernel"`
	// Entry is where the first vCPU starts: the bzImage 64-bit entry or
	// the PVH entry note's physical address.
	Entry uint64 `json:"entry"`
	// InitrdLimit is one past the highest byte the initrd may occupy (a
	// bzImage's initrd_addr_max+1); 0: no limit below the RAM's end.
	InitrdLimit uint64 `json:"initrd_limit,omitempty"`
}

// End is one past the kernel's highest byte.
func (p Placement) End() uint64 {
	var end uint64
	for _, r := range p.Kernel {
		end = max(end, r.End())
	}
	return end
}

// Fits checks every kernel range against layout l (memmap.CheckKernel):
// in the RAM below the PCI hole, above the first megabyte and every boot
// structure.
func (p Placement) Fits(l *memmap.Layout) error {
	for _, r := range p.Kernel {
		if err := l.CheckKernel(r); err != nil {
			return fmt.Errorf("kernel %w", err)
		}
	}
	return nil
}

// InitrdAddr is where an initrd of size bytes goes with this kernel in l:
// page aligned, as high as allowed in the RAM below the PCI hole, above
// the kernel.
func (p Placement) InitrdAddr(l *memmap.Layout, size uint64) (uint64, error) {
	return l.InitrdAddr(size, p.End(), p.InitrdLimit)
}

// Setup header fields BzImagePlacement reads (Documentation/arch/x86/boot.rst).
const (
	hdrBootFlag   = 0x1fe
	hdrMagic      = 0x202
	hdrVersion    = 0x206
	hdrXLoadFlags = 0x236
	// minHeader is how much of a bzImage BzImagePlacement needs.
	minHeader = hdrInitSize + 4

	minProtocol = 0x020c // 2.12: xloadflags, 64-bit entry
	xlfKernel64 = 1 << 0
)

// BzImagePlacement reads where LoadBzImage puts a bzImage: hdr is the start
// of the image (at least its setup header, 0x264 bytes) and imageLen the
// whole image's length. The protected-mode kernel goes at its preferred
// address, or for a relocatable kernel at KernelAddr rounded up to its
// kernel_alignment, and occupies max(init_size, its length) bytes there.
func BzImagePlacement(hdr []byte, imageLen uint64) (Placement, error) {
	le := binary.LittleEndian
	if len(hdr) < minHeader || string(hdr[hdrMagic:hdrMagic+4]) != "HdrS" {
		return Placement{}, refuse("no bzImage setup header")
	}
	if le.Uint16(hdr[hdrBootFlag:]) != 0xaa55 {
		return Placement{}, refuse("bzImage header without boot flag 0xAA55")
	}
	if v := le.Uint16(hdr[hdrVersion:]); v < minProtocol {
		return Placement{}, refuse("boot protocol %#x older than 2.12", v)
	}
	if le.Uint16(hdr[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return Placement{}, refuse("no 64-bit entry point (XLF_KERNEL_64 clear)")
	}
	setupSects := uint64(hdr[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	pmOff := (setupSects + 1) * 512
	if pmOff >= imageLen {
		return Placement{}, refuse("setup of %d sectors leaves no kernel", setupSects)
	}
	load := le.Uint64(hdr[hdrPrefAddress:])
	if hdr[hdrRelocatable] != 0 {
		align := uint64(le.Uint32(hdr[hdrKernelAlign:]))
		if align == 0 || align&(align-1) != 0 {
			return Placement{}, refuse("kernel_alignment %#x", align)
		}
		load = (memmap.KernelAddr + align - 1) &^ (align - 1)
	}
	size := max(uint64(le.Uint32(hdr[hdrInitSize:])), imageLen-pmOff)
	k := memmap.Range{Start: load, Size: size}
	if _, ok := memmap.End(load, size); !ok {
		return Placement{}, refuse("kernel of %s at %#x runs past 2^64", memmap.FormatSize(size), load)
	}
	if size <= entry64 {
		return Placement{}, refuse("kernel of %d bytes ends before its 64-bit entry at +%#x", size, entry64)
	}
	return Placement{
		Kernel:      []memmap.Range{k},
		Entry:       load + entry64,
		InitrdLimit: uint64(le.Uint32(hdr[hdrInitrdMax:])) + 1,
	}, nil
}

// PVHPlacement reads where LoadPVH puts an ELF kernel: each non-empty
// PT_LOAD segment at its physical address, which must not wrap or overlap
// another, and the PVH entry from the notes, which must lie in a segment.
func PVHPlacement(f *elf.File) (Placement, error) {
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return Placement{}, refuse("ELF %v %v, want ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	var p Placement
	found := false
	for _, prog := range f.Progs {
		switch prog.Type {
		case elf.PT_LOAD:
			if prog.Filesz > prog.Memsz {
				return Placement{}, refuse("segment at %#x: file size %#x above memory size %#x", prog.Paddr, prog.Filesz, prog.Memsz)
			}
			if prog.Memsz == 0 {
				continue
			}
			r := memmap.Range{Start: prog.Paddr, Size: prog.Memsz}
			if !r.Valid() {
				return Placement{}, refuse("segment at %#x of %#x bytes runs past 2^64", prog.Paddr, prog.Memsz)
			}
			for _, o := range p.Kernel {
				if r.Overlaps(o) {
					return Placement{}, refuse("segments %v and %v overlap", o, r)
				}
			}
			p.Kernel = append(p.Kernel, r)
		case elf.PT_NOTE:
			if prog.Filesz > 1<<20 || found {
				continue
			}
			data := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(data, 0); err != nil {
				return Placement{}, refuse("read ELF notes: %w", err)
			}
			if e, ok := pvhnote.Find(data, f.ByteOrder); ok {
				p.Entry, found = uint64(e), true
			}
		}
	}
	if !found || p.Entry == 0 {
		return Placement{}, refuse("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y")
	}
	if len(p.Kernel) == 0 {
		return Placement{}, refuse("no loadable (PT_LOAD) segment")
	}
	for _, r := range p.Kernel {
		if r.Contains(memmap.Range{Start: p.Entry, Size: 1}) {
			return p, nil
		}
	}
	return Placement{}, refuse("PVH entry %#x is not inside a loaded segment", p.Entry)
}
