package ipi

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Window is the shared memory: a memfd of a fixed size.
type Window struct {
	f    *os.File
	size int64
}

// NewWindow creates an anonymous shared window of size bytes (a multiple of
// the page size), sealed against shrinking so no peer can make another's
// mapping fault.
func NewWindow(name string, size int64) (*Window, error) {
	if size <= 0 || size%int64(os.Getpagesize()) != 0 {
		return nil, fmt.Errorf("window size %d is not a positive multiple of the page size", size)
	}
	fd, err := unix.MemfdCreate("popvmm-window-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "popvmm-window-"+name)
	if err := unix.Ftruncate(fd, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size window: %w", os.NewSyscallError("ftruncate", err))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal window: %w", os.NewSyscallError("fcntl", err))
	}
	return &Window{f: f, size: size}, nil
}

// Fd is the window's file descriptor, for passing to peers.
func (w *Window) Fd() int { return int(w.f.Fd()) }

// Size is the window's size in bytes.
func (w *Window) Size() int64 { return w.size }

// Map maps the whole window shared and read-write.
func (w *Window) Map() ([]byte, error) { return MapFd(w.Fd(), w.size) }

// Close closes the window's descriptor; mappings stay valid.
func (w *Window) Close() error { return w.f.Close() }

// MapFd maps size bytes of a window descriptor received from a server.
func MapFd(fd int, size int64) ([]byte, error) {
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map window: %w", os.NewSyscallError("mmap", err))
	}
	return b, nil
}

// Unmap releases a mapping made by Map or MapFd.
func Unmap(b []byte) error { return unix.Munmap(b) }

// fdSize is the size of the file behind fd.
func fdSize(fd int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, os.NewSyscallError("fstat", err)
	}
	return st.Size, nil
}
