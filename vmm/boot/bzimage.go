package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// Setup header fields (Documentation/arch/x86/boot.rst), as offsets into
// both the bzImage and the zero page (struct boot_params).
const (
	zpE820Entries   = 0x1e8
	hdrSetupSects   = 0x1f1
	hdrStart        = 0x1f1
	hdrJumpEnd      = 0x201 // the byte here + 0x202 is the header's end
	hdrTypeOfLoader = 0x210
	hdrLoadFlags    = 0x211
	hdrRamdiskImage = 0x218
	hdrRamdiskSize  = 0x21c
	hdrHeapEndPtr   = 0x224
	hdrCmdLinePtr   = 0x228
	hdrInitrdMax    = 0x22c
	hdrKernelAlign  = 0x230
	hdrRelocatable  = 0x234
	hdrCmdlineSize  = 0x238
	hdrPrefAddress  = 0x258
	hdrInitSize     = 0x260
	zpExtRamdiskImg = 0x0c0
	zpExtRamdiskSz  = 0x0c4
	zpExtCmdLinePtr = 0x0c8
	zpE820Table     = 0x2d0
	zpSize          = 0x1000

	maxE820    = 128
	loadedHigh = 1 << 0 // loadflags: protected-mode code at 0x100000
	canUseHeap = 1 << 7
	loaderID   = 0xff // "undefined" boot loader
	entry64    = 0x200
)

// LoadBzImage loads a bzImage for the 64-bit boot protocol into mem, laid
// out by l: the protected-mode kernel at its load address (2 MiB-aligned
// for a relocatable kernel, its preferred address otherwise), the initrd as
// high as it may go in low RAM, the command line, the zero page with the
// e820 table, the page tables and GDT. The image is parsed and checked by
// ParseImage, as validation does; one that is not a bzImage, or that does
// not fit l, is refused before anything is written.
func LoadBzImage(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	img, err := ParseImageBytes(image)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrKernel, err)
	}
	if img.Format != FormatBzImage {
		return Entry{}, fmt.Errorf("%w: not a bzImage but an %s image", ErrKernel, img.Format)
	}
	return img.loadBzImage(mem, l, image, cmdline, initrd)
}

func (img *Image) loadBzImage(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	le := binary.LittleEndian
	pl, hdrEnd := img.Placement, img.hdrEnd
	initrdAddr, err := img.plan(l, cmdline, initrd)
	if err != nil {
		return Entry{}, err
	}
	k := pl.Kernel[0]
	if err := mem.Write(k.Start, image[img.pmOff:]); err != nil {
		return Entry{}, fmt.Errorf("load kernel at %#x: %w", k.Start, err)
	}
	if _, err := mem.Slice(k.Start, k.Size); err != nil {
		return Entry{}, fmt.Errorf("kernel needs %s from %#x: %w", memmap.FormatSize(k.Size), k.Start, err)
	}

	// The zero page starts as a copy of the image's setup header.
	zp := make([]byte, zpSize)
	copy(zp[hdrStart:hdrEnd], image[hdrStart:hdrEnd])
	zp[hdrTypeOfLoader] = loaderID
	zp[hdrLoadFlags] |= loadedHigh | canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], 0xfe00)

	if err := writeCmdline(mem, cmdline, img.CmdlineMax); err != nil {
		return Entry{}, err
	}
	le.PutUint32(zp[hdrCmdLinePtr:], memmap.CmdlineAddr)

	if len(initrd) > 0 {
		if err := mem.Write(initrdAddr, initrd); err != nil {
			return Entry{}, fmt.Errorf("load initrd at %#x: %w", initrdAddr, err)
		}
		le.PutUint32(zp[hdrRamdiskImage:], uint32(initrdAddr))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(len(initrd)))
		zp[zpExtRamdiskImg] = byte(initrdAddr >> 32)
		le.PutUint32(zp[zpExtRamdiskSz:], uint32(uint64(len(initrd))>>32))
	}

	if len(l.E820) > maxE820 {
		return Entry{}, fmt.Errorf("%d e820 entries, the zero page holds %d", len(l.E820), maxE820)
	}
	zp[zpE820Entries] = byte(len(l.E820))
	for i, e := range l.E820 {
		off := zpE820Table + i*20
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], uint32(e.Type))
	}
	if err := mem.Write(memmap.ZeroPageAddr, zp); err != nil {
		return Entry{}, fmt.Errorf("write zero page: %w", err)
	}
	if err := writePageTables(mem); err != nil {
		return Entry{}, err
	}
	base, limitGDT, err := writeGDT(mem, gdt64)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Mode: Long64, RIP: pl.Entry, RSI: memmap.ZeroPageAddr, RSP: memmap.BootStackTop,
		CR3: memmap.PML4Addr, GDTBase: base, GDTLimit: limitGDT}, nil
}
