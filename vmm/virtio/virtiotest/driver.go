// Package virtiotest plays the guest's side of a virtio device over the
// modern PCI transport, the way Linux's virtio_pci_modern and virtio_ring
// drivers do, on fake guest memory: for device tests, fuzzing and
// benchmarks without a VM.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/pci"
	"github.com/popvmm/popvmm/vmm/virtio"
)

// RAMSize is the fake guest's memory, at guest-physical 0.
const RAMSize = 16 << 20

// Router is an MSIRouter that records routes and turns each signal into a
// token on the vector's channel (buffered, one token: a coalesced
// interrupt), so tests wait on interrupts without sleeping.
type Router struct {
	mu      sync.Mutex
	routes  map[int]pci.MSIRoute
	Signals []chan struct{}
}

// NewRouter makes a router for n vectors.
func NewRouter(n int) *Router {
	r := &Router{routes: map[int]pci.MSIRoute{}}
	for range n {
		r.Signals = append(r.Signals, make(chan struct{}, 1))
	}
	return r
}

// SetRoute implements pci.MSIRouter.
func (r *Router) SetRoute(v int, rt pci.MSIRoute) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[v] = rt
	return nil
}

// Route is the last route of vector v.
func (r *Router) Route(v int) pci.MSIRoute {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.routes[v]
}

// Signal implements pci.MSIRouter.
func (r *Router) Signal(v int) error {
	if v < len(r.Signals) {
		select {
		case r.Signals[v] <- struct{}{}:
		default:
		}
	}
	return nil
}

// Driver is the guest driver of one transport.
type Driver struct {
	T     testing.TB
	P     *virtio.PCI
	Bus   *pci.Bus
	Ports *pci.Ports
	Dev   int // device number on Bus
	RAM   []byte
	Mem   *guestmem.Memory

	// From the capabilities, offsets into BAR0.
	Common, Notify, ISR, DevCfg uint32
	NotifyMult                  uint32
	MSIXCap                     int // config-space offset of the MSI-X capability

	next   uint64 // bump allocator in RAM
	Queues []*DriverQueue
}

// NewMemory makes the fake guest's memory, RAMSize bytes.
func NewMemory(t testing.TB) ([]byte, *guestmem.Memory) { return NewMemorySize(t, RAMSize) }

// NewMemorySize makes size bytes of fake guest memory. Like a VM's, it is
// mapped outside the Go heap, so that the race detector does not take the
// driver and the device sharing rings for a data race in the test: the
// rings are ordered by the virtio protocol, not by Go's memory model.
func NewMemorySize(t testing.TB, size int) ([]byte, *guestmem.Memory) {
	t.Helper()
	ram, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("map fake guest memory: %v", err)
	}
	m, err := guestmem.New(guestmem.Region{GPA: 0, Mem: ram})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(ram) })
	return ram, m
}

// New puts p on a fresh PCI bus and probes it the way
// virtio_pci_modern_probe does.
func New(t testing.TB, p *virtio.PCI, ram []byte, mem *guestmem.Memory) *Driver {
	t.Helper()
	b := pci.NewBus()
	d, err := b.Add(p)
	if err != nil {
		t.Fatal(err)
	}
	drv := &Driver{T: t, P: p, Bus: b, Ports: b.ConfigPorts(), Dev: d, RAM: ram, Mem: mem, next: 0x10000}
	if err := drv.Probe(); err != nil {
		t.Fatal(err)
	}
	return drv
}

// ConfigRead32 reads configuration space through mechanism #1.
func (d *Driver) ConfigRead32(reg int) uint32 {
	d.Ports.Write(0, binary.LittleEndian.AppendUint32(nil, 1<<31|uint32(d.Dev)<<11|uint32(reg&0xfc)))
	b := make([]byte, 4)
	d.Ports.Read(4, b)
	return binary.LittleEndian.Uint32(b)
}

// ConfigWrite writes 1, 2 or 4 bytes of configuration space.
func (d *Driver) ConfigWrite(reg int, data []byte) {
	d.Ports.Write(0, binary.LittleEndian.AppendUint32(nil, 1<<31|uint32(d.Dev)<<11|uint32(reg&0xfc)))
	d.Ports.Write(4+uint64(reg&3), data)
}

// Probe reads the identity and walks the capability list, as Linux's
// virtio_pci_find_capability does, checking what Linux checks.
func (d *Driver) Probe() error {
	id := d.ConfigRead32(pci.OffVendor)
	if id&0xffff != 0x1af4 || id>>16 < 0x1040 || id>>16 > 0x107f {
		return fmt.Errorf("ids %#x: not a modern virtio device", id)
	}
	if st := d.ConfigRead32(pci.OffCommand) >> 16; st&pci.StatusCapList == 0 {
		return fmt.Errorf("status %#x: no capability list", st)
	}
	bar := uint64(d.ConfigRead32(pci.OffBAR0)&^0xf) | uint64(d.ConfigRead32(pci.OffBAR0+4))<<32
	if bar != d.P.BARAddr() {
		return fmt.Errorf("BAR0 %#x, transport says %#x", bar, d.P.BARAddr())
	}
	seen := map[uint8]bool{}
	for ptr, n := int(d.ConfigRead32(pci.OffCapPtr)&0xfc), 0; ptr != 0; n++ {
		if n > 48 {
			return fmt.Errorf("capability list loops")
		}
		h := d.ConfigRead32(ptr)
		switch h & 0xff {
		case pci.CapMSIX:
			d.MSIXCap = ptr
		case pci.CapVendor:
			typ, barIdx, capLen := uint8(h>>24), uint8(d.ConfigRead32(ptr+4)), uint8(h>>16)
			off, length := d.ConfigRead32(ptr+8), d.ConfigRead32(ptr+12)
			if barIdx > 5 {
				return fmt.Errorf("capability type %d in BAR %d", typ, barIdx)
			}
			if typ != 5 && uint64(off)+uint64(length) > virtio.BARSize {
				return fmt.Errorf("capability type %d at %#x+%#x beyond BAR0", typ, off, length)
			}
			if seen[typ] {
				break // Linux takes the first of each type
			}
			seen[typ] = true
			switch typ {
			case 1:
				if length < 0x38 || off%4 != 0 {
					return fmt.Errorf("common configuration %#x+%#x", off, length)
				}
				d.Common = off
			case 2:
				if capLen < 20 {
					return fmt.Errorf("notify capability of %d bytes", capLen)
				}
				d.Notify, d.NotifyMult = off, d.ConfigRead32(ptr+16)
			case 3:
				if length < 1 {
					return fmt.Errorf("ISR of %d bytes", length)
				}
				d.ISR = off
			case 4:
				d.DevCfg = off
			}
		}
		ptr = int(h>>8) & 0xfc
	}
	for _, typ := range []uint8{1, 2, 3, 4, 5} {
		if !seen[typ] {
			return fmt.Errorf("no capability of type %d", typ)
		}
	}
	if d.MSIXCap == 0 {
		return fmt.Errorf("no MSI-X capability")
	}
	return nil
}

// Read and Write access BAR0 as MMIO.
func (d *Driver) Read(off uint32, n int) uint64 {
	b := make([]byte, n)
	d.P.Read(uint64(off), b)
	var v uint64
	for i := range b {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}

func (d *Driver) Write(off uint32, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	d.P.Write(uint64(off), b)
}

// Status reads device status.
func (d *Driver) Status() uint8 { return uint8(d.Read(d.Common+0x14, 1)) }

// SetStatus writes device status.
func (d *Driver) SetStatus(s uint8) { d.Write(d.Common+0x14, 1, uint64(s)) }

// EnableMSIX sets MSI-X enable and programs and unmasks every vector.
func (d *Driver) EnableMSIX() {
	ctrl := d.ConfigRead32(d.MSIXCap) >> 16
	n := int(ctrl&0x7ff) + 1
	d.ConfigWrite(d.MSIXCap+2, []byte{byte(ctrl), 0x80})
	for v := range n {
		base := uint64(0x4000 + 16*v)
		d.P.Write(base, binary.LittleEndian.AppendUint32(nil, 0xfee00000))
		d.P.Write(base+4, binary.LittleEndian.AppendUint32(nil, 0))
		d.P.Write(base+8, binary.LittleEndian.AppendUint32(nil, uint32(0x40+v)))
		d.P.Write(base+12, binary.LittleEndian.AppendUint32(nil, 0))
	}
}

// Negotiate resets the device and negotiates want & offered, as
// virtio_dev_probe does; it returns the features and whether the device
// accepted them (FEATURES_OK read back).
func (d *Driver) Negotiate(want uint64) (uint64, bool) {
	d.SetStatus(0)
	for d.Status() != 0 {
	}
	d.SetStatus(virtio.StatusAcknowledge)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	var offered uint64
	for sel := range uint64(2) {
		d.Write(d.Common+0x00, 4, sel)
		offered |= d.Read(d.Common+0x04, 4) << (32 * sel)
	}
	f := want & offered
	d.WriteFeatures(f)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	return f, d.Status()&virtio.StatusFeaturesOK != 0
}

// WriteFeatures writes the driver feature bits.
func (d *Driver) WriteFeatures(f uint64) {
	for sel := range uint64(2) {
		d.Write(d.Common+0x08, 4, sel)
		d.Write(d.Common+0x0c, 4, f>>(32*sel)&0xffffffff)
	}
}

// DriverQueue is the driver's view of one split queue.
type DriverQueue struct {
	d                 *Driver
	Index             int
	Size              uint16
	Desc, Avail, Used uint64
	free              []uint16
	availIdx          uint16
	lastUsed          uint16
	ids               map[uint16][]uint16 // chain head → its descriptors
}

func (d *Driver) alloc(n, align uint64) uint64 {
	a := (d.next + align - 1) &^ (align - 1)
	if a+n > uint64(len(d.RAM)) {
		d.T.Fatalf("fake guest memory exhausted")
	}
	d.next = a + n
	return a
}

// Alloc takes n bytes of guest memory for buffers.
func (d *Driver) Alloc(n uint64) uint64 { return d.alloc(n, 64) }

// SetupQueue selects queue i, sizes it (0: the device's maximum), places
// its rings, gives it MSI-X vector (virtio.NoVector for none) and enables
// it.
func (d *Driver) SetupQueue(i int, size uint16, vector uint16) *DriverQueue {
	c := d.Common
	d.Write(c+0x16, 2, uint64(i))
	if max := uint16(d.Read(c+0x18, 2)); size == 0 || size > max {
		size = max
	}
	d.Write(c+0x18, 2, uint64(size))
	q := &DriverQueue{d: d, Index: i, Size: size, ids: map[uint16][]uint16{}}
	q.Desc = d.alloc(16*uint64(size), 4096)
	q.Avail = d.alloc(6+2*uint64(size), 64)
	q.Used = d.alloc(6+8*uint64(size), 4096)
	for j := range size {
		q.free = append(q.free, j)
	}
	d.Write(c+0x20, 4, q.Desc&0xffffffff)
	d.Write(c+0x24, 4, q.Desc>>32)
	d.Write(c+0x28, 8, q.Avail)
	d.Write(c+0x30, 8, q.Used)
	d.Write(c+0x1a, 2, uint64(vector))
	d.Write(c+0x1c, 2, 1)
	for len(d.Queues) <= i {
		d.Queues = append(d.Queues, nil)
	}
	d.Queues[i] = q
	return q
}

// Buf is one buffer of a chain the driver offers.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// Offer chains bufs from free descriptors and makes the chain available;
// it returns the head, or false when the queue is full.
func (q *DriverQueue) Offer(bufs ...Buf) (uint16, bool) {
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, false
	}
	m := q.d.Mem
	ids := q.free[:len(bufs)]
	q.free = q.free[len(bufs):]
	for k, b := range bufs {
		at := q.Desc + 16*uint64(ids[k])
		var flags uint16
		var next uint16
		if b.Write {
			flags |= virtio.DescWrite
		}
		if k+1 < len(bufs) {
			flags |= virtio.DescNext
			next = ids[k+1]
		}
		m.WriteU64(at, b.Addr)
		m.WriteU32(at+8, b.Len)
		m.WriteU16(at+12, flags)
		m.WriteU16(at+14, next)
	}
	head := ids[0]
	q.ids[head] = append([]uint16(nil), ids...)
	m.WriteU16(q.Avail+4+2*uint64(q.availIdx%q.Size), head)
	q.availIdx++
	m.WriteU16(q.Avail+2, q.availIdx)
	return head, true
}

// OfferIndirect makes bufs available as one chain through an indirect
// table (VIRTIO_F_INDIRECT_DESC) in fresh guest memory: the chain takes one
// descriptor of the queue's table. It returns the head, or false when the
// queue is full.
func (q *DriverQueue) OfferIndirect(bufs ...Buf) (uint16, bool) {
	if len(bufs) == 0 || len(q.free) == 0 {
		return 0, false
	}
	m := q.d.Mem
	table := q.d.alloc(16*uint64(len(bufs)), 16)
	for k, b := range bufs {
		at := table + 16*uint64(k)
		var flags uint16
		if b.Write {
			flags |= virtio.DescWrite
		}
		if k+1 < len(bufs) {
			flags |= virtio.DescNext
		}
		m.WriteU64(at, b.Addr)
		m.WriteU32(at+8, b.Len)
		m.WriteU16(at+12, flags)
		m.WriteU16(at+14, uint16(k+1))
	}
	head := q.free[0]
	q.free = q.free[1:]
	at := q.Desc + 16*uint64(head)
	m.WriteU64(at, table)
	m.WriteU32(at+8, uint32(16*len(bufs)))
	m.WriteU16(at+12, virtio.DescIndirect)
	m.WriteU16(at+14, 0)
	q.ids[head] = []uint16{head}
	m.WriteU16(q.Avail+4+2*uint64(q.availIdx%q.Size), head)
	q.availIdx++
	m.WriteU16(q.Avail+2, q.availIdx)
	return head, true
}

// Kick notifies the device of the queue, through the notify register.
func (q *DriverQueue) Kick() {
	q.d.Write(q.d.Notify+uint32(q.Index)*q.d.NotifyMult, 2, uint64(q.Index))
}

// SetUsedEvent writes used_event (EVENT_IDX): interrupt when the used
// index passes idx.
func (q *DriverQueue) SetUsedEvent(idx uint16) {
	q.d.Mem.WriteU16(q.Avail+4+2*uint64(q.Size), idx)
}

// Used is one used element.
type Used struct {
	Head uint16
	Len  uint32
}

// TakeUsed returns the used elements the device published since the last
// call and frees their descriptors.
func (q *DriverQueue) TakeUsed() []Used {
	m := q.d.Mem
	idx, _ := m.ReadU16(q.Used + 2)
	var out []Used
	for ; q.lastUsed != idx; q.lastUsed++ {
		at := q.Used + 4 + 8*uint64(q.lastUsed%q.Size)
		id, _ := m.ReadU32(at)
		l, _ := m.ReadU32(at + 4)
		out = append(out, Used{uint16(id), l})
		q.free = append(q.free, q.ids[uint16(id)]...)
		delete(q.ids, uint16(id))
	}
	return out
}
