// Package virtio is the virtio 1.x device side popvmm's device models
// (virtio-net first) sit on: the modern PCI transport (PCI: capabilities,
// feature negotiation, device status, queue setup, notifications by MMIO
// or ioeventfd, interrupts by MSI-X or INTx and ISR) and the split
// virtqueue walker (Queue). Every descriptor is validated before it
// is used — index, chain length, loops, ordering of readable before
// writable buffers, indirect tables, and guest addresses through guestmem —
// and any violation is an error that marks the queue broken: a guest's
// garbage costs it its device, never popvmm a panic.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/popvmm/popvmm/vmm/guestmem"
)

// Descriptor flags.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

const (
	descSize = 16
	// MaxQueueSize is the largest split queue (virtio 1.x 2.7).
	MaxQueueSize = 32768
	// MaxIndirect bounds an indirect table, in descriptors: a longer one
	// breaks the queue. A device that advertises how many buffers a
	// request may have (virtio-blk's seg_max) counts it in.
	MaxIndirect = 1024
	// availFlagNoInterrupt is VRING_AVAIL_F_NO_INTERRUPT.
	availFlagNoInterrupt = 1
)

// ErrBroken is wrapped by every error that breaks a queue.
var ErrBroken = errors.New("virtqueue broken")

// Buf is one guest buffer of a chain.
type Buf struct {
	Addr uint64
	Len  uint32
}

// Chain is one request: readable buffers (driver → device) then writable
// ones (device → driver).
type Chain struct {
	Head     uint16
	Readable []Buf
	Writable []Buf
	// Indirect: the buffers came from an indirect table, and the chain
	// takes one entry of the queue's descriptor table.
	Indirect bool
}

// Descriptors is how many entries of the queue's descriptor table the
// chain takes until it is returned: one for an indirect chain, one per
// buffer otherwise. A device holding chains whose entries add up to the
// queue's size holds every buffer the driver can post.
func (c *Chain) Descriptors() int {
	if c.Indirect {
		return 1
	}
	return len(c.Readable) + len(c.Writable)
}

// Queue is one split virtqueue as configured by the driver.
type Queue struct {
	Mem      *guestmem.Memory
	Size     uint16 // a power of two
	Desc     uint64 // descriptor table
	Avail    uint64 // driver (available) ring
	Used     uint64 // device (used) ring
	EventIdx bool   // VIRTIO_F_EVENT_IDX negotiated

	lastAvail uint16
	usedIdx   uint16
	published uint16 // usedIdx at the last PublishUsed
	fenceWord uint64
	valid     bool // Validate passed: every ring address below lies in guest memory
	broken    error
}

// Validate checks the queue's configuration; call it when the driver sets
// the queue ready. Pop and Push call it themselves on first use: every ring
// address they compute (Avail+4+2*i, Used+4+8*i, ...) is only safe from
// wrapping past 2^64 because the rings were found whole in guest memory.
func (q *Queue) Validate() error {
	q.valid = false
	if q.Size == 0 || q.Size > MaxQueueSize || q.Size&(q.Size-1) != 0 {
		return q.fail(fmt.Errorf("queue size %d is not a power of two up to %d", q.Size, MaxQueueSize))
	}
	n := uint64(q.Size)
	rings := []struct {
		name      string
		addr, len uint64
		align     uint64
	}{
		{"descriptor table", q.Desc, n * descSize, 16},
		{"available ring", q.Avail, 6 + 2*n, 2},
		{"used ring", q.Used, 6 + 8*n, 4},
	}
	for i, r := range rings {
		if r.addr%r.align != 0 {
			return q.fail(fmt.Errorf("%s at %#x not %d-byte aligned", r.name, r.addr, r.align))
		}
		if _, err := q.Mem.Slice(r.addr, r.len); err != nil {
			return q.fail(fmt.Errorf("%s: %w", r.name, err))
		}
		// The device writes the used ring: over the driver's rings it
		// would feed itself chains without end.
		for _, o := range rings[:i] {
			if r.addr < o.addr+o.len && o.addr < r.addr+r.len {
				return q.fail(fmt.Errorf("%s at %#x+%#x overlaps the %s at %#x+%#x", r.name, r.addr, r.len, o.name, o.addr, o.len))
			}
		}
	}
	q.valid = true
	return nil
}

// ready validates the queue once, before its first use.
func (q *Queue) ready() error {
	if q.broken != nil {
		return q.broken
	}
	if !q.valid {
		return q.Validate()
	}
	return nil
}

func (q *Queue) fail(err error) error {
	if q.broken == nil {
		q.broken = fmt.Errorf("%w: %w", ErrBroken, err)
	}
	return q.broken
}

// Broken returns the error that broke the queue, or nil.
func (q *Queue) Broken() error { return q.broken }

// Pop returns the next available chain, or ok false when there is none.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	ok, err = q.PopInto(&c)
	return c, ok, err
}

// PopInto is Pop into c, reusing the capacity of c's Readable and Writable
// slices, so that a device's steady state allocates nothing.
func (q *Queue) PopInto(c *Chain) (ok bool, err error) {
	c.Head, c.Readable, c.Writable, c.Indirect = 0, c.Readable[:0], c.Writable[:0], false
	if err := q.ready(); err != nil {
		return false, err
	}
	idx, err := q.Mem.ReadU16(q.Avail + 2)
	if err != nil {
		return false, q.fail(err)
	}
	pending := idx - q.lastAvail
	if pending == 0 && q.EventIdx {
		// The driver may have added a chain after reading an avail_event
		// that our last store had not reached yet: order that store before
		// this load (x86 reorders a load before an older store), then look
		// again, so that no notification is lost.
		fence(&q.fenceWord)
		if idx, err = q.Mem.ReadU16(q.Avail + 2); err != nil {
			return false, q.fail(err)
		}
		pending = idx - q.lastAvail
	}
	if pending == 0 {
		return false, nil
	}
	if pending > q.Size {
		return false, q.fail(fmt.Errorf("available index %d is %d ahead of %d, more than the queue's %d", idx, pending, q.lastAvail, q.Size))
	}
	head, err := q.Mem.ReadU16(q.Avail + 4 + 2*uint64(q.lastAvail%q.Size))
	if err != nil {
		return false, q.fail(err)
	}
	if err := q.walk(c, head); err != nil {
		c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
		return false, q.fail(err)
	}
	q.lastAvail++
	if q.EventIdx {
		// avail_event: ask to be notified at the next new buffer.
		if err := q.Mem.WriteU16(q.Used+4+8*uint64(q.Size), q.lastAvail); err != nil {
			return false, q.fail(err)
		}
	}
	return true, nil
}

// Pending reports whether the driver has made chains available that Pop
// has not returned yet.
func (q *Queue) Pending() (bool, error) {
	if err := q.ready(); err != nil {
		return false, err
	}
	idx, err := q.Mem.ReadU16(q.Avail + 2)
	if err != nil {
		return false, q.fail(err)
	}
	return idx != q.lastAvail, nil
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func (q *Queue) readDesc(table uint64, i uint16) (desc, error) {
	var b [descSize]byte
	if err := q.Mem.Read(table+uint64(i)*descSize, b[:]); err != nil {
		return desc{}, err
	}
	return desc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}, nil
}

// walk follows the chain at head into c, through at most one indirect
// table (which must be the chain's only descriptor).
func (q *Queue) walk(c *Chain, head uint16) error {
	if head >= q.Size {
		return fmt.Errorf("head descriptor %d beyond the queue's %d", head, q.Size)
	}
	c.Head = head
	return q.walkFrom(c, q.Desc, uint32(q.Size), head, false)
}

func (q *Queue) walkFrom(c *Chain, table uint64, size uint32, i uint16, indirect bool) error {
	head := c.Head
	for n := uint32(0); ; n++ {
		if n >= size {
			return fmt.Errorf("descriptor chain from %d longer than its table (a loop)", head)
		}
		d, err := q.readDesc(table, i)
		if err != nil {
			return err
		}
		if d.flags&DescIndirect != 0 {
			if indirect {
				return errors.New("nested indirect descriptor table")
			}
			if d.flags&DescNext != 0 || n != 0 {
				return errors.New("indirect descriptor inside a chain")
			}
			if d.len == 0 || d.len%descSize != 0 || d.len/descSize > MaxIndirect {
				return fmt.Errorf("indirect table of %d bytes", d.len)
			}
			if _, err := q.Mem.Slice(d.addr, uint64(d.len)); err != nil {
				return fmt.Errorf("indirect table: %w", err)
			}
			// The whole indirect table from its descriptor 0.
			c.Indirect = true
			return q.walkFrom(c, d.addr, d.len/descSize, 0, true)
		}
		if _, err := q.Mem.Slice(d.addr, uint64(d.len)); err != nil {
			return fmt.Errorf("descriptor %d buffer: %w", i, err)
		}
		b := Buf{Addr: d.addr, Len: d.len}
		if d.flags&DescWrite != 0 {
			c.Writable = append(c.Writable, b)
		} else {
			if len(c.Writable) > 0 {
				return errors.New("readable buffer after a writable one")
			}
			c.Readable = append(c.Readable, b)
		}
		if d.flags&DescNext == 0 {
			return nil
		}
		if uint32(d.next) >= size {
			return fmt.Errorf("next descriptor %d beyond its table's %d", d.next, size)
		}
		i = d.next
	}
}

// Push returns chain head to the driver with written bytes used, and
// reports whether the driver wants an interrupt for it.
func (q *Queue) Push(head uint16, written uint32) (notify bool, err error) {
	if err := q.AddUsed(head, written); err != nil {
		return false, err
	}
	return q.PublishUsed()
}

// AddUsed writes a used element for chain head without showing it to the
// driver: PublishUsed shows every element added since the last one at
// once (a merged receive buffer's chains must appear together).
func (q *Queue) AddUsed(head uint16, written uint32) error {
	if err := q.ready(); err != nil {
		return err
	}
	slot := q.Used + 4 + 8*uint64(q.usedIdx%q.Size)
	if err := q.Mem.WriteU32(slot, uint32(head)); err != nil {
		return q.fail(err)
	}
	if err := q.Mem.WriteU32(slot+4, written); err != nil {
		return q.fail(err)
	}
	q.usedIdx++
	return nil
}

// PublishUsed publishes the used index and reports whether the driver
// wants an interrupt for the elements added since the last publication.
func (q *Queue) PublishUsed() (notify bool, err error) {
	if err := q.ready(); err != nil {
		return false, err
	}
	old := q.published
	if old == q.usedIdx {
		return false, nil
	}
	if err := q.Mem.WriteU16(q.Used+2, q.usedIdx); err != nil { // x86 keeps stores in order
		return false, q.fail(err)
	}
	q.published = q.usedIdx
	// The store of the index must be visible before used_event (or the
	// flags) is read, or an interrupt the driver asked for after reading
	// the old index is lost.
	fence(&q.fenceWord)
	return q.needNotify(old)
}

// needNotify applies the driver's interrupt suppression: used_event with
// EVENT_IDX (vring_need_event), the NO_INTERRUPT flag without.
func (q *Queue) needNotify(old uint16) (bool, error) {
	if q.EventIdx {
		ev, err := q.Mem.ReadU16(q.Avail + 4 + 2*uint64(q.Size))
		if err != nil {
			return false, q.fail(err)
		}
		return q.usedIdx-ev-1 < q.usedIdx-old, nil
	}
	flags, err := q.Mem.ReadU16(q.Avail)
	if err != nil {
		return false, q.fail(err)
	}
	return flags&availFlagNoInterrupt == 0, nil
}

// fence is a full memory barrier: an atomic read-modify-write is a locked
// instruction on amd64, which orders earlier stores before later loads.
func fence(w *uint64) { atomic.AddUint64(w, 0) }
