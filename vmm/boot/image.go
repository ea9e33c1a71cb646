package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// Format is a kind of kernel image the loaders boot.
type Format string

// Kernel image formats.
const (
	FormatBzImage Format = "bzImage" // Linux/x86 boot protocol, 64-bit entry: LoadBzImage
	FormatPVH     Format = "elf-pvh" // ELF vmlinux with a PVH entry note: LoadPVH
)

// MinCmdline is the longest command line popvmm gives a kernel: the
// user's part of cluster.toml's cmdline (at most 1024 bytes) and popvmm's
// own parameters (console=, ip=, popvmm.name=, the nested-backend flags;
// well under 256 bytes). ParseImage refuses a bzImage that takes less
// (its cmdline_size; every Linux with boot protocol 2.12 takes 2047), so
// that an image validation accepts is never refused at boot for its
// command line.
const MinCmdline = 1280

// ErrNotKernel is the reason for a file that is neither kind of kernel.
var ErrNotKernel = errors.New("not a bzImage or ELF kernel")

// Image is a kernel image parsed and checked once, by ParseImage: what
// config validation reports (package cluster's InspectKernel) and what
// LoadBzImage and LoadPVH load come from this one parse, so that
// `popvmm validate` accepts exactly the images the loaders accept (for a
// layout the Placement fits, a command line of at most MinCmdline bytes
// and an initrd InitrdAddr places). Only guest-memory layout is left to
// check: Placement.Fits and Placement.InitrdAddr, which both sides call.
type Image struct {
	Format Format
	// Protocol is a bzImage's boot protocol version (0x020f is 2.15).
	Protocol uint16
	// PVHEntry is an ELF kernel's 32-bit PVH entry point.
	PVHEntry uint32
	// Placement is where the kernel goes in guest memory.
	Placement Placement
	// CmdlineMax is the longest command line the kernel takes (at least
	// MinCmdline).
	CmdlineMax int

	// bzImage: the setup header's end and the protected-mode kernel's
	// offset in the file.
	hdrEnd, pmOff int
	// ELF: the PT_LOAD segments the loader copies.
	segments []segment
}

// segment is one non-empty PT_LOAD: filesz bytes at off in the file go to
// paddr, followed by memsz-filesz bytes of zeros.
type segment struct {
	off, filesz, paddr, memsz uint64
}

// imageError is a reason an image is refused. It reads as the reason alone
// (validation prints it after the file's name) and is ErrKernel to
// errors.Is.
type imageError struct{ err error }

func (e *imageError) Error() string   { return e.err.Error() }
func (e *imageError) Unwrap() []error { return []error{ErrKernel, e.err} }

func refuse(format string, args ...any) error {
	return &imageError{fmt.Errorf(format, args...)}
}

// headLen is how much of an image ParseImage reads to tell the formats
// apart and to read a bzImage's setup header (it ends by 0x202+0x7f).
const headLen = 0x300

// ParseImage reads and checks the kernel image of size bytes that r holds:
// an ELF vmlinux (its magic first) with a PVH entry note, or a bzImage
// ("HdrS" setup header). Every check the loaders make of the image itself
// is made here, and only here.
func ParseImage(r io.ReaderAt, size int64) (*Image, error) {
	head := make([]byte, min(size, headLen))
	if n, err := r.ReadAt(head, 0); n < len(head) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read kernel image: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return parseELF(r, size)
	case len(head) >= hdrMagic+4 && string(head[hdrMagic:hdrMagic+4]) == "HdrS":
		return parseBzImage(head, uint64(size))
	}
	return nil, refuse("%w", ErrNotKernel)
}

// ParseImageBytes is ParseImage of an image in memory.
func ParseImageBytes(image []byte) (*Image, error) {
	return ParseImage(bytes.NewReader(image), int64(len(image)))
}

// hdrSyssize is the setup header's syssize: the protected-mode kernel's
// size in 16-byte units (Documentation/arch/x86/boot.rst).
const hdrSyssize = 0x1f4

func parseBzImage(h []byte, size uint64) (*Image, error) {
	le := binary.LittleEndian
	if len(h) < minHeader {
		return nil, refuse("%w: bzImage setup header cut short (%d bytes)", ErrNotKernel, len(h))
	}
	if le.Uint16(h[hdrBootFlag:]) != 0xaa55 {
		return nil, refuse("%w: bzImage header without boot flag 0xAA55", ErrNotKernel)
	}
	img := &Image{Format: FormatBzImage, Protocol: le.Uint16(h[hdrVersion:])}
	if img.Protocol < minProtocol {
		return nil, refuse("bzImage boot protocol %d.%02d is older than 2.12, which popvmm's 64-bit entry needs",
			img.Protocol>>8, img.Protocol&0xff)
	}
	if le.Uint16(h[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, refuse("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)")
	}
	// The setup header is copied into the zero page up to its end.
	img.hdrEnd = hdrMagic + int(h[hdrJumpEnd])
	if img.hdrEnd > hdrStart+0x80 || img.hdrEnd > len(h) {
		return nil, refuse("bzImage setup header ends at %#x, past the header (%#x)", img.hdrEnd, hdrStart+0x80)
	}
	cmdline := int(le.Uint32(h[hdrCmdlineSize:]))
	if cmdline < MinCmdline {
		return nil, refuse("bzImage takes a command line of %d bytes (cmdline_size), under the %d popvmm may give it", cmdline, MinCmdline)
	}
	img.CmdlineMax = min(cmdline, memmap.CmdlineMax-1)
	p, err := BzImagePlacement(h, size)
	if err != nil {
		return nil, err
	}
	img.Placement = p
	img.pmOff = int(bzSetupSects(h)+1) * 512
	// The protected-mode kernel must be in the file, as long as syssize
	// (16-byte units, set by Linux's arch/x86/boot/tools/build.c) says.
	pm := uint64(img.pmOff)
	if pm > size {
		return nil, refuse("bzImage cut short: %d bytes, its protected-mode kernel starts at %#x", size, pm)
	}
	if sys := uint64(le.Uint32(h[hdrSyssize:])) * 16; sys > size-pm {
		return nil, refuse("bzImage cut short: %d bytes of protected-mode kernel, its header says %d (syssize)", size-pm, sys)
	}
	return img, nil
}

// bzSetupSects is the number of 512-byte setup sectors (0 means 4).
func bzSetupSects(h []byte) uint64 {
	if s := uint64(h[hdrSetupSects]); s != 0 {
		return s
	}
	return 4
}

func parseELF(r io.ReaderAt, size int64) (*Image, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, refuse("%w: %w", ErrNotKernel, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, refuse("%w: ELF %v %v, want ELFCLASS64 EM_X86_64", ErrNotKernel, f.Class, f.Machine)
	}
	p, err := PVHPlacement(f)
	if err != nil {
		return nil, err
	}
	img := &Image{Format: FormatPVH, PVHEntry: uint32(p.Entry), Placement: p, CmdlineMax: memmap.CmdlineMax - 1}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_LOAD || prog.Memsz == 0 {
			continue
		}
		// The segment's bytes must all be in the file: a vmlinux cut
		// short (an interrupted copy) is refused here, not at boot.
		if end := prog.Off + prog.Filesz; end < prog.Off || end > uint64(size) {
			return nil, refuse("segment at %#x: its %#x bytes at file offset %#x run past the end of the %d-byte file (cut short?)",
				prog.Paddr, prog.Filesz, prog.Off, size)
		}
		img.segments = append(img.segments, segment{off: prog.Off, filesz: prog.Filesz, paddr: prog.Paddr, memsz: prog.Memsz})
	}
	return img, nil
}

// Load loads image with the loader its format takes (ParseImage decides):
// LoadBzImage or LoadPVH.
func Load(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	img, err := ParseImageBytes(image)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrKernel, err)
	}
	if img.Format == FormatPVH {
		return img.loadPVH(mem, l, image, cmdline, initrd)
	}
	return img.loadBzImage(mem, l, image, cmdline, initrd)
}

// plan checks what is left once the image is parsed, before anything is
// written: the kernel in l (Placement.Fits), the command line's length,
// and room for the initrd (its address, 0 without one).
func (img *Image) plan(l *memmap.Layout, cmdline string, initrd []byte) (initrdAddr uint64, err error) {
	if err := img.Placement.Fits(l); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrKernel, err)
	}
	if len(cmdline) > img.CmdlineMax {
		return 0, fmt.Errorf("command line of %d bytes is longer than the kernel's %d", len(cmdline), img.CmdlineMax)
	}
	if len(initrd) > 0 {
		return img.Placement.InitrdAddr(l, uint64(len(initrd)))
	}
	return 0, nil
}
