// Package pvhnote finds the PVH entry point in an ELF kernel's notes (Xen's
// XEN_ELFNOTE_PHYS32_ENTRY), for config validation and for booting.
package pvhnote

import (
	"bytes"
	"encoding/binary"
)

// TypePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY.
const TypePhys32Entry = 18

// Find walks the notes in b (Elf64_Nhdr: namesz, descsz, type, then name and
// desc each padded to 4 bytes) and returns the 32-bit PVH entry point.
func Find(b []byte, bo binary.ByteOrder) (uint32, bool) {
	pad := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(bo.Uint32(b)), uint64(bo.Uint32(b[4:])), bo.Uint32(b[8:])
		b = b[12:]
		if pad(namesz)+pad(descsz) > uint64(len(b)) {
			return 0, false
		}
		name, desc := b[:namesz], b[pad(namesz):pad(namesz)+descsz]
		b = b[pad(namesz)+pad(descsz):]
		if typ == TypePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" && len(desc) >= 4 {
			return bo.Uint32(desc), true
		}
	}
	return 0, false
}
