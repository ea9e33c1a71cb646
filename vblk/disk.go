package vblk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Backend holds a disk's bytes. ReadAt and WriteAt run on the device's
// workers, several at once.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size is the disk's size in bytes.
	Size() (int64, error)
	// Flush makes every completed write durable (fdatasync).
	Flush() error
	// CanDiscard says whether Discard deallocates (the host file
	// system punches holes).
	CanDiscard() bool
	// Discard deallocates [off, off+n); reads of it return zeroes.
	Discard(off, n int64) error
	// WriteZeroes zeroes [off, off+n), deallocating it when unmap allows
	// and the host can.
	WriteZeroes(off, n int64, unmap bool) error
}

// VectorBackend is a Backend that moves a request's buffers, which lie
// one after the other on the disk from off, in one system call (preadv,
// pwritev), as QEMU's file driver does: a request's data is often a dozen
// guest pages or more, and a call per page costs a system call each.
// The buffers may be modified (resliced) by the call.
type VectorBackend interface {
	ReadvAt(bufs [][]byte, off int64) error
	WritevAt(bufs [][]byte, off int64) error
}

// Disk is an open disk image or block device, locked for as long as it is
// open with OFD locks in QEMU's scheme (lock): no two writers, and no
// writer beside readers, share a disk, while readers share it — another
// popvmm cluster or a QEMU included.
type Disk struct {
	f        *os.File
	path     string
	readOnly bool
	block    bool // a block device, not a regular file
	discard  bool
}

var _ Backend = (*Disk)(nil)

// ErrLocked is wrapped by OpenDisk's error for a disk another process
// holds.
var ErrLocked = errors.New("disk is in use")

// OpenDisk opens path (a regular file or a block device) and locks it. A
// disk another process holds in a conflicting way is refused with
// ErrLocked, naming the holder when /proc shows it. The size must be a
// whole number of 512-byte sectors.
func OpenDisk(path string, readOnly bool) (*Disk, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", path, err)
	}
	d := &Disk{f: f, path: path, readOnly: readOnly}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk %s: %w", path, err)
	}
	switch {
	case st.Mode().IsRegular():
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.block = true
	default:
		f.Close()
		return nil, fmt.Errorf("disk %s: not a regular file or block device (%s)", path, st.Mode().Type())
	}
	if err := d.lock(); err != nil {
		f.Close()
		return nil, err
	}
	size, err := d.Size()
	if err != nil {
		f.Close()
		return nil, err
	}
	if size%SectorSize != 0 {
		f.Close()
		return nil, fmt.Errorf("disk %s: %d bytes is not a whole number of %d-byte sectors", path, size, SectorSize)
	}
	if !readOnly && !d.block {
		// Punch a hole past the end (nothing there, the size kept): it
		// works where the file system can deallocate.
		d.discard = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, size, SectorSize) == nil
	}
	return d, nil
}

// Image locking as QEMU does it (block/file-posix.c, raw_apply_lock_bytes),
// so that popvmm and QEMU see each other's disks: a shared OFD lock on
// byte lockPermBase+p says "I use permission p", one on lockSharedBase+p
// "I let nobody else have p". Permission bits: BLK_PERM_CONSISTENT_READ
// (0), BLK_PERM_WRITE (1), BLK_PERM_WRITE_UNCHANGED (2), BLK_PERM_RESIZE
// (3) (include/block/block-common.h).
const (
	lockPermBase   = 100
	lockSharedBase = 200

	permConsistentRead = 0
	permWrite          = 1
	permResize         = 3
)

// lockPlan is the permissions a disk uses and those it denies others: a
// writable disk reads and writes and lets nobody else read, write or
// resize it; a read-only one reads and lets nobody write or resize it,
// while any number of readers share it.
func (d *Disk) lockPlan() (use, deny []int64) {
	if d.readOnly {
		return []int64{permConsistentRead}, []int64{permWrite, permResize}
	}
	return []int64{permConsistentRead, permWrite}, []int64{permConsistentRead, permWrite, permResize}
}

// lock checks that no other holder denies a permission the disk uses or
// uses one it denies (F_OFD_GETLK), then takes its shared lock bytes
// (F_OFD_SETLK), as QEMU does.
func (d *Disk) lock() error {
	use, deny := d.lockPlan()
	held := func(b int64) (bool, error) {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
		if err := unix.FcntlFlock(d.f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			return false, fmt.Errorf("disk %s: lock: %w", d.path, err)
		}
		return lk.Type != unix.F_UNLCK, nil
	}
	how := "writable"
	if d.readOnly {
		how = "read-only"
	}
	refused := func(what string) error {
		return fmt.Errorf("disk %s: %w: %s %s, so it cannot be attached %s", d.path, ErrLocked, Holders(d.f), what, how)
	}
	for _, p := range use {
		if h, err := held(lockSharedBase + p); err != nil {
			return err
		} else if h {
			return refused("holds it and lets nobody " + permName(p) + " it")
		}
	}
	for _, p := range deny {
		if h, err := held(lockPermBase + p); err != nil {
			return err
		} else if h {
			return refused("holds it to " + permName(p) + " it")
		}
	}
	for _, b := range append(offsets(lockPermBase, use), offsets(lockSharedBase, deny)...) {
		lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: b, Len: 1}
		if err := unix.FcntlFlock(d.f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return refused("holds it")
			}
			return fmt.Errorf("disk %s: lock: %w", d.path, err)
		}
	}
	return nil
}

func offsets(base int64, perms []int64) []int64 {
	out := make([]int64, len(perms))
	for i, p := range perms {
		out[i] = base + p
	}
	return out
}

func permName(p int64) string {
	switch p {
	case permConsistentRead:
		return "read"
	case permWrite:
		return "write"
	}
	return "resize"
}

// Holders names the processes other than this one that have the file
// open (from /proc/PID/fd), e.g. `qemu-system-x86 (pid 812)`, or says
// that none could be found (another user's processes are not visible).
func Holders(f *os.File) string {
	var sys unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &sys); err != nil {
		return "another process"
	}
	self := os.Getpid()
	procs, _ := os.ReadDir("/proc")
	var names []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			var s unix.Stat_t
			if unix.Stat(filepath.Join("/proc", p.Name(), "fd", fd.Name()), &s) != nil || s.Dev != sys.Dev || s.Ino != sys.Ino {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
			names = append(names, fmt.Sprintf("%s (pid %d)", strings.TrimSpace(string(comm)), pid))
			break
		}
	}
	if len(names) == 0 {
		return "another process (not visible in /proc)"
	}
	return strings.Join(names, ", ")
}

// Path is where the disk was opened.
func (d *Disk) Path() string { return d.path }

// ReadOnly says whether the disk was opened read-only.
func (d *Disk) ReadOnly() bool { return d.readOnly }

// ReadAt implements io.ReaderAt.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// ReadvAt implements VectorBackend: one preadv(2) (more on a short
// read) fills bufs from off on.
func (d *Disk) ReadvAt(bufs [][]byte, off int64) error {
	return d.vectored(bufs, off, unix.Preadv, "read")
}

// WritevAt implements VectorBackend: one pwritev(2) (more on a short
// write) writes bufs from off on.
func (d *Disk) WritevAt(bufs [][]byte, off int64) error {
	return d.vectored(bufs, off, unix.Pwritev, "write")
}

// maxIOV bounds the buffers of one call (IOV_MAX, <limits.h>).
const maxIOV = 1024

// vectored runs op over bufs, at most maxIOV at a time, until all of them are transferred; a read
// that meets the end of the file is io.ErrUnexpectedEOF.
func (d *Disk) vectored(bufs [][]byte, off int64, op func(int, [][]byte, int64) (int, error), what string) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("disk %s: %s: %w", d.path, what, err)
	}
	var opErr error
	err = rc.Control(func(fd uintptr) {
		for len(bufs) > 0 {
			n, err := op(int(fd), bufs[:min(len(bufs), maxIOV)], off)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				opErr = err
				return
			}
			if n == 0 {
				opErr = io.ErrUnexpectedEOF
				return
			}
			off += int64(n)
			for n > 0 && len(bufs) > 0 {
				k := min(n, len(bufs[0]))
				bufs[0], n = bufs[0][k:], n-k
				if len(bufs[0]) == 0 {
					bufs = bufs[1:]
				}
			}
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return fmt.Errorf("disk %s: %s at %d: %w", d.path, what, off, err)
	}
	return nil
}

// Size implements Backend: the file's size, or the block device's.
func (d *Disk) Size() (int64, error) {
	if d.block {
		n, err := d.f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("disk %s: size: %w", d.path, err)
		}
		return n, nil
	}
	st, err := d.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("disk %s: %w", d.path, err)
	}
	return st.Size(), nil
}

// Flush implements Backend: fdatasync.
func (d *Disk) Flush() error {
	for {
		err := unix.Fdatasync(int(d.f.Fd()))
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return fmt.Errorf("disk %s: fdatasync: %w", d.path, err)
			}
			return nil
		}
	}
}

// CanDiscard implements Backend.
func (d *Disk) CanDiscard() bool { return d.discard }

// Discard implements Backend: a punched hole.
func (d *Disk) Discard(off, n int64) error {
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// WriteZeroes implements Backend: a punched hole when unmap is allowed,
// else FALLOC_FL_ZERO_RANGE, else zeroes written.
func (d *Disk) WriteZeroes(off, n int64, unmap bool) error {
	fd := int(d.f.Fd())
	if !d.block {
		if unmap && d.discard && unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
			return nil
		}
		if unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
			return nil
		}
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := d.f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Close flushes a writable disk and closes it, which drops its lock.
func (d *Disk) Close() error {
	var err error
	if !d.readOnly {
		err = d.Flush()
	}
	return errors.Join(err, d.f.Close())
}
