// Package testkernel makes the smallest files that pass for kernel images:
// a bzImage setup header and an ELF64 with a PVH entry note. Tests use them
// where a real kernel would take minutes to build.
package testkernel

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/popvmm/popvmm/cluster"
)

// BzImage returns a bzImage header with boot protocol version proto and the
// 64-bit entry flag set when kernel64 is true: relocatable, 2 MiB-aligned,
// with an init_size of 1 MiB, so that it loads at 2 MiB in any layout, and
// a command line of up to 2047 bytes, as Linux's.
func BzImage(proto uint16, kernel64 bool) []byte {
	b := make([]byte, 0x1000)
	le := binary.LittleEndian
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x201] = 0x66 // the setup header ends at 0x268
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], proto)
	le.PutUint32(b[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint32(b[0x230:], 0x200000)   // kernel_alignment
	b[0x234] = 1                        // relocatable_kernel
	if kernel64 {
		le.PutUint16(b[0x236:], 1)
	}
	le.PutUint32(b[0x238:], 2047)      // cmdline_size, as Linux's
	le.PutUint64(b[0x258:], 0x1000000) // pref_address
	le.PutUint32(b[0x260:], 0x100000)  // init_size
	return b
}

// ELF returns an ELF64 x86-64 executable with one PT_LOAD segment holding
// entry and a PT_NOTE segment; with pvh the note is Xen's PHYS32_ENTRY
// pointing at entry.
func ELF(pvh bool, entry uint32) []byte {
	typ := uint32(18)
	if !pvh {
		typ = 1
	}
	base := uint64(entry) &^ 0xfff
	return elfFile(typ, entry, Segment{Paddr: base, Data: make([]byte, uint64(entry)-base+16)})
}

// Write writes data to name under dir and returns the path.
func Write(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// InitrdCluster writes, under dir, a one-kernel cluster for tests of where
// an initrd fits: a PVH kernel loaded at 16 MiB in 64 MiB of memory, its
// initrd initrd.img (data, then zeros up to size bytes: sparse), and
// cluster.toml, whose path it returns.
func InitrdCluster(t testing.TB, dir string, data []byte, size int64) string {
	t.Helper()
	Write(t, dir, "pvh", ELFLoadable(0x1000000, 0x1000000, []byte("text"), 0x1000))
	if err := os.Truncate(Write(t, dir, "initrd.img", data), size); err != nil {
		t.Fatal(err)
	}
	return Write(t, dir, "cluster.toml", []byte(fmt.Sprintf(`
[cluster]
name = "fit"
run_dir = %q
[cluster.network]
subnet = "10.199.0.0/24"

[[kernel]]
name = "primary"
cpus = "0"
memory = "64M"
kernel = "pvh"
initrd = "initrd.img"
`, filepath.Join(dir, "run"))))
}

// InitrdRoom is the most bytes of initrd k's loader places: every size up
// to it fits (cluster.Kernel.InitrdFits), none above.
func InitrdRoom(k *cluster.Kernel) uint64 {
	return uint64(sort.Search(int(k.Memory), func(n int) bool { return k.InitrdFits(uint64(n)+1) != nil }))
}

// Images lays out dir as `make images` does, with fake kernels and
// initramfs for both flavours, and returns dir.
func Images(t testing.TB, dir string) string {
	t.Helper()
	for _, f := range []string{"full", "light"} {
		Write(t, dir, filepath.Join(f, "bzImage"), BzImage(0x020f, true))
		Write(t, dir, filepath.Join(f, "initramfs.cpio"), []byte("070701fake"))
	}
	return dir
}

// ELFLoadable returns an ELF64 x86-64 executable with a PVH note pointing
// at entry and one PT_LOAD segment of content (plus bss bytes of zeros) at
// physical address paddr.
func ELFLoadable(entry uint32, paddr uint64, content []byte, bss uint64) []byte {
	return ELFSegments(entry, Segment{Paddr: paddr, Data: content, BSS: bss})
}

// Segment is one PT_LOAD segment for ELFSegments: Data at physical address
// Paddr, followed by BSS bytes of zeros. Memsz, when not zero, replaces
// len(Data)+BSS as the segment's memory size, so that a test can write
// headers no linker would.
type Segment struct {
	Paddr uint64
	Data  []byte
	BSS   uint64
	Memsz uint64
}

// ELFSegments returns an ELF64 x86-64 executable with a PVH note pointing
// at entry and one PT_LOAD per segment, in order.
func ELFSegments(entry uint32, segs ...Segment) []byte {
	return elfFile(18, entry, segs...)
}

// elfFile writes the ELF header, a PT_NOTE of type noteType ("Xen", entry)
// and the segments' PT_LOADs.
func elfFile(noteType, entry uint32, segs ...Segment) []byte {
	const ehsize, phsize = 64, 56
	le := binary.LittleEndian
	note := make([]byte, 20)
	le.PutUint32(note[0:], 4)
	le.PutUint32(note[4:], 4)
	le.PutUint32(note[8:], noteType)
	copy(note[12:], "Xen\x00")
	le.PutUint32(note[16:], entry)
	phnum := 1 + len(segs)
	dataOff := uint64(ehsize + phnum*phsize)
	size := int(dataOff) + len(note)
	for _, s := range segs {
		size += len(s.Data)
	}
	b := make([]byte, size)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[16:], 2)
	le.PutUint16(b[18:], 62)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehsize)
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], uint16(phnum))
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 4) // PT_NOTE
	le.PutUint64(ph[8:], dataOff)
	le.PutUint64(ph[32:], uint64(len(note)))
	le.PutUint64(ph[40:], uint64(len(note)))
	copy(b[dataOff:], note)
	off := dataOff + uint64(len(note))
	for i, s := range segs {
		ph := b[ehsize+(1+i)*phsize:]
		memsz := s.Memsz
		if memsz == 0 {
			memsz = uint64(len(s.Data)) + s.BSS
		}
		le.PutUint32(ph[0:], 1) // PT_LOAD
		le.PutUint64(ph[8:], off)
		le.PutUint64(ph[16:], s.Paddr) // vaddr
		le.PutUint64(ph[24:], s.Paddr) // paddr
		le.PutUint64(ph[32:], uint64(len(s.Data)))
		le.PutUint64(ph[40:], memsz)
		copy(b[off:], s.Data)
		off += uint64(len(s.Data))
	}
	return b
}
