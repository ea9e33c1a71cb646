package msg

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Atomic access to the shared window. Offsets come from the validated
// layout (never from values read out of the window); each access is bounds
// checked before the pointer is made, without touching the memory, and the
// layout keeps 64-bit words 8-byte aligned and 32-bit words 4-byte aligned.

func word(b []byte, off, size int) unsafe.Pointer {
	if off < 0 || off+size > len(b) || off%size != 0 {
		panic(fmt.Sprintf("msg: window access %d+%d outside %d bytes or unaligned", off, size, len(b)))
	}
	return unsafe.Pointer(unsafe.SliceData(b[off:]))
}

func load64(b []byte, off int) uint64     { return atomic.LoadUint64((*uint64)(word(b, off, 8))) }
func store64(b []byte, off int, v uint64) { atomic.StoreUint64((*uint64)(word(b, off, 8)), v) }
func load32(b []byte, off int) uint32     { return atomic.LoadUint32((*uint32)(word(b, off, 4))) }
func store32(b []byte, off int, v uint32) { atomic.StoreUint32((*uint32)(word(b, off, 4)), v) }

func cas32(b []byte, off int, old, v uint32) bool {
	return atomic.CompareAndSwapUint32((*uint32)(word(b, off, 4)), old, v)
}

func cas64(b []byte, off int, old, v uint64) bool {
	return atomic.CompareAndSwapUint64((*uint64)(word(b, off, 8)), old, v)
}
