package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// bindNode applies mbind(MPOL_BIND) to node for mem, before any page of
// it is touched; MPOL_MF_STRICT|MPOL_MF_MOVE moves pages already there.
func bindNode(mem []byte, node int) error {
	const mpolMFStrict, mpolMFMove = 1 << 0, 1 << 1
	mask := make([]uint64, node/64+1)
	mask[node/64] |= 1 << (node % 64)
	// maxnode counts bits; the kernel reads one fewer than given.
	maxnode := uintptr(len(mask)*64 + 1)
	_, _, e := unix.Syscall6(unix.SYS_MBIND, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)),
		unix.MPOL_BIND, uintptr(unsafe.Pointer(&mask[0])), maxnode, mpolMFStrict|mpolMFMove)
	if e != 0 {
		return unix.Errno(e)
	}
	return nil
}

// setThreadName names the calling thread (PR_SET_NAME, at most 15 bytes).
func setThreadName(name string) error {
	b := make([]byte, 16)
	copy(b[:15], name)
	return unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0)
}
