package virtio_test

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/vmm/pci"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// echo is a device with two queues that returns every chain of queue 0
// at once, with the readable bytes as the written length, synchronously in
// Notify (a test device: real ones hand the work to a goroutine).
type echo struct {
	mu       sync.Mutex
	host     virtio.Host
	queues   []*virtio.Queue
	features uint64
	resets   int
	cfg      [8]byte
	failWith error
}

func (e *echo) DeviceID() uint16   { return 1 }
func (e *echo) Class() uint32      { return 0x020000 }
func (e *echo) Features() uint64   { return 1<<5 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc }
func (e *echo) QueueMax() []uint16 { return []uint16{256, 64} }
func (e *echo) ConfigLen() int     { return len(e.cfg) }
func (e *echo) ReadConfig(off int, data []byte) {
	copy(data, e.cfg[off:])
}
func (e *echo) WriteConfig(off int, data []byte) { copy(e.cfg[off:], data) }
func (e *echo) Activate(h virtio.Host, f uint64, qs []*virtio.Queue) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failWith != nil {
		return e.failWith
	}
	e.host, e.features, e.queues = h, f, qs
	return nil
}
func (e *echo) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.host, e.queues = nil, nil
	e.resets++
}
func (e *echo) Notify(q int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.host == nil || q != 0 || e.queues[0] == nil {
		return
	}
	var c virtio.Chain
	for range e.queues[0].Size { // a bounded amount of work per kick
		ok, err := e.queues[0].PopInto(&c)
		if err != nil {
			e.host.Fail(err)
			return
		}
		if !ok {
			return
		}
		n := uint32(0)
		for _, b := range c.Readable {
			n += b.Len
		}
		if notify, err := e.queues[0].Push(c.Head, n); err != nil {
			e.host.Fail(err)
			return
		} else if notify {
			e.host.Interrupt(0)
		}
	}
}

type level struct {
	mu sync.Mutex
	v  bool
}

func (l *level) Set(v bool) { l.mu.Lock(); l.v = v; l.mu.Unlock() }
func (l *level) get() bool  { l.mu.Lock(); defer l.mu.Unlock(); return l.v }

func newTransport(t *testing.T) (*virtiotest.Driver, *echo, *virtiotest.Router, *level) {
	t.Helper()
	ram, mem := virtiotest.NewMemory(t)
	dev := &echo{cfg: [8]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0}}
	r := virtiotest.NewRouter(3)
	irq := &level{}
	p, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: r, IRQ: irq})
	if err != nil {
		t.Fatal(err)
	}
	return virtiotest.New(t, p, ram, mem), dev, r, irq
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5s", what)
	}
}

func TestModernPCILayout(t *testing.T) {
	d, _, _, _ := newTransport(t)
	if id := d.ConfigRead32(pci.OffVendor); id != 0x1041_1af4 {
		t.Errorf("ids %#x, want 1041:1af4", id)
	}
	if rc := d.ConfigRead32(pci.OffRevision); rc != 0x0200_0001 {
		t.Errorf("class/revision %#x, want 0x02000001", rc)
	}
	if bar := d.ConfigRead32(pci.OffBAR0); bar != 0xc000_0004 {
		t.Errorf("BAR0 %#x, want a 64-bit memory BAR at 0xc0000000", bar)
	}
	if pin := d.ConfigRead32(pci.OffIntLine) >> 8 & 0xff; pin != 1 {
		t.Errorf("interrupt pin %d, want INTA", pin)
	}
	if d.Common != 0 || d.ISR != 0x1000 || d.DevCfg != 0x2000 || d.Notify != 0x3000 || d.NotifyMult != virtio.NotifyMultiplier {
		t.Errorf("structures common %#x isr %#x device %#x notify %#x ×%d", d.Common, d.ISR, d.DevCfg, d.Notify, d.NotifyMult)
	}
	if v := d.ConfigRead32(d.MSIXCap) >> 16; v&0x7ff != 2 {
		t.Errorf("MSI-X table size %d, want 3 vectors", v&0x7ff+1)
	}
	if n := d.Read(0x12, 2); n != 2 {
		t.Errorf("num_queues %d, want 2", n)
	}
	for q := range 3 {
		d.Write(0x16, 2, uint64(q))
		size, off := d.Read(0x18, 2), d.Read(0x1e, 2)
		want := []uint64{256, 64, 0}[q]
		if size != want || (q < 2 && off != uint64(q)) {
			t.Errorf("queue %d: size %d notify_off %d, want %d %d", q, size, off, want, q)
		}
		if q < 2 {
			addr, n := d.P.NotifyAddr(q)
			if addr != 0xc000_3000+uint64(4*q) || n != 2 {
				t.Errorf("NotifyAddr(%d) = %#x, %d", q, addr, n)
			}
		}
	}
	if mac := d.Read(d.DevCfg, 4); mac != 0x12005452 {
		t.Errorf("device config %#x", mac)
	}
	// Reads of the wrong width and beyond the structures read as zero.
	if v := d.Read(0x14, 2); v != 0 {
		t.Errorf("16-bit read of device_status = %#x, want 0", v)
	}
	// VIRTIO_PCI_CAP_PCI_CFG: read num_queues through configuration space.
	var cfgCap int
	for ptr := int(d.ConfigRead32(pci.OffCapPtr) & 0xfc); ptr != 0; ptr = int(d.ConfigRead32(ptr)>>8) & 0xfc {
		if h := d.ConfigRead32(ptr); h&0xff == pci.CapVendor && h>>24 == 5 {
			cfgCap = ptr
		}
	}
	d.ConfigWrite(cfgCap+4, []byte{0})
	d.ConfigWrite(cfgCap+8, []byte{0x12, 0, 0, 0})
	d.ConfigWrite(cfgCap+12, []byte{2, 0, 0, 0})
	if v := d.ConfigRead32(cfgCap+16) & 0xffff; v != 2 {
		t.Errorf("num_queues through VIRTIO_PCI_CAP_PCI_CFG = %d, want 2", v)
	}
}

func TestFeatureNegotiation(t *testing.T) {
	d, dev, _, _ := newTransport(t)
	// No VERSION_1: FEATURES_OK does not stick.
	if _, ok := d.Negotiate(1 << 5); ok {
		t.Error("FEATURES_OK accepted without VIRTIO_F_VERSION_1")
	}
	f, ok := d.Negotiate(^uint64(0))
	if !ok || f != 1<<5|virtio.FeatureEventIdx|virtio.FeatureIndirectDesc|virtio.FeatureVersion1 {
		t.Errorf("Negotiate(all) = %#x, %v", f, ok)
	}
	// After FEATURES_OK the features are fixed.
	d.WriteFeatures(virtio.FeatureVersion1)
	d.Write(0x08, 4, 1)
	if hi := d.Read(0x0c, 4); hi != 1 {
		t.Errorf("driver features high %#x after FEATURES_OK, want 1", hi)
	}
	// Features not offered are refused.
	d.SetStatus(0)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	d.WriteFeatures(virtio.FeatureVersion1 | 1<<40)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	if d.Status()&virtio.StatusFeaturesOK != 0 {
		t.Error("FEATURES_OK accepted with a feature that was not offered")
	}
	// DRIVER_OK without FEATURES_OK does not activate.
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusDriverOK)
	if d.Status()&virtio.StatusDriverOK != 0 || dev.host != nil {
		t.Error("DRIVER_OK without FEATURES_OK")
	}
	if dev.resets < 2 {
		t.Errorf("device reset %d times, want every status 0 to reach it", dev.resets)
	}
}

func start(t *testing.T, d *virtiotest.Driver, msix bool) (*virtiotest.DriverQueue, uint64) {
	t.Helper()
	f, ok := d.Negotiate(virtio.FeatureVersion1 | virtio.FeatureEventIdx)
	if !ok {
		t.Fatal("negotiation failed")
	}
	vec := uint16(virtio.NoVector)
	if msix {
		d.EnableMSIX()
		d.Write(0x10, 2, 0) // config vector 0
		vec = 1
	}
	q := d.SetupQueue(0, 16, vec)
	d.SetupQueue(1, 0, virtio.NoVector)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.Status()&virtio.StatusDriverOK == 0 {
		t.Fatal("DRIVER_OK did not stick")
	}
	return q, f
}

func TestQueueNotifyMSIX(t *testing.T) {
	d, dev, r, irq := newTransport(t)
	q, _ := start(t, d, true)
	if !dev.queues[0].EventIdx || dev.queues[0].Size != 16 {
		t.Errorf("device got queue %+v", dev.queues[0])
	}
	if rt := r.Route(1); rt.Masked || rt.Data != 0x41 {
		t.Errorf("vector 1 route %+v", rt)
	}
	buf := d.Alloc(100)
	q.Offer(virtiotest.Buf{Addr: buf, Len: 100})
	q.Kick() // through the notify register
	wait(t, r.Signals[1], "queue interrupt")
	if u := q.TakeUsed(); len(u) != 1 || u[0].Len != 100 {
		t.Errorf("used %+v", u)
	}
	// The ioeventfd path: Kick from another goroutine.
	q.SetUsedEvent(1)
	q.Offer(virtiotest.Buf{Addr: buf, Len: 7})
	done := make(chan struct{})
	go func() { d.P.Kick(0); close(done) }()
	<-done
	wait(t, r.Signals[1], "queue interrupt after Kick")
	if u := q.TakeUsed(); len(u) != 1 || u[0].Len != 7 {
		t.Errorf("used %+v", u)
	}
	if irq.get() {
		t.Error("INTx asserted with MSI-X on")
	}
	// A queue vector the table does not have reads back as NO_VECTOR.
	d.Write(0x16, 2, 1)
	d.Write(0x1a, 2, 9)
	if v := d.Read(0x1a, 2); v != virtio.NoVector {
		t.Errorf("queue vector 9 of 3 reads back %#x", v)
	}
}

func TestQueueINTx(t *testing.T) {
	d, _, r, irq := newTransport(t)
	q, _ := start(t, d, false)
	q.Offer(virtiotest.Buf{Addr: d.Alloc(8), Len: 8})
	q.Kick()
	if !irq.get() {
		t.Fatal("INTx not asserted")
	}
	if st := d.ConfigRead32(pci.OffCommand) >> 16; st&pci.StatusInterrupt == 0 {
		t.Error("PCI status without the interrupt bit")
	}
	if isr := d.Read(d.ISR, 1); isr != 1 {
		t.Errorf("ISR %#x, want 1", isr)
	}
	if irq.get() || d.Read(d.ISR, 1) != 0 {
		t.Error("reading the ISR did not clear it and deassert INTx")
	}
	for _, ch := range r.Signals {
		if len(ch) != 0 {
			t.Error("MSI-X signalled while disabled")
		}
	}
}

func TestBrokenQueueNeedsReset(t *testing.T) {
	d, dev, r, _ := newTransport(t)
	if _, ok := d.Negotiate(virtio.FeatureVersion1); !ok {
		t.Fatal("negotiation failed")
	}
	d.EnableMSIX()
	d.Write(0x10, 2, 0)
	// A descriptor table beyond guest memory.
	d.Write(0x16, 2, 0)
	d.Write(0x20, 8, 1<<40)
	d.Write(0x28, 8, 0x1000)
	d.Write(0x30, 8, 0x2000)
	d.Write(0x1c, 2, 1)
	wait(t, r.Signals[0], "configuration interrupt")
	if d.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("DEVICE_NEEDS_RESET not set")
	}
	if d.Read(0x1c, 2) != 0 {
		t.Error("queue enabled with its rings outside memory")
	}
	// A garbage chain after activation: the device fails itself.
	_, _ = d.Negotiate(virtio.FeatureVersion1)
	if d.Status() != virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK {
		t.Fatalf("status after reset and negotiation %#x", d.Status())
	}
	d.Write(0x10, 2, 0)
	q := d.SetupQueue(0, 8, 1)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	d.Mem.WriteU64(q.Desc, 1<<41) // descriptor 0's buffer outside memory
	d.Mem.WriteU32(q.Desc+8, 64)
	d.Mem.WriteU16(q.Avail+4, 0)
	d.Mem.WriteU16(q.Avail+2, 1)
	q.Kick()
	wait(t, r.Signals[0], "configuration interrupt")
	if d.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("DEVICE_NEEDS_RESET not set after a garbage chain")
	}
	// Activation errors break the device too.
	dev.failWith = errors.New("no tap")
	_, _ = d.Negotiate(virtio.FeatureVersion1)
	d.SetupQueue(0, 8, 1)
	d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.Status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Error("DEVICE_NEEDS_RESET not set after a failed activation")
	}
}

type mover struct {
	moves  [][2]uint64
	refuse uint64 // a move to here is refused, as onto another device
}

func (m *mover) MoveBAR(old, new uint64) error {
	if new == m.refuse {
		return errors.New("overlaps another device")
	}
	m.moves = append(m.moves, [2]uint64{old, new})
	return nil
}

func TestBARMove(t *testing.T) {
	ram, mem := virtiotest.NewMemory(t)
	mv := &mover{}
	p, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{Mem: mem, BARAddr: 0x1_0000_0000, Router: virtiotest.NewRouter(3), Mover: mv})
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, p, ram, mem)
	// Sizing, restored: no move.
	d.ConfigWrite(pci.OffBAR0, []byte{0xff, 0xff, 0xff, 0xff})
	if v := d.ConfigRead32(pci.OffBAR0); v != 0xffff8004 {
		t.Errorf("BAR0 size mask %#x", v)
	}
	d.ConfigWrite(pci.OffBAR0, []byte{0, 0, 0, 0})
	if len(mv.moves) != 0 {
		t.Errorf("moves after sizing: %v", mv.moves)
	}
	d.ConfigWrite(pci.OffBAR0+4, []byte{2, 0, 0, 0})
	if len(mv.moves) != 1 || mv.moves[0] != [2]uint64{0x1_0000_0000, 0x2_0000_0000} {
		t.Errorf("moves %v", mv.moves)
	}
	if a, _ := p.NotifyAddr(1); a != 0x2_0000_3004 {
		t.Errorf("NotifyAddr after the move %#x", a)
	}
}

// TestBARMoveRefused: a move the VMM refuses leaves the transport where it
// was: BAR0 reads back the old address and the notify addresses stay.
func TestBARMoveRefused(t *testing.T) {
	ram, mem := virtiotest.NewMemory(t)
	mv := &mover{refuse: 0xc001_0000}
	p, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: virtiotest.NewRouter(3), Mover: mv})
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, p, ram, mem)
	// BAR0 is a 64-bit BAR: a move is both halves written, low first.
	d.ConfigWrite(pci.OffBAR0, []byte{0x00, 0x00, 0x01, 0xc0})
	d.ConfigWrite(pci.OffBAR0+4, []byte{0, 0, 0, 0})
	if v := uint64(d.ConfigRead32(pci.OffBAR0) &^ 0xf); v != 0xc000_0000 {
		t.Errorf("BAR0 after a refused move reads %#x, want 0xc0000000", v)
	}
	if p.BARAddr() != 0xc000_0000 {
		t.Errorf("transport at %#x after a refused move", p.BARAddr())
	}
	if a, _ := p.NotifyAddr(0); a>>16 != 0xc000 {
		t.Errorf("NotifyAddr after a refused move %#x", a)
	}
}

func TestNewPCIRefuses(t *testing.T) {
	_, mem := virtiotest.NewMemory(t)
	r := virtiotest.NewRouter(3)
	if _, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{Mem: mem, BARAddr: 0x1000, Router: r}); err == nil {
		t.Error("BAR0 not aligned to its size accepted")
	}
	if _, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{BARAddr: 0, Router: r}); err == nil {
		t.Error("no guest memory accepted")
	}
	if _, err := virtio.NewPCI(&echo{}, virtio.PCIConfig{Mem: mem}); err == nil {
		t.Error("no MSI router accepted")
	}
}

// TestPlatformReset resets the bus under an active transport, as a guest
// reboot does: the device stops, the registers, MSI-X and BAR0 are as at
// power-on, and the next boot's driver brings it up again.
func TestPlatformReset(t *testing.T) {
	ram, mem := virtiotest.NewMemory(t)
	mv := &mover{}
	dev := &echo{}
	r := virtiotest.NewRouter(3)
	irq := &level{}
	p, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, BARAddr: 0x1_0000_0000, Router: r, IRQ: irq, Mover: mv})
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, p, ram, mem)
	q, _ := start(t, d, true)
	d.ConfigWrite(pci.OffBAR0+4, []byte{2, 0, 0, 0}) // the guest moves BAR0
	q.Offer(virtiotest.Buf{Addr: d.Alloc(8), Len: 8})
	q.Kick()
	wait(t, r.Signals[1], "queue interrupt")

	d.Bus.Reset()

	dev.mu.Lock()
	host, resets := dev.host, dev.resets
	dev.mu.Unlock()
	if host != nil || resets == 0 {
		t.Errorf("device not stopped by the reset (host %v, %d resets)", host, resets)
	}
	if s := d.Status(); s != 0 {
		t.Errorf("device status %#x after reset, want 0", s)
	}
	d.Write(0x16, 2, 0)
	if size, en, desc, vec := d.Read(0x18, 2), d.Read(0x1c, 2), d.Read(0x20, 8), d.Read(0x1a, 2); size != 256 || en != 0 || desc != 0 || vec != virtio.NoVector {
		t.Errorf("queue 0 after reset: size %d enable %d desc %#x vector %#x", size, en, desc, vec)
	}
	if v := d.Read(0x10, 2); v != virtio.NoVector {
		t.Errorf("config vector %#x after reset", v)
	}
	if p.MSIX().Enabled() {
		t.Error("MSI-X still enabled after reset")
	}
	for v := range 3 {
		if !r.Route(v).Masked {
			t.Errorf("vector %d still unmasked after reset: %+v", v, r.Route(v))
		}
	}
	if irq.get() {
		t.Error("INTx asserted after reset")
	}
	if want := [][2]uint64{{0x1_0000_0000, 0x2_0000_0000}, {0x2_0000_0000, 0x1_0000_0000}}; !slices.Equal(mv.moves, want) {
		t.Errorf("BAR0 moves %v, want %v (back to where it was placed)", mv.moves, want)
	}
	if c := d.Bus.Command(d.Dev); c != 0 {
		t.Errorf("command %#x after reset", c)
	}
	// A kick left over from the old kernel reaches nothing.
	p.Kick(0)
	// The next boot probes and drives the device again.
	if err := d.Probe(); err != nil {
		t.Fatal(err)
	}
	q, _ = start(t, d, true)
	q.Offer(virtiotest.Buf{Addr: d.Alloc(8), Len: 8})
	q.Kick()
	wait(t, r.Signals[1], "queue interrupt after the reboot")
	if u := q.TakeUsed(); len(u) != 1 || u[0].Len != 8 {
		t.Errorf("used after the reboot %+v", u)
	}
}
