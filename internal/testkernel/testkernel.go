// Package testkernel makes the smallest files that pass for kernel images:
// a bzImage setup header and an ELF64 with a PVH entry note. Tests use them
// where a real kernel would take minutes to build.
package testkernel

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// BzImage returns a bzImage header with boot protocol version proto and the
// 64-bit entry flag set when kernel64 is true.
func BzImage(proto uint16, kernel64 bool) []byte {
	b := make([]byte, 0x1000)
	le := binary.LittleEndian
	le.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], proto)
	if kernel64 {
		le.PutUint16(b[0x236:], 1)
	}
	return b
}

// ELF returns an ELF64 x86-64 executable with one PT_NOTE segment; with pvh
// the note is Xen's PHYS32_ENTRY pointing at entry.
func ELF(pvh bool, entry uint32) []byte {
	const ehsize, phsize = 64, 56
	le := binary.LittleEndian
	note := make([]byte, 12+4+4)
	le.PutUint32(note[0:], 4) // namesz "Xen\0"
	le.PutUint32(note[4:], 4) // descsz
	typ := uint32(18)
	if !pvh {
		typ = 1
	}
	le.PutUint32(note[8:], typ)
	copy(note[12:], "Xen\x00")
	le.PutUint32(note[16:], entry)

	b := make([]byte, ehsize+phsize+len(note))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, little endian, version
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 62)   // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 4) // PT_NOTE
	le.PutUint64(ph[8:], ehsize+phsize)
	le.PutUint64(ph[32:], uint64(len(note)))
	le.PutUint64(ph[40:], uint64(len(note)))
	le.PutUint64(ph[48:], 4)
	copy(b[ehsize+phsize:], note)
	return b
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
	const ehsize, phsize = 64, 56
	le := binary.LittleEndian
	note := make([]byte, 20)
	le.PutUint32(note[0:], 4)
	le.PutUint32(note[4:], 4)
	le.PutUint32(note[8:], 18)
	copy(note[12:], "Xen\x00")
	le.PutUint32(note[16:], entry)
	dataOff := uint64(ehsize + 2*phsize)
	b := make([]byte, int(dataOff)+len(note)+len(content))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[16:], 2)
	le.PutUint16(b[18:], 62)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehsize)
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 2)
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 4) // PT_NOTE
	le.PutUint64(ph[8:], dataOff)
	le.PutUint64(ph[32:], uint64(len(note)))
	le.PutUint64(ph[40:], uint64(len(note)))
	ph = b[ehsize+phsize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint64(ph[8:], dataOff+uint64(len(note)))
	le.PutUint64(ph[16:], paddr) // vaddr
	le.PutUint64(ph[24:], paddr) // paddr
	le.PutUint64(ph[32:], uint64(len(content)))
	le.PutUint64(ph[40:], uint64(len(content))+bss)
	copy(b[dataOff:], note)
	copy(b[dataOff+uint64(len(note)):], content)
	return b
}
