package boot_test

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/testkernel"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

var le = binary.LittleEndian

func guest(t *testing.T, ram uint64) (*guestmem.Memory, *memmap.Layout) {
	t.Helper()
	l, err := memmap.New(memmap.Spec{RAM: ram, RAMAlign: memmap.PageSize, WindowSize: memmap.MiB})
	if err != nil {
		t.Fatal(err)
	}
	var regions []guestmem.Region
	for _, r := range l.RAM {
		regions = append(regions, guestmem.Region{GPA: r.Start, Mem: make([]byte, r.Size)})
	}
	m, err := guestmem.New(regions...)
	if err != nil {
		t.Fatal(err)
	}
	return m, l
}

// bzImage makes a bzImage: one setup sector, the header fields the loader
// reads, then kernel bytes.
func bzImage(relocatable bool, initSize uint32, kernel []byte) []byte {
	b := make([]byte, 1024)
	b[0x1f1] = 1
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200] = 0xeb
	b[0x201] = 0x6a // header ends at 0x26c
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)
	b[0x211] = 1
	le.PutUint32(b[0x22c:], 0x7fffffff)
	le.PutUint32(b[0x230:], 0x200000)
	if relocatable {
		b[0x234] = 1
	}
	le.PutUint16(b[0x236:], 1)
	le.PutUint32(b[0x238:], 2047)
	le.PutUint64(b[0x258:], 0x1000000)
	le.PutUint32(b[0x260:], initSize)
	return append(b, kernel...)
}

func read(t *testing.T, m *guestmem.Memory, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := m.Read(gpa, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadBzImage(t *testing.T) {
	m, l := guest(t, 64*memmap.MiB)
	kernel := []byte("64-bit kernel code")
	initrd := bytes.Repeat([]byte("cpio"), 3000)
	e, err := boot.LoadBzImage(m, l, bzImage(false, 0x200000, kernel), "console=ttyS0 quiet", initrd)
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode != boot.Long64 || e.RIP != 0x1000200 || e.RSI != memmap.ZeroPageAddr || e.CR3 != memmap.PML4Addr {
		t.Errorf("entry %+v", e)
	}
	if got := read(t, m, 0x1000000, uint64(len(kernel))); !bytes.Equal(got, kernel) {
		t.Errorf("kernel at its preferred address: %q", got)
	}
	zp := read(t, m, memmap.ZeroPageAddr, 0x1000)
	if string(zp[0x202:0x206]) != "HdrS" || zp[0x210] != 0xff || zp[0x211]&0x81 != 0x81 {
		t.Errorf("zero page header: magic %q loader %#x loadflags %#x", zp[0x202:0x206], zp[0x210], zp[0x211])
	}
	if p := le.Uint32(zp[0x228:]); p != memmap.CmdlineAddr || string(read(t, m, uint64(p), 20)) != "console=ttyS0 quiet\x00" {
		t.Errorf("command line at %#x", p)
	}
	img, size := uint64(le.Uint32(zp[0x218:])), le.Uint32(zp[0x21c:])
	if size != uint32(len(initrd)) || img%memmap.PageSize != 0 || img < 0x1200000 || img+uint64(size) > 64*memmap.MiB {
		t.Errorf("initrd at %#x size %d", img, size)
	}
	if got := read(t, m, img, uint64(size)); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	if n := int(zp[0x1e8]); n != len(l.E820) {
		t.Fatalf("%d e820 entries, want %d", n, len(l.E820))
	}
	for i, want := range l.E820 {
		off := 0x2d0 + i*20
		if le.Uint64(zp[off:]) != want.Addr || le.Uint64(zp[off+8:]) != want.Size || le.Uint32(zp[off+16:]) != uint32(want.Type) {
			t.Errorf("e820[%d] differs from the layout", i)
		}
	}
	// Identity map: 3 GiB + 6 MiB is mapped to itself with a 2 MiB page.
	va := uint64(3<<30 | 6<<20)
	pml4, _ := m.ReadU64(memmap.PML4Addr)
	pdpt, _ := m.ReadU64(pml4&^0xfff + (va>>30)*8)
	pde, _ := m.ReadU64(pdpt&^0xfff + ((va>>21)&511)*8)
	if pde&0x81 != 0x81 || pde&^0xfff != va {
		t.Errorf("page tables map %#x to %#x (pde %#x)", va, pde&^0xfff, pde)
	}
	if code, _ := m.ReadU64(e.GDTBase + boot.SelectorCode); code>>53&1 != 1 || e.GDTLimit != 31 {
		t.Errorf("GDT code descriptor %#x is not 64-bit, limit %d", code, e.GDTLimit)
	}
}

func TestLoadBzImageRelocatable(t *testing.T) {
	m, l := guest(t, 64*memmap.MiB)
	e, err := boot.LoadBzImage(m, l, bzImage(true, 0x100000, []byte("k")), "", nil)
	if err != nil || e.RIP != 0x200200 {
		t.Errorf("relocatable kernel entry %#x, %v; want 2 MiB + 0x200", e.RIP, err)
	}
}

func TestLoadBzImageErrors(t *testing.T) {
	m, l := guest(t, 20*memmap.MiB)
	tests := []struct {
		name    string
		image   []byte
		cmdline string
		initrd  []byte
		want    string
	}{
		{"not a bzImage", make([]byte, 8192), "", nil, "not a bzImage or ELF kernel"},
		{"kernel does not fit", bzImage(false, 8<<20, []byte("k")), "", nil, "0x000001000000-0x0000017fffff is not in the kernel's RAM"},
		{"command line too long", bzImage(true, 0x1000, []byte("k")), strings.Repeat("x", 3000), nil, "longer than the kernel's 2047"},
		{"initrd too big", bzImage(true, 0x1000, []byte("k")), "", make([]byte, 30<<20), "does not fit"},
	}
	for _, tt := range tests {
		if _, err := boot.LoadBzImage(m, l, tt.image, tt.cmdline, tt.initrd); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestLoadPVH(t *testing.T) {
	m, l := guest(t, 64*memmap.MiB)
	code := []byte("32-bit PVH entry code")
	image := testkernel.ELFLoadable(0x1000040, 0x1000000, code, 0x1000)
	m.Write(0x1000000+uint64(len(code)), []byte{1, 2, 3}) // stale bytes where bss goes
	initrd := []byte("initramfs")
	e, err := boot.LoadPVH(m, l, image, "console=ttyS0", initrd)
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode != boot.Protected32 || e.RIP != 0x1000040 || e.RBX != memmap.PVHInfoAddr {
		t.Errorf("entry %+v", e)
	}
	if got := read(t, m, 0x1000000, uint64(len(code))+3); !bytes.Equal(got, append(code, 0, 0, 0)) {
		t.Errorf("segment %q (bss must be zeroed)", got)
	}
	si := read(t, m, memmap.PVHInfoAddr, 56)
	if le.Uint32(si) != 0x336ec578 || le.Uint32(si[4:]) != 1 || le.Uint32(si[12:]) != 1 || le.Uint64(si[24:]) != memmap.CmdlineAddr {
		t.Errorf("hvm_start_info %x", si)
	}
	if le.Uint32(si[48:]) != uint32(len(l.E820)) || le.Uint64(si[40:]) != memmap.PVHMemmapAddr {
		t.Errorf("memory map %d entries at %#x", le.Uint32(si[48:]), le.Uint64(si[40:]))
	}
	mod := read(t, m, le.Uint64(si[16:]), 16)
	if got := read(t, m, le.Uint64(mod), le.Uint64(mod[8:])); !bytes.Equal(got, initrd) {
		t.Errorf("initrd module %q", got)
	}
	if _, err := boot.LoadPVH(m, l, testkernel.ELF(false, 0), "", nil); !errors.Is(err, boot.ErrKernel) {
		t.Errorf("ELF without PVH note: %v", err)
	}
	if _, err := boot.LoadPVH(m, l, testkernel.ELFLoadable(0x10, 0x7f000000, code, 0), "", nil); err == nil {
		t.Error("a segment outside RAM was loaded")
	}
}

// TestLoadPVHRefusesMisplacedSegments: a PT_LOAD segment over anything
// popvmm places in guest memory, or outside the kernel's RAM, is refused
// before anything is written. A segment at 0x5000 used to be loaded and
// then overwritten by hvm_start_info.
func TestLoadPVHRefusesMisplacedSegments(t *testing.T) {
	code := bytes.Repeat([]byte{0x90}, 0x3000)
	seg := func(paddr uint64) testkernel.Segment { return testkernel.Segment{Paddr: paddr, Data: code} }
	tests := []struct {
		name  string
		entry uint32
		segs  []testkernel.Segment
		want  string
	}{
		{"over hvm_start_info", 0x5000, []testkernel.Segment{seg(0x5000)}, "pvh start info"},
		{"over the GDT", 0x1000, []testkernel.Segment{seg(0)}, "gdt+idt"},
		{"over the page tables", 0x9000, []testkernel.Segment{seg(0x9000)}, "page tables"},
		{"over the command line", 0x20000, []testkernel.Segment{seg(0x20000)}, "cmdline"},
		{"over the MP table", 0x9e000, []testkernel.Segment{seg(0x9e000)}, "mp table"},
		{"in the BIOS area", 0xf0000, []testkernel.Segment{seg(0xf0000)}, "first MiB"},
		{"bss over the first MiB", 0x80000, []testkernel.Segment{{Paddr: 0x80000, Data: code, BSS: 0x100000}}, "mp table"},
		{"second segment low", 0x1000000, []testkernel.Segment{seg(0x1000000), seg(0x7000)}, "zero page"},
		{"past the RAM end", 0x3fff000, []testkernel.Segment{seg(0x3fff000)}, "is not in the kernel's RAM"},
		{"bss past the RAM end", 0x1000000, []testkernel.Segment{{Paddr: 0x1000000, Data: code, BSS: 64 << 20}}, "is not in the kernel's RAM"},
		{"in the PCI hole", 0xc0000000, []testkernel.Segment{seg(0xc0000000)}, "pci32"},
		{"wraps past 2^64", 0x1000000, []testkernel.Segment{seg(0x1000000), {Paddr: 0xffff_ffff_ffff_f000, Data: code}}, "past 2^64"},
		{"memsz wraps onto RAM", 0x1000000, []testkernel.Segment{{Paddr: 0x1000000, Data: code, Memsz: ^uint64(0) - 0xfff}}, "past 2^64"},
		{"segments overlap", 0x1000000, []testkernel.Segment{seg(0x1000000), seg(0x1001000)}, "overlap"},
		{"entry outside the segments", 0x2000000, []testkernel.Segment{seg(0x1000000)}, "not inside a loaded segment"},
		{"no segment", 0x1000000, nil, "no loadable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, l := guest(t, 64*memmap.MiB)
			image := testkernel.ELFSegments(tt.entry, tt.segs...)
			_, err := boot.LoadPVH(m, l, image, "console=ttyS0", []byte("initrd"))
			if !errors.Is(err, boot.ErrKernel) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadPVH = %v, want ErrKernel naming %q", err, tt.want)
			}
			if low := read(t, m, 0, memmap.ConvMemLimit); !bytes.Equal(low, make([]byte, len(low))) {
				t.Error("a refused kernel left bytes in the first MiB")
			}
		})
	}
}

// TestLoadBzImageRefusesMisplacedKernel: a bzImage whose load range
// (preferred address or aligned 1 MiB, and init_size) overlaps the boot
// structures or leaves RAM is refused before anything is written.
func TestLoadBzImageRefusesMisplacedKernel(t *testing.T) {
	tests := []struct {
		name string
		img  func() []byte
		want string
	}{
		{"preferred address over the zero page", func() []byte {
			img := bzImage(false, 0x1000, []byte("k"))
			le.PutUint64(img[0x258:], 0x7000)
			return img
		}, "zero page"},
		{"preferred address in the first MiB", func() []byte {
			img := bzImage(false, 0x1000, []byte("k"))
			le.PutUint64(img[0x258:], 0xf0000)
			return img
		}, "first MiB"},
		{"init_size past the RAM end", func() []byte { return bzImage(false, 64<<20, []byte("k")) }, "is not in the kernel's RAM"},
		{"preferred address in the PCI hole", func() []byte {
			img := bzImage(false, 0x1000, []byte("k"))
			le.PutUint64(img[0x258:], 0xc0000000)
			return img
		}, "pci32"},
		{"preferred address wraps", func() []byte {
			img := bzImage(false, 0x100000, []byte("k"))
			le.PutUint64(img[0x258:], 0xffff_ffff_fff8_0000)
			return img
		}, "past 2^64"},
		{"entry beyond the kernel", func() []byte { return bzImage(true, 0x100, []byte("k")) }, "ends before its 64-bit entry"},
		{"no boot flag", func() []byte {
			img := bzImage(true, 0x1000, []byte("k"))
			le.PutUint16(img[0x1fe:], 0)
			return img
		}, "boot flag"},
		{"no 64-bit entry", func() []byte {
			img := bzImage(true, 0x1000, []byte("k"))
			le.PutUint16(img[0x236:], 0)
			return img
		}, "XLF_KERNEL_64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, l := guest(t, 64*memmap.MiB)
			_, err := boot.LoadBzImage(m, l, tt.img(), "console=ttyS0", []byte("initrd"))
			if !errors.Is(err, boot.ErrKernel) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadBzImage = %v, want ErrKernel naming %q", err, tt.want)
			}
			if low := read(t, m, 0, memmap.ConvMemLimit); !bytes.Equal(low, make([]byte, len(low))) {
				t.Error("a refused kernel left bytes in the first MiB")
			}
		})
	}
}

// TestPlacementMatchesLoad: what the loaders write lies inside the ranges
// their Placement reports (the ranges config validation checks).
func TestPlacementMatchesLoad(t *testing.T) {
	m, l := guest(t, 64*memmap.MiB)
	img := bzImage(false, 0x200000, []byte("kernel"))
	p, err := boot.BzImagePlacement(img, uint64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	e, err := boot.LoadBzImage(m, l, img, "", nil)
	if err != nil || len(p.Kernel) != 1 || p.Kernel[0] != (memmap.Range{Start: 0x1000000, Size: 0x200000}) || e.RIP != p.Entry {
		t.Errorf("bzImage placement %+v, entry %#x, %v; want [0x1000000, +2 MiB), entry %#x", p, e.RIP, err, p.Entry)
	}
	elfImg := testkernel.ELFSegments(0x1000010, testkernel.Segment{Paddr: 0x1000000, Data: []byte("text"), BSS: 0x1000},
		testkernel.Segment{Paddr: 0x2000000, Data: []byte("data")})
	f, err := elf.NewFile(bytes.NewReader(elfImg))
	if err != nil {
		t.Fatal(err)
	}
	p, err = boot.PVHPlacement(f)
	want := []memmap.Range{{Start: 0x1000000, Size: 0x1004}, {Start: 0x2000000, Size: 4}}
	if err != nil || !slices.Equal(p.Kernel, want) || p.Entry != 0x1000010 || p.End() != 0x2000004 {
		t.Errorf("PVH placement %+v, %v; want %v entry 0x1000010", p, err, want)
	}
}

func TestMPTable(t *testing.T) {
	m, _ := guest(t, 8*memmap.MiB)
	if err := boot.WriteMPTable(m, 2); err != nil {
		t.Fatal(err)
	}
	mpf := read(t, m, memmap.MPTableAddr, 16)
	if string(mpf[:4]) != "_MP_" || sum(mpf) != 0 {
		t.Fatalf("floating pointer %x", mpf)
	}
	ptr := uint64(le.Uint32(mpf[4:]))
	hdr := read(t, m, ptr, 44)
	n := uint64(le.Uint16(hdr[4:]))
	table := read(t, m, ptr, n)
	if string(table[:4]) != "PCMP" || sum(table) != 0 || ptr+n > memmap.LowRAMEnd {
		t.Fatalf("config table %q, checksum %d, ends %#x", table[:4], sum(table), ptr+n)
	}
	// Entries: 2 processors (first the BSP), PCI and ISA buses, IOAPIC,
	// 16 ISA + 8 PCI + 2 local interrupts.
	if got := le.Uint16(table[34:]); got != 2+2+1+16+boot.PCIINTxDevices+2 {
		t.Errorf("%d entries", got)
	}
	if table[44] != 0 || table[44+3] != 3 || table[64] != 0 || table[64+1] != 1 || table[64+3] != 1 {
		t.Errorf("processor entries %x", table[44:84])
	}
	if err := boot.WriteMPTable(m, boot.MaxCPUs+1); err == nil {
		t.Error("too many vCPUs accepted")
	}
	if err := boot.WriteMPTable(m, boot.MaxCPUs); err != nil {
		t.Errorf("MaxCPUs (%d): %v", boot.MaxCPUs, err)
	}
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// TestRealImages loads the built kernels, when there are, through both
// entry paths.
func TestRealImages(t *testing.T) {
	for _, f := range []string{"light", "full"} {
		bz, err1 := os.ReadFile("../../images/out/" + f + "/bzImage")
		vm, err2 := os.ReadFile("../../images/out/" + f + "/vmlinux")
		if err1 != nil || err2 != nil {
			t.Skipf("%s image not built (make images)", f)
		}
		m, l := guest(t, 48*memmap.MiB)
		e, err := boot.LoadBzImage(m, l, bz, "console=ttyS0", []byte("070701"))
		if err != nil || e.RIP != 0x1000200 {
			t.Errorf("%s bzImage: entry %#x, %v", f, e.RIP, err)
		}
		m, l = guest(t, 48*memmap.MiB)
		e, err = boot.LoadPVH(m, l, vm, "console=ttyS0", []byte("070701"))
		if err != nil || e.RIP == 0 {
			t.Errorf("%s vmlinux: entry %#x, %v", f, e.RIP, err)
		}
	}
}

// FuzzLoad feeds arbitrary images to both loaders: an error or a load,
// never a panic, whatever the headers claim.
func FuzzLoad(f *testing.F) {
	f.Add(bzImage(false, 0x1000, []byte("k")), false)
	f.Add(bzImage(true, 0x7fffffff, nil), false)
	f.Add(testkernel.ELFLoadable(0x1000, 0x1000000, []byte("x"), 16), true)
	f.Add(testkernel.ELFLoadable(0x5000, 0x5000, bytes.Repeat([]byte{0x90}, 0x3000), 0), true)
	f.Add(testkernel.ELFSegments(0x1000000, testkernel.Segment{Paddr: 0x1000000, Data: []byte("x"), Memsz: ^uint64(0) - 0xfff}), true)
	f.Fuzz(func(t *testing.T, image []byte, elf bool) {
		m, l := guest(t, 32*memmap.MiB)
		if elf {
			boot.LoadPVH(m, l, image, "console=ttyS0", []byte("i"))
		} else {
			boot.LoadBzImage(m, l, image, "console=ttyS0", []byte("i"))
		}
	})
}

func TestLoadFlat(t *testing.T) {
	m, l := guest(t, 4*memmap.MiB)
	img := []byte{0xf4, 0xeb, 0xfd}
	e, err := boot.LoadFlat(m, l, img)
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode != boot.Protected32 || e.RIP != boot.FlatAddr || e.RSP != memmap.BootStackTop {
		t.Errorf("entry %+v", e)
	}
	if got := read(t, m, boot.FlatAddr, 3); string(got) != string(img) {
		t.Errorf("image % x", got)
	}
	if _, err := boot.LoadFlat(m, l, make([]byte, 4*memmap.MiB)); err == nil {
		t.Error("a flat binary past the RAM's end loaded")
	}
}

// TestBzImageSyssize: a bzImage whose protected-mode kernel is shorter
// than its header's syssize says (a file cut short) is refused by the
// parse that validation and the loader share; one that holds it all is
// taken.
func TestBzImageSyssize(t *testing.T) {
	img := testkernel.BzImage(0x020f, true)
	pm := (4 + 1) * 512 // setup_sects 0 means 4
	binary.LittleEndian.PutUint32(img[0x1f4:], uint32(len(img)-pm)/16)
	if _, err := boot.ParseImageBytes(img); err != nil {
		t.Fatalf("a whole bzImage: %v", err)
	}
	if _, err := boot.ParseImageBytes(img[:len(img)-16]); err == nil || !strings.Contains(err.Error(), "cut short") {
		t.Fatalf("a bzImage 16 bytes short of its syssize: %v, want refused as cut short", err)
	}
	if _, err := boot.ParseImageBytes(img[:pm-512]); err == nil {
		t.Fatal("a bzImage cut inside its setup sectors was taken")
	}
}
