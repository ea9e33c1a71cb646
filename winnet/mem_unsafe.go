package winnet

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Atomic access to the window. Offsets come from the validated geometry
// (never from values read out of the window); each access is bounds
// checked before the pointer is made, and the geometry keeps 64-bit words
// 8-byte aligned and 32-bit words 4-byte aligned.

func word(b []byte, off uint64, size uint64) unsafe.Pointer {
	if off > uint64(len(b)) || size > uint64(len(b))-off || off%size != 0 {
		panic(fmt.Sprintf("winnet: window access %d+%d outside %d bytes or unaligned", off, size, len(b)))
	}
	return unsafe.Pointer(unsafe.SliceData(b[off:]))
}

func load64(b []byte, off uint64) uint64     { return atomic.LoadUint64((*uint64)(word(b, off, 8))) }
func store64(b []byte, off uint64, v uint64) { atomic.StoreUint64((*uint64)(word(b, off, 8)), v) }
func load32(b []byte, off uint64) uint32     { return atomic.LoadUint32((*uint32)(word(b, off, 4))) }
func store32(b []byte, off uint64, v uint32) { atomic.StoreUint32((*uint32)(word(b, off, 4)), v) }
