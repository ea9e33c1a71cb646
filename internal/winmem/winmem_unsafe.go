// Package winmem is atomic access to the words of memory that kernels
// share (the messaging window, the window network): every access is
// bounds- and alignment-checked before the pointer is made, without
// touching the memory, and panics outside b or unaligned. Offsets must
// come from a validated layout, never from values read out of the shared
// memory. Used by ipi/msg and winnet.
package winmem

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Offset is a byte offset into the shared memory.
type Offset interface{ ~int | ~uint64 }

func word[O Offset](b []byte, off O, size uint64) unsafe.Pointer {
	if off < 0 || uint64(off) > uint64(len(b)) || size > uint64(len(b))-uint64(off) || uint64(off)%size != 0 {
		panic(fmt.Sprintf("winmem: shared memory access %d+%d outside %d bytes or unaligned", off, size, len(b)))
	}
	return unsafe.Pointer(unsafe.SliceData(b[off:]))
}

// Load64 atomically loads the 64-bit word at off.
func Load64[O Offset](b []byte, off O) uint64 { return atomic.LoadUint64((*uint64)(word(b, off, 8))) }

// Store64 atomically stores v at off.
func Store64[O Offset](b []byte, off O, v uint64) {
	atomic.StoreUint64((*uint64)(word(b, off, 8)), v)
}

// Load32 atomically loads the 32-bit word at off.
func Load32[O Offset](b []byte, off O) uint32 { return atomic.LoadUint32((*uint32)(word(b, off, 4))) }

// Store32 atomically stores v at off.
func Store32[O Offset](b []byte, off O, v uint32) {
	atomic.StoreUint32((*uint32)(word(b, off, 4)), v)
}

// CAS32 is a compare-and-swap of the 32-bit word at off.
func CAS32[O Offset](b []byte, off O, old, v uint32) bool {
	return atomic.CompareAndSwapUint32((*uint32)(word(b, off, 4)), old, v)
}

// CAS64 is a compare-and-swap of the 64-bit word at off.
func CAS64[O Offset](b []byte, off O, old, v uint64) bool {
	return atomic.CompareAndSwapUint64((*uint64)(word(b, off, 8)), old, v)
}
