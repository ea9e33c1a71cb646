package pci

import "fmt"

// Capability IDs (PCI Code and ID Assignment Specification).
const (
	CapVendor = 0x09 // vendor-specific (virtio's transport capabilities)
	CapMSIX   = 0x11
)

// capStart is where the capability list begins: the first byte after the
// type-0 header.
const capStart = 0x40

// Capability is one entry of a function's capability list. The list owns
// the entry's first two bytes (ID and next pointer): Read is called for the
// whole entry and the list then fills those two in, and writes to them never
// reach Write.
type Capability interface {
	// CapID is the capability's ID (CapMSIX, CapVendor, ...).
	CapID() uint8
	// CapLen is the entry's length in bytes, header included (at least 2).
	CapLen() int
	// ReadCap fills data from the entry's bytes at off (counted from the
	// entry's first byte); off+len(data) never passes CapLen rounded up to
	// a multiple of 4, and bytes beyond CapLen may be left as zero.
	ReadCap(off int, data []byte)
	// WriteCap stores a guest write at off (2 or more).
	WriteCap(off int, data []byte)
}

// CapList is a function's capability list in configuration space, from
// 0x40 up, each entry dword-aligned. A Function embeds one, returns
// First() as Header.CapPtr and delegates ConfigRead/ConfigWrite to it; the
// config space sets the status register's capability-list bit (bit 4) and
// the pointer at 0x34 from the header. Capabilities are added before the
// function is put on a Bus; the list is not changed afterwards, and its
// accesses run under the Bus lock.
type CapList struct {
	caps []placedCap
	end  int // next free offset
}

type placedCap struct {
	off, len int // len rounded up to 4
	c        Capability
}

// Add appends c to the list and returns its offset in configuration space.
func (l *CapList) Add(c Capability) (int, error) {
	if l.end == 0 {
		l.end = capStart
	}
	n := c.CapLen()
	if n < 2 {
		return 0, fmt.Errorf("pci: capability %#x of %d bytes is shorter than its header", c.CapID(), n)
	}
	n = (n + 3) &^ 3
	if l.end+n > ConfigSize {
		return 0, fmt.Errorf("pci: capability %#x of %d bytes does not fit at %#x in configuration space", c.CapID(), n, l.end)
	}
	off := l.end
	l.caps = append(l.caps, placedCap{off: off, len: n, c: c})
	l.end += n
	return off, nil
}

// First is the offset of the first capability, 0 for an empty list: the
// value of Header.CapPtr.
func (l *CapList) First() uint8 {
	if len(l.caps) == 0 {
		return 0
	}
	return uint8(l.caps[0].off)
}

// find returns the capability whose entry holds off.
func (l *CapList) find(off int) (int, bool) {
	for i, p := range l.caps {
		if off >= p.off && off < p.off+p.len {
			return i, true
		}
	}
	return 0, false
}

// ConfigRead implements Function.ConfigRead for the list: unclaimed bytes
// read as zero.
func (l *CapList) ConfigRead(off int, data []byte) {
	clear(data)
	for k := 0; k < len(data); {
		i, ok := l.find(off + k)
		if !ok {
			k++
			continue
		}
		p := l.caps[i]
		rel := off + k - p.off
		n := min(len(data)-k, p.len-rel)
		p.c.ReadCap(rel, data[k:k+n])
		for j := range n {
			switch rel + j {
			case 0:
				data[k+j] = p.c.CapID()
			case 1:
				if i+1 < len(l.caps) {
					data[k+j] = uint8(l.caps[i+1].off)
				} else {
					data[k+j] = 0
				}
			}
		}
		k += n
	}
}

// ConfigWrite implements Function.ConfigWrite for the list: writes to the
// entries' headers and to unclaimed bytes are dropped.
func (l *CapList) ConfigWrite(off int, data []byte) {
	for k := 0; k < len(data); {
		i, ok := l.find(off + k)
		if !ok {
			k++
			continue
		}
		p := l.caps[i]
		rel := off + k - p.off
		n := min(len(data)-k, p.len-rel)
		if rel < 2 { // skip the header bytes
			skip := min(2-rel, n)
			rel += skip
			k += skip
			n -= skip
		}
		if n > 0 {
			p.c.WriteCap(rel, data[k:k+n])
		}
		k += n
	}
}
