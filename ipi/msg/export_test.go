package msg

import "github.com/popvmm/popvmm/internal/winmem"

// Test access to the window geometry, for tests that scribble on it.

// SectionOffset is where peer's section starts in a formatted window.
func SectionOffset(mem []byte, peer int) int {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	return l.section(peer)
}

// SectionSize is the size of one peer's section.
func SectionSize(mem []byte) int {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	return l.sectionSize
}

// SetTail overwrites the tail of the ring from → to, as a broken sender might.
func SetTail(mem []byte, from, to int, v uint64) {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	winmem.Store64(mem, l.ring(from, to), v)
}

// Scribble writes data at off with atomic word stores, as a hostile peer in
// another process would (plain writes would be a race in one process).
func Scribble(mem []byte, off int, data []byte) {
	for i := 0; i+8 <= len(data); i += 8 {
		var v uint64
		for j := range 8 {
			v |= uint64(data[i+j]) << (8 * j)
		}
		winmem.Store64(mem, (off+i)&^7, v)
	}
}

// Head is owner's receive head for sender from.
func Head(mem []byte, owner, from int) uint64 {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	return winmem.Load64(mem, l.head(owner, from))
}

// SetSlotHeader overwrites the header of slot idx of ring from → to.
func SetSlotHeader(mem []byte, from, to int, idx uint64, hdr uint64) {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	winmem.Store64(mem, l.slot(l.ring(from, to), int(idx)), hdr)
}

// Tail is the tail of ring from → to.
func Tail(mem []byte, from, to int) uint64 {
	l, err := readLayout(mem)
	if err != nil {
		panic(err)
	}
	return winmem.Load64(mem, l.ring(from, to))
}

// CallID is the id a Call's request went out under.
func CallID(c *Call) uint64 { return c.key.id }
