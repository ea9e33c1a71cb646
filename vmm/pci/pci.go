// Package pci is the PCI bus every popvmm kernel gets: a host bridge at
// 00:00.0, configuration mechanism #1 (ports 0xCF8/0xCFC), and type-0
// configuration spaces with BARs the guest can size, a capability list
// (CapList), MSI-X (MSIX: capability, table and PBA, delivered through an
// MSIRouter the VMM implements with KVM GSI routes and irqfds) and a
// level-triggered INTx pin (INTx). Allocator places BARs in the windows
// memmap reserves; the VMM maps them on its MMIO bus. Device models (the
// shared-window device, virtio-net) plug in a Function. It depends only on
// memmap's address arithmetic and bus's Device and IRQ interfaces.
package pci

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/memmap"
)

// Config space offsets (PCI Local Bus Specification 3.0, 6.1).
const (
	OffVendor    = 0x00
	OffDevice    = 0x02
	OffCommand   = 0x04
	OffStatus    = 0x06
	OffRevision  = 0x08
	OffClass     = 0x09 // prog-if, subclass, class
	OffHeader    = 0x0e
	OffBAR0      = 0x10
	OffSubVendor = 0x2c
	OffSubsystem = 0x2e
	OffCapPtr    = 0x34
	OffIntLine   = 0x3c
	OffIntPin    = 0x3d

	ConfigSize = 256
	NumBARs    = 6

	CommandIO      = 1 << 0
	CommandMemory  = 1 << 1
	CommandMaster  = 1 << 2
	CommandIntxOff = 1 << 10

	StatusInterrupt = 1 << 3 // INTx asserted by the function
	StatusCapList   = 1 << 4

	barMem64        = 0x4
	barPrefetchable = 0x8
)

// BAR describes one base address register.
type BAR struct {
	Size         uint64 // a power of two, at least 16; 0: unused
	Is64         bool   // takes this and the next BAR slot
	Prefetchable bool
	Addr         uint64 // assigned by the VMM, may be moved by the guest
}

// End is one past the BAR's last byte, and false when Addr+Size does not
// fit in 64 bits: the guest may put a 64-bit BAR at the very top of the
// address space, where the range cannot be mapped.
func (b BAR) End() (uint64, bool) { return memmap.End(b.Addr, b.Size) }

// checkBARs checks a function's BARs as Add receives them: sizes powers of
// two of at least 16 bytes, a 32-bit BAR of at most 2 GiB under 4 GiB, a
// 64-bit BAR with a
// free slot after it, every address aligned to its size and every range
// below 2^64.
func checkBARs(bars [NumBARs]BAR) error {
	for i, b := range bars {
		if i > 0 && bars[i-1].Is64 {
			if b.Size != 0 {
				return fmt.Errorf("BAR%d: the upper half of 64-bit BAR%d cannot be a BAR of its own", i, i-1)
			}
			continue
		}
		if b.Size == 0 {
			continue
		}
		end, ok := b.End()
		switch {
		case b.Size < 16 || b.Size&(b.Size-1) != 0:
			return fmt.Errorf("BAR%d: size %#x is not a power of two of at least 16", i, b.Size)
		case b.Is64 && i == NumBARs-1:
			return fmt.Errorf("BAR%d: a 64-bit BAR needs the next slot for its upper half", i)
		case b.Addr%b.Size != 0:
			return fmt.Errorf("BAR%d: address %#x is not aligned to its size %#x", i, b.Addr, b.Size)
		case !ok:
			return fmt.Errorf("BAR%d: %#x+%#x runs past 2^64", i, b.Addr, b.Size)
		case !b.Is64 && (b.Size > 1<<31 || end > 1<<32):
			return fmt.Errorf("BAR%d: 32-bit BAR %#x+%#x is over 2 GiB or ends above 4 GiB", i, b.Addr, b.Size)
		}
	}
	return nil
}

// Function is one PCI function: its identity, BARs and device-specific
// configuration registers (beyond the standard header, e.g. capabilities).
type Function interface {
	// Header returns vendor, device, class (class<<16 | subclass<<8 |
	// prog-if), revision, subsystem vendor and subsystem ids.
	Header() Header
	// BARs returns the function's BARs, indexed by slot.
	BARs() [NumBARs]BAR
	// ConfigRead and ConfigWrite handle offsets the config space does not
	// (capabilities at 0x40 and up). They see the offset and access width.
	ConfigRead(off int, data []byte)
	ConfigWrite(off int, data []byte)
	// BARMoved tells the function the guest moved BAR slot i to addr. The
	// guest may choose any size-aligned addr, up to a 64-bit BAR whose end
	// is 2^64, or onto another device's BAR. A function that cannot map
	// the BAR there returns an error and keeps its old mapping (bus.Move
	// does both, never touching another device's range); the register
	// then reads back the old address, as a move that never happened.
	BARMoved(i int, addr uint64) error
}

// Resetter is implemented by functions with state of their own that a
// platform reset must return to power-on (Bus.Reset): registers, queues,
// interrupt levels. When Reset returns the function must no longer touch
// guest memory. It runs under the Bus lock, after the function's MSI-X
// (MSIXFunction) was reset and before its configuration space is.
type Resetter interface {
	Reset()
}

// MSIXFunction is implemented by functions with MSI-X, for Bus.Reset.
type MSIXFunction interface {
	MSIX() *MSIX
}

// Header is a function's identity.
type Header struct {
	Vendor, Device       uint16
	Class                uint32
	Revision             uint8
	SubVendor, Subsystem uint16
	CapPtr               uint8 // first capability, 0: none
	IntPin               uint8 // 1 = INTA#, 0: no INTx
	IntLine              uint8
}

// config is a type-0 configuration space around a Function.
type config struct {
	fn   Function
	hdr  Header
	bars [NumBARs]BAR // as the registers read
	init [NumBARs]BAR // as Add found them: what Bus.Reset restores
	// mapped is where each BAR is mapped now: the registers' address but
	// between the two halves of a 64-bit BAR's move.
	mapped  [NumBARs]uint64
	command uint16
	intLine uint8
	sizing  [NumBARs]bool // the guest wrote all ones: the next read returns the size mask
}

func newConfig(fn Function) *config {
	h := fn.Header()
	bars := fn.BARs()
	c := &config{fn: fn, hdr: h, bars: bars, init: bars, intLine: h.IntLine}
	for i, b := range bars {
		c.mapped[i] = b.Addr
	}
	return c
}

// reset returns the function to power-on: MSI-X, then the function's own
// state, then the header. BARs go back to where Add found them (popvmm is
// the firmware that placed them) through BARMoved, the path of a guest
// BAR write, so the function's mappings follow.
func (c *config) reset() {
	if f, ok := c.fn.(MSIXFunction); ok {
		if m := f.MSIX(); m != nil {
			m.Reset()
		}
	}
	if r, ok := c.fn.(Resetter); ok {
		r.Reset()
	}
	c.command = 0
	if x := c.intx(); x != nil {
		x.setDisabled(false)
	}
	c.intLine = c.hdr.IntLine
	c.sizing = [NumBARs]bool{}
	c.placeBARs()
}

// placeBARs moves every BAR back where Add found it; one whose move is
// refused (another function, not reset yet, holds that place) stays
// mapped where it is, and its register says so.
func (c *config) placeBARs() {
	for i, b := range c.init {
		if b.Size == 0 {
			continue
		}
		if c.mapped[i] != b.Addr && c.fn.BARMoved(i, b.Addr) == nil {
			c.mapped[i] = b.Addr
		}
		c.bars[i].Addr = c.mapped[i]
	}
}

// unplaced counts the function's BARs that are not where Add found them.
func (c *config) unplaced() int {
	n := 0
	for i, b := range c.init {
		if b.Size != 0 && c.mapped[i] != b.Addr {
			n++
		}
	}
	return n
}

// read returns the 32-bit register at a dword-aligned offset.
func (c *config) read32(off int) uint32 {
	h := c.hdr
	switch {
	case off == OffVendor:
		return uint32(h.Device)<<16 | uint32(h.Vendor)
	case off == OffCommand:
		status := uint32(0)
		if h.CapPtr != 0 {
			status |= StatusCapList
		}
		if x := c.intx(); x != nil && x.Asserted() {
			status |= StatusInterrupt
		}
		return status<<16 | uint32(c.command)
	case off == OffRevision:
		return h.Class<<8 | uint32(h.Revision)
	case off == 0x0c:
		return 0 // header type 0, single function
	case off >= OffBAR0 && off < OffBAR0+4*NumBARs:
		return c.readBAR((off - OffBAR0) / 4)
	case off == OffSubVendor:
		return uint32(h.Subsystem)<<16 | uint32(h.SubVendor)
	case off == OffCapPtr:
		return uint32(h.CapPtr)
	case off == OffIntLine:
		return uint32(h.IntPin)<<8 | uint32(c.intLine)
	case off >= 0x40 && off < ConfigSize:
		b := make([]byte, 4)
		c.fn.ConfigRead(off, b)
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (c *config) readBAR(i int) uint32 {
	if i > 0 && c.bars[i-1].Is64 {
		// The upper half of a 64-bit BAR.
		b := c.bars[i-1]
		if c.sizing[i] {
			return uint32(^(b.Size - 1) >> 32)
		}
		return uint32(b.Addr >> 32)
	}
	b := c.bars[i]
	if b.Size == 0 {
		return 0
	}
	flags := uint32(0)
	if b.Is64 {
		flags |= barMem64
	}
	if b.Prefetchable {
		flags |= barPrefetchable
	}
	if c.sizing[i] {
		return uint32(^(b.Size-1))&^0xf | flags
	}
	return uint32(b.Addr)&^0xf | flags
}

// write32 applies a 32-bit write at a dword-aligned offset, with mask
// telling which bytes the guest actually wrote.
func (c *config) write32(off int, v, mask uint32) {
	switch {
	case off == OffCommand:
		keep := uint32(c.command) &^ mask
		c.command = uint16((v & mask & 0xffff) | keep&0xffff)
		if x := c.intx(); x != nil {
			x.setDisabled(c.command&CommandIntxOff != 0)
		}
	case off >= OffBAR0 && off < OffBAR0+4*NumBARs:
		if mask != 0xffffffff {
			return // BARs are written whole
		}
		c.writeBAR((off-OffBAR0)/4, v)
	case off == OffIntLine:
		if mask&0xff != 0 {
			c.intLine = uint8(v)
		}
	case off >= 0x40 && off < ConfigSize:
		b := binary.LittleEndian.AppendUint32(nil, v)
		lo, hi := 0, 4
		for lo < 4 && mask&(0xff<<(8*lo)) == 0 {
			lo++
		}
		for hi > lo && mask&(0xff<<(8*(hi-1))) == 0 {
			hi--
		}
		if lo < hi {
			c.fn.ConfigWrite(off+lo, b[lo:hi])
		}
	}
}

func (c *config) writeBAR(i int, v uint32) {
	if v == 0xffffffff {
		c.sizing[i] = true
		return
	}
	c.sizing[i] = false
	slot := i
	if i > 0 && c.bars[i-1].Is64 {
		slot = i - 1
		b := &c.bars[slot]
		b.Addr = b.Addr&0xffffffff | uint64(v)<<32
	} else {
		b := &c.bars[i]
		if b.Size == 0 {
			return
		}
		b.Addr = b.Addr&^0xffffffff | uint64(v&^0xf)
	}
	b := &c.bars[slot]
	b.Addr &^= b.Size - 1 // the low bits of a BAR are read-only zero
	if b.Addr == c.mapped[slot] {
		return
	}
	if err := c.fn.BARMoved(slot, b.Addr); err != nil {
		if b.Is64 && slot == i {
			// The low half of a 64-bit move: the address is half
			// written, and the high half's write decides.
			return
		}
		b.Addr = c.mapped[slot] // refused: the register reads back where the BAR is
		return
	}
	c.mapped[slot] = b.Addr
}

// Bus is the PCI bus: functions by device number on bus 0, and the 0xCF8
// address register of configuration mechanism #1.
type Bus struct {
	mu      sync.Mutex
	devs    [32]*config
	address uint32
}

// NewBus makes a bus with the host bridge (8086:0d57, class 0x060000) at
// 00:00.0.
func NewBus() *Bus {
	b := &Bus{}
	b.devs[0] = newConfig(hostBridge{})
	return b
}

// Add puts fn at the first free device number and returns it. It refuses a
// function whose BARs are malformed (see checkBARs).
func (b *Bus) Add(fn Function) (int, error) {
	if err := checkBARs(fn.BARs()); err != nil {
		return 0, fmt.Errorf("pci: %04x:%04x: %w", fn.Header().Vendor, fn.Header().Device, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for d := 1; d < len(b.devs); d++ {
		if b.devs[d] == nil {
			b.devs[d] = newConfig(fn)
			return d, nil
		}
	}
	return 0, fmt.Errorf("pci: all 31 device slots are taken")
}

// Reset is a platform reset, for a guest that rebooted inside its VM:
// every function returns to its power-on state. Its MSI-X is disabled
// with every vector masked and nothing pending, it resets itself if it is
// a Resetter, and its configuration space is as Add found it: command
// register 0 (no decoding, no bus mastering, INTx enabled), BARs at their
// initial addresses (BARMoved tells the function of each that moves
// back), the interrupt line as its header gives it, no BAR being sized.
// The address register of 0xCF8 is cleared. Call it while no vCPU runs.
func (b *Bus) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.address = 0
	for _, c := range b.devs {
		if c != nil {
			c.reset()
		}
	}
	// A function's move back can be refused while another still sits on
	// its first address: the guest moved both, or a chain of them (A
	// away, B onto A's first address, C onto B's, ...), which a pass
	// unwinds by one link. Pass again while a pass places a BAR.
	for left := b.unplaced(); left > 0; {
		for _, c := range b.devs {
			if c != nil && c.unplaced() > 0 {
				c.placeBARs()
			}
		}
		now := b.unplaced()
		if now == left {
			break // the rest are refused for good (a guest move the VMM cannot undo)
		}
		left = now
	}
}

// unplaced counts the BARs on the bus that are not where Add found them.
func (b *Bus) unplaced() int {
	n := 0
	for _, c := range b.devs {
		if c != nil {
			n += c.unplaced()
		}
	}
	return n
}

// BARs returns the current BARs of device d (after any guest moves).
func (b *Bus) BARs(d int) [NumBARs]BAR {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d < 0 || d >= len(b.devs) || b.devs[d] == nil {
		return [NumBARs]BAR{}
	}
	return b.devs[d].bars
}

// Command returns device d's command register (memory/IO decode, bus
// master, INTx disable).
func (b *Bus) Command(d int) uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d < 0 || d >= len(b.devs) || b.devs[d] == nil {
		return 0
	}
	return b.devs[d].command
}

// ConfigPorts returns the bus.Device for ports 0xCF8-0xCFF.
func (b *Bus) ConfigPorts() *Ports { return &Ports{b: b} }

// Ports is configuration mechanism #1 on the port-I/O bus at 0xCF8, 8 ports:
// a 32-bit address register at 0, the data window at 4-7.
type Ports struct{ b *Bus }

// Read implements bus.Device.
func (p *Ports) Read(off uint64, data []byte) {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	var v uint32
	switch {
	case off == 0 && len(data) == 4:
		v = p.b.address
	case off >= 4:
		v = 0xffffffff
		if c, reg, ok := p.b.target(); ok {
			v = c.read32(reg)
		}
		v >>= 8 * (off - 4)
	default:
		v = 0xffffffff
	}
	for i := range data {
		data[i] = byte(v >> (8 * i))
	}
}

// Write implements bus.Device.
func (p *Ports) Write(off uint64, data []byte) {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	var v uint32
	for i := range min(len(data), 4) {
		v |= uint32(data[i]) << (8 * i)
	}
	switch {
	case off == 0 && len(data) == 4:
		p.b.address = v
	case off >= 4 && off <= 8 && uint64(len(data)) <= 8-off: // off+len could wrap
		if c, reg, ok := p.b.target(); ok {
			shift := 8 * (off - 4)
			mask := uint32((uint64(1)<<(8*len(data)))-1) << shift
			c.write32(reg, v<<shift, mask)
		}
	}
}

// target decodes the address register: enabled, bus 0, function 0, a
// present device.
func (b *Bus) target() (*config, int, bool) {
	a := b.address
	if a&(1<<31) == 0 {
		return nil, 0, false
	}
	bus, dev, fn, reg := (a>>16)&0xff, (a>>11)&0x1f, (a>>8)&7, int(a&0xfc)
	if bus != 0 || fn != 0 || b.devs[dev] == nil {
		return nil, 0, false
	}
	return b.devs[dev], reg, true
}

// hostBridge is the function at 00:00.0.
type hostBridge struct{}

func (hostBridge) Header() Header {
	return Header{Vendor: 0x8086, Device: 0x0d57, Class: 0x060000}
}
func (hostBridge) BARs() [NumBARs]BAR         { return [NumBARs]BAR{} }
func (hostBridge) ConfigRead(int, []byte)     {}
func (hostBridge) ConfigWrite(int, []byte)    {}
func (hostBridge) BARMoved(int, uint64) error { return nil }
