package vblk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/virtio"
)

// session is one activation: the queue of this activation, its
// dispatcher and workers. Pops and completions share mu (the queue is not
// safe for concurrent use); the I/O itself runs outside it.
type session struct {
	b    *Block
	h    virtio.Host
	q    *virtio.Queue
	stop chan struct{}
	work chan virtio.Chain

	mu     sync.Mutex
	failed bool
}

// dispatch pops requests on each kick and hands them to the workers;
// it ends at Reset or when the queue breaks, and then ends the workers.
func (s *session) dispatch() {
	defer s.b.wg.Done()
	defer close(s.work)
	for {
		select {
		case <-s.stop:
			return
		case <-s.b.kick:
		}
		for {
			s.mu.Lock()
			if s.failed {
				s.mu.Unlock()
				return
			}
			c, ok, err := s.q.Pop()
			if err != nil {
				s.failLocked(fmt.Errorf("virtio-blk: request queue: %w", err))
			}
			s.mu.Unlock()
			if err != nil {
				return
			}
			if !ok {
				break
			}
			select {
			case s.work <- c:
			case <-s.stop:
				return
			}
		}
	}
}

// work1 runs requests until the dispatcher ends.
func (s *session) work1() {
	defer s.b.wg.Done()
	for c := range s.work {
		written, err := s.b.execute(s.q.Mem, &c)
		s.mu.Lock()
		switch {
		case s.failed:
		case err != nil:
			s.failLocked(fmt.Errorf("virtio-blk: request %d: %w", c.Head, err))
		default:
			s.completeLocked(c.Head, written)
		}
		s.mu.Unlock()
	}
}

func (s *session) completeLocked(head uint16, written uint32) {
	if err := s.q.AddUsed(head, written); err != nil {
		s.failLocked(fmt.Errorf("virtio-blk: request queue: %w", err))
		return
	}
	notify, err := s.q.PublishUsed()
	if err != nil {
		s.failLocked(fmt.Errorf("virtio-blk: request queue: %w", err))
		return
	}
	if notify {
		s.h.Interrupt(0)
	}
}

// failLocked breaks the device once (DEVICE_NEEDS_RESET): nothing more is
// taken from or returned to this activation's queue.
func (s *session) failLocked(err error) {
	if !s.failed {
		s.failed = true
		s.h.Fail(err)
	}
}

// span is a byte range [skip, skip+n) of a chain's readable or writable
// buffers, taken as one stream (the device must not assume how the
// driver split a request into descriptors: virtio 1.2, 2.7.4).
type span struct {
	bufs    []virtio.Buf
	skip, n uint64
}

// each calls f with each piece of s as guest memory and the piece's
// offset into s, through guestmem.Memory.Access: a piece the host cannot
// provide (a passthrough file truncated under its mapping) is
// guestmem.ErrFault, never a crash. f must not touch p once it returns
// but through a system call (transfer's preadv and pwritev: the kernel
// answers a page it cannot provide with EFAULT, not a signal).
func (s span) each(mem *guestmem.Memory, f func(p []byte, off uint64) error) error {
	skip, left, off := s.skip, s.n, uint64(0)
	for _, b := range s.bufs {
		if left == 0 {
			break
		}
		l := uint64(b.Len)
		if skip >= l {
			skip -= l
			continue
		}
		n := min(l-skip, left)
		if err := mem.Access(b.Addr+skip, n, func(p []byte) error { return f(p, off) }); err != nil {
			return err
		}
		skip, left, off = 0, left-n, off+n
	}
	return nil
}

// read copies s out of guest memory.
func (s span) read(mem *guestmem.Memory) ([]byte, error) {
	out := make([]byte, s.n)
	err := s.each(mem, func(p []byte, off uint64) error {
		copy(out[off:], p)
		return nil
	})
	return out, err
}

func total(bufs []virtio.Buf) uint64 {
	var t uint64
	for _, b := range bufs {
		t += uint64(b.Len)
	}
	return t
}

// errMalformed marks a chain the device cannot even answer.
var errMalformed = errors.New("malformed request")

// execute runs one request and writes its status byte; written is what
// it wrote into the chain's writable buffers. An error means the chain
// has no room for the header or the status, or lies outside guest
// memory: the device must be reset.
func (b *Block) execute(mem *guestmem.Memory, c *virtio.Chain) (written uint32, err error) {
	rd, wr := total(c.Readable), total(c.Writable)
	if rd < HeaderLen || wr < 1 {
		return 0, fmt.Errorf("%w: %d readable bytes (a %d-byte header needed), %d writable (a status byte needed)", errMalformed, rd, HeaderLen, wr)
	}
	hdr, err := span{c.Readable, 0, HeaderLen}.read(mem)
	if err != nil {
		return 0, err
	}
	le := binary.LittleEndian
	typ, sector := le.Uint32(hdr[0:]), le.Uint64(hdr[8:])
	out := span{c.Readable, HeaderLen, rd - HeaderLen}
	in := span{c.Writable, 0, wr - 1}
	status, n := b.run(mem, typ, sector, out, in)
	at, _ := lastByte(c.Writable)
	if err := mem.Write(at, []byte{status}); err != nil {
		return 0, err
	}
	return uint32(n + 1), nil
}

// lastByte is the address of the last byte of bufs (total > 0).
func lastByte(bufs []virtio.Buf) (uint64, uint64) {
	for i := len(bufs) - 1; i >= 0; i-- {
		if bufs[i].Len > 0 {
			return bufs[i].Addr + uint64(bufs[i].Len) - 1, 1
		}
	}
	return 0, 0
}

// transfer reads the disk from sector into s's guest memory, or writes
// s to it: by a VectorBackend in one call where it can, or a ReadAt or
// WriteAt per piece.
func (b *Block) transfer(mem *guestmem.Memory, s span, sector uint64, write bool) error {
	base := int64(sector * SectorSize)
	vb, ok := b.cfg.Backend.(VectorBackend)
	if !ok {
		return s.each(mem, func(p []byte, off uint64) error {
			var err error
			if write {
				_, err = b.cfg.Backend.WriteAt(p, base+int64(off))
			} else {
				_, err = b.cfg.Backend.ReadAt(p, base+int64(off))
			}
			return err
		})
	}
	var iov [][]byte
	if err := s.each(mem, func(p []byte, _ uint64) error {
		iov = append(iov, p)
		return nil
	}); err != nil {
		return err
	}
	if write {
		return vb.WritevAt(iov, base)
	}
	return vb.ReadvAt(iov, base)
}

// run carries out a request: its status, and how many bytes of in it
// filled.
func (b *Block) run(mem *guestmem.Memory, typ uint32, sector uint64, out, in span) (byte, uint64) {
	switch typ {
	case TypeIn:
		if !b.inRange(sector, in.n) {
			return b.refuse("read", sector, in.n), 0
		}
		b.reads.Add(1)
		err := b.transfer(mem, in, sector, false)
		if err != nil {
			return b.ioError("read", sector, err), 0
		}
		b.readBytes.Add(in.n)
		return StatusOK, in.n
	case TypeOut:
		if b.cfg.ReadOnly || !b.inRange(sector, out.n) {
			return b.refuse("write", sector, out.n), 0
		}
		b.writes.Add(1)
		err := b.transfer(mem, out, sector, true)
		if err != nil {
			return b.ioError("write", sector, err), 0
		}
		b.writeBytes.Add(out.n)
		return StatusOK, 0
	case TypeFlush:
		b.flushes.Add(1)
		if b.cfg.ReadOnly {
			return StatusOK, 0
		}
		if err := b.cfg.Backend.Flush(); err != nil {
			return b.ioError("flush", 0, err), 0
		}
		return StatusOK, 0
	case TypeGetID:
		id := make([]byte, IDBytes)
		copy(id, b.cfg.Serial)
		n := min(in.n, IDBytes)
		err := span{in.bufs, 0, n}.each(mem, func(p []byte, off uint64) error {
			copy(p, id[off:])
			return nil
		})
		if err != nil {
			return b.ioError("get-id", 0, err), 0
		}
		return StatusOK, n
	case TypeDiscard, TypeWriteZeroes:
		return b.ranges(mem, typ, out), 0
	}
	b.refused.Add(1)
	b.warnings.Warn("virtio-blk: unsupported request", "type", typ)
	return StatusUnsupp, 0
}

// inRange says whether n bytes from sector are whole sectors inside the
// disk.
func (b *Block) inRange(sector, n uint64) bool {
	return n%SectorSize == 0 && sector <= b.sectors && n/SectorSize <= b.sectors-sector
}

// ranges runs DISCARD or WRITE_ZEROES: out holds the segments.
func (b *Block) ranges(mem *guestmem.Memory, typ uint32, out span) byte {
	what := "discard"
	if typ == TypeWriteZeroes {
		what = "write-zeroes"
	}
	if b.cfg.ReadOnly || out.n == 0 || out.n%segmentLen != 0 || out.n/segmentLen > maxSegments ||
		(typ == TypeDiscard && b.offered&FeatureDiscard == 0) {
		return b.refuse(what, 0, out.n)
	}
	segs, err := out.read(mem)
	if err != nil {
		return b.ioError(what, 0, err)
	}
	le := binary.LittleEndian
	for i := 0; i < len(segs); i += segmentLen {
		sector, num, flags := le.Uint64(segs[i:]), uint64(le.Uint32(segs[i+8:])), le.Uint32(segs[i+12:])
		if num > maxRangeSectors || !b.inRange(sector, num*SectorSize) || flags&^1 != 0 || (typ == TypeDiscard && flags != 0) {
			if flags&^1 != 0 || (typ == TypeDiscard && flags != 0) {
				b.refused.Add(1)
				return StatusUnsupp
			}
			return b.refuse(what, sector, num*SectorSize)
		}
	}
	b.discards.Add(1)
	for i := 0; i < len(segs); i += segmentLen {
		off, n := int64(le.Uint64(segs[i:])*SectorSize), int64(le.Uint32(segs[i+8:]))*SectorSize
		var err error
		if typ == TypeDiscard {
			err = b.cfg.Backend.Discard(off, n)
		} else {
			err = b.cfg.Backend.WriteZeroes(off, n, le.Uint32(segs[i+12:])&1 != 0)
		}
		if err != nil {
			return b.ioError(what, uint64(off/SectorSize), err)
		}
	}
	return StatusOK
}

// refuse completes a request that a check stopped before the backend.
func (b *Block) refuse(what string, sector, n uint64) byte {
	b.refused.Add(1)
	b.warnings.Warn("virtio-blk: request refused", "op", what, "sector", sector, "bytes", n,
		"capacity_sectors", b.sectors, "read_only", b.cfg.ReadOnly)
	return StatusIOErr
}

// ioError completes a request the host failed.
func (b *Block) ioError(what string, sector uint64, err error) byte {
	b.errs.Add(1)
	b.warnings.Warn("virtio-blk: host I/O error", "op", what, "sector", sector, "err", err)
	return StatusIOErr
}
