package virtio_test

import (
	"errors"
	"testing"

	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/virtio"
)

// Guest memory layout for the tests: 64 KiB of RAM with the queue's
// structures at fixed places and data buffers above 0x8000.
const (
	qsize   = 8
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	indAt   = 0x4000
	bufAt   = 0x8000
)

type guest struct {
	t   *testing.T
	mem *guestmem.Memory
	q   *virtio.Queue
}

func newGuest(t *testing.T, eventIdx bool) *guest {
	m, err := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x10000)})
	if err != nil {
		t.Fatal(err)
	}
	q := &virtio.Queue{Mem: m, Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt, EventIdx: eventIdx}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	return &guest{t: t, mem: m, q: q}
}

func (g *guest) desc(table uint64, i uint16, addr uint64, l uint32, flags, next uint16) {
	off := table + uint64(i)*16
	g.mem.WriteU64(off, addr)
	g.mem.WriteU32(off+8, l)
	g.mem.WriteU16(off+12, flags)
	g.mem.WriteU16(off+14, next)
}

// offer puts head on the available ring.
func (g *guest) offer(head uint16) {
	idx, _ := g.mem.ReadU16(availAt + 2)
	g.mem.WriteU16(availAt+4+2*uint64(idx%qsize), head)
	g.mem.WriteU16(availAt+2, idx+1)
}

func TestChainReadableThenWritable(t *testing.T) {
	g := newGuest(t, false)
	// A virtio-net tx-like chain: header (readable), packet (readable);
	// and an rx-like chain of one writable buffer.
	g.desc(descAt, 0, bufAt, 12, virtio.DescNext, 1)
	g.desc(descAt, 1, bufAt+0x100, 1500, 0, 0)
	g.desc(descAt, 2, bufAt+0x1000, 2048, virtio.DescWrite, 0)
	g.offer(0)
	g.offer(2)
	c, ok, err := g.q.Pop()
	if err != nil || !ok || c.Head != 0 || len(c.Readable) != 2 || len(c.Writable) != 0 || c.Readable[1].Len != 1500 {
		t.Fatalf("Pop = %+v %v %v", c, ok, err)
	}
	c, ok, err = g.q.Pop()
	if err != nil || !ok || c.Head != 2 || len(c.Writable) != 1 || c.Writable[0].Addr != bufAt+0x1000 {
		t.Fatalf("Pop = %+v %v %v", c, ok, err)
	}
	if _, ok, err := g.q.Pop(); ok || err != nil {
		t.Fatalf("Pop on an empty ring = %v %v", ok, err)
	}
	// Used ring.
	notify, err := g.q.Push(2, 64)
	if err != nil || !notify {
		t.Fatalf("Push = %v %v", notify, err)
	}
	if idx, _ := g.mem.ReadU16(usedAt + 2); idx != 1 {
		t.Errorf("used idx %d", idx)
	}
	if id, _ := g.mem.ReadU32(usedAt + 4); id != 2 {
		t.Errorf("used id %d", id)
	}
	if l, _ := g.mem.ReadU32(usedAt + 8); l != 64 {
		t.Errorf("used len %d", l)
	}
	// The driver asks for no interrupts.
	g.mem.WriteU16(availAt, 1)
	if notify, _ := g.q.Push(0, 0); notify {
		t.Error("interrupt despite VRING_AVAIL_F_NO_INTERRUPT")
	}
}

func TestIndirect(t *testing.T) {
	g := newGuest(t, false)
	g.desc(indAt, 0, bufAt, 10, virtio.DescNext, 1)
	g.desc(indAt, 1, bufAt+0x100, 20, virtio.DescNext|virtio.DescWrite, 2)
	g.desc(indAt, 2, bufAt+0x200, 30, virtio.DescWrite, 0)
	g.desc(descAt, 5, indAt, 3*16, virtio.DescIndirect, 0)
	g.offer(5)
	c, ok, err := g.q.Pop()
	if err != nil || !ok || c.Head != 5 || len(c.Readable) != 1 || len(c.Writable) != 2 {
		t.Fatalf("Pop = %+v %v %v", c, ok, err)
	}
}

func TestEventIdx(t *testing.T) {
	g := newGuest(t, true)
	g.desc(descAt, 0, bufAt, 10, 0, 0)
	for range 3 {
		g.offer(0)
	}
	for range 3 {
		if _, ok, err := g.q.Pop(); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	if ev, _ := g.mem.ReadU16(usedAt + 4 + 8*qsize); ev != 3 {
		t.Errorf("avail_event %d, want 3", ev)
	}
	// used_event = 1: interrupt when the used index passes 1.
	g.mem.WriteU16(availAt+4+2*qsize, 1)
	n1, _ := g.q.Push(0, 0) // used 0→1: not past event 1
	n2, _ := g.q.Push(0, 0) // used 1→2: passes it
	n3, _ := g.q.Push(0, 0) // 2→3: already past
	if n1 || !n2 || n3 {
		t.Errorf("notifications %v %v %v, want false true false", n1, n2, n3)
	}
}

func TestMalformed(t *testing.T) {
	tests := []struct {
		name  string
		setup func(g *guest)
	}{
		{"head out of range", func(g *guest) { g.offer(qsize + 3) }},
		{"loop", func(g *guest) {
			g.desc(descAt, 0, bufAt, 1, virtio.DescNext, 1)
			g.desc(descAt, 1, bufAt, 1, virtio.DescNext, 0)
			g.offer(0)
		}},
		{"next out of range", func(g *guest) { g.desc(descAt, 0, bufAt, 1, virtio.DescNext, 200); g.offer(0) }},
		{"buffer outside RAM", func(g *guest) { g.desc(descAt, 0, 0xfff0, 0x100, 0, 0); g.offer(0) }},
		{"buffer address wraps", func(g *guest) { g.desc(descAt, 0, ^uint64(0)-4, 16, 0, 0); g.offer(0) }},
		{"readable after writable", func(g *guest) {
			g.desc(descAt, 0, bufAt, 1, virtio.DescWrite|virtio.DescNext, 1)
			g.desc(descAt, 1, bufAt, 1, 0, 0)
			g.offer(0)
		}},
		{"nested indirect", func(g *guest) {
			g.desc(indAt, 0, indAt, 16, virtio.DescIndirect, 0)
			g.desc(descAt, 0, indAt, 16, virtio.DescIndirect, 0)
			g.offer(0)
		}},
		{"indirect with next", func(g *guest) { g.desc(descAt, 0, indAt, 16, virtio.DescIndirect|virtio.DescNext, 1); g.offer(0) }},
		{"indirect table misaligned size", func(g *guest) { g.desc(descAt, 0, indAt, 17, virtio.DescIndirect, 0); g.offer(0) }},
		{"avail index runs ahead", func(g *guest) { g.mem.WriteU16(availAt+2, 100) }},
	}
	for _, tt := range tests {
		g := newGuest(t, false)
		tt.setup(g)
		_, ok, err := g.q.Pop()
		if !errors.Is(err, virtio.ErrBroken) || ok {
			t.Errorf("%s: Pop = %v, %v; want ErrBroken", tt.name, ok, err)
			continue
		}
		// Broken stays broken.
		if _, _, err := g.q.Pop(); !errors.Is(err, virtio.ErrBroken) {
			t.Errorf("%s: a broken queue answered again", tt.name)
		}
		if _, err := g.q.Push(0, 0); !errors.Is(err, virtio.ErrBroken) {
			t.Errorf("%s: a broken queue took a used entry", tt.name)
		}
	}
}

func TestValidate(t *testing.T) {
	m, _ := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x10000)})
	for _, q := range []virtio.Queue{
		{Mem: m, Size: 6, Desc: descAt, Avail: availAt, Used: usedAt},
		{Mem: m, Size: 8, Desc: descAt + 1, Avail: availAt, Used: usedAt},
		{Mem: m, Size: 8, Desc: descAt, Avail: availAt, Used: 0xfff8},
		{Mem: m, Size: 0, Desc: descAt, Avail: availAt, Used: usedAt},
	} {
		if err := q.Validate(); !errors.Is(err, virtio.ErrBroken) {
			t.Errorf("Validate(%+v) = %v", q, err)
		}
	}
}

// TestUnvalidatedQueue: Pop and Push validate a queue the driver never
// set ready before computing ring addresses, which would otherwise wrap
// past 2^64 onto guest memory the rings do not occupy.
func TestUnvalidatedQueue(t *testing.T) {
	m, _ := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x10000)})
	m.WriteU16(0, 1) // what Avail+2 wrapped onto would read as an index
	for _, q := range []*virtio.Queue{
		{Mem: m, Size: qsize, Desc: descAt, Avail: ^uint64(0) - 1, Used: usedAt},
		{Mem: m, Size: qsize, Desc: descAt, Avail: availAt, Used: ^uint64(0) - 3},
		{Mem: m, Size: qsize, Desc: ^uint64(0) - 15, Avail: availAt, Used: usedAt},
		{Mem: m, Size: 0, Desc: descAt, Avail: availAt, Used: usedAt},
	} {
		if _, ok, err := q.Pop(); ok || !errors.Is(err, virtio.ErrBroken) {
			t.Errorf("Pop on unvalidated %+v = %v, %v; want ErrBroken", q, ok, err)
		}
		if _, err := q.Push(0, 0); !errors.Is(err, virtio.ErrBroken) {
			t.Errorf("Push on unvalidated %+v = %v; want ErrBroken", q, err)
		}
	}
	q := &virtio.Queue{Mem: m, Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt}
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Errorf("Pop on a good queue never validated = %v, %v; want nothing pending", ok, err)
	}
}

// FuzzQueue treats arbitrary bytes as the guest's descriptor table and
// rings: Pop and Push return chains or errors, never panic, and every
// returned buffer lies in guest memory.
func FuzzQueue(f *testing.F) {
	f.Add(make([]byte, 256), uint16(3))
	f.Add([]byte{0, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0}, uint16(1))
	f.Fuzz(func(t *testing.T, junk []byte, availIdx uint16) {
		m, _ := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x10000)})
		m.Write(descAt, junk[:min(len(junk), 0x3000)])
		m.WriteU16(availAt+2, availIdx)
		for i := range uint64(qsize) {
			if len(junk) > int(i) {
				m.WriteU16(availAt+4+2*i, uint16(junk[i]))
			}
		}
		q := &virtio.Queue{Mem: m, Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt, EventIdx: len(junk)%2 == 0}
		for range 2 * qsize {
			c, ok, err := q.Pop()
			if err != nil || !ok {
				return
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if _, err := m.Slice(b.Addr, uint64(b.Len)); err != nil {
					t.Fatalf("returned buffer %+v outside guest memory", b)
				}
			}
			q.Push(c.Head, 1)
		}
	})
}
