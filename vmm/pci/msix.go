package pci

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/vmm/bus"
)

// MSI-X (PCI Local Bus Specification 3.0, 6.8.2): the capability, and the
// table and pending-bit array (PBA) that live in one of the function's
// memory BARs.
const (
	// MaxMSIXVectors is the largest table the capability can describe.
	MaxMSIXVectors = 2048
	// MSIXEntrySize is one table entry: address low, address high, data,
	// vector control.
	MSIXEntrySize = 16

	msixCapLen       = 12
	msixCtrlEnable   = 1 << 15
	msixCtrlFuncMask = 1 << 14
	msixVectorMasked = 1
)

// MSIMessage is what a vector sends: a write of Data to Addr, which the
// VMM turns into a KVM MSI route (address_lo/hi, data).
type MSIMessage struct {
	Addr uint64
	Data uint32
}

// MSIRoute is the state of one vector as the VMM must install it.
type MSIRoute struct {
	MSIMessage
	// Masked is true when the vector must not interrupt the guest: its
	// own mask bit, the function mask or MSI-X disabled. While masked,
	// events set the vector's pending bit instead.
	Masked bool
}

// MSIRouter is how an MSI-X function reaches the guest. The VMM implements
// it with one eventfd per vector registered as a KVM irqfd on a GSI of its
// own, and KVM_SET_GSI_ROUTING entries of type KVM_IRQ_ROUTING_MSI.
type MSIRouter interface {
	// SetRoute is called whenever what vector delivers changes: the guest
	// rewrote an unmasked vector's address or data, or the vector became
	// masked or unmasked (its own bit, the function mask, the enable bit).
	// Unmasked: update the GSI route to r.MSIMessage and assign the
	// vector's irqfd. Masked: deassign the irqfd (the eventfd keeps
	// counting, and KVM injects what it counted when it is assigned
	// again), so that events raised outside popvmm, such as another VM's
	// ioeventfd on the same eventfd, do not reach a masked vector either.
	// It runs on a vCPU thread with the MSIX's lock held: it must not call
	// back into the MSIX. An error is logged; the vector stays as written.
	SetRoute(vector int, r MSIRoute) error
	// Signal delivers vector once: a write to its eventfd. Called only for
	// unmasked vectors, with the MSIX's lock held; it must not block.
	Signal(vector int) error
}

// MSIXConfig places an MSI-X table and PBA in a BAR.
type MSIXConfig struct {
	Vectors int // 1 to MaxMSIXVectors
	BAR     int // the BAR slot holding both table and PBA
	// TableOffset and PBAOffset are offsets into that BAR, 8-byte aligned;
	// the table takes Vectors*16 bytes, the PBA 8 bytes per 64 vectors.
	TableOffset, PBAOffset uint32
}

// TableSize is the table's size in bytes.
func (c MSIXConfig) TableSize() uint32 { return uint32(c.Vectors) * MSIXEntrySize }

// PBASize is the pending-bit array's size in bytes.
func (c MSIXConfig) PBASize() uint32 { return uint32((c.Vectors + 63) / 64 * 8) }

func (c MSIXConfig) check() error {
	tEnd := uint64(c.TableOffset) + uint64(c.TableSize())
	pEnd := uint64(c.PBAOffset) + uint64(c.PBASize())
	switch {
	case c.Vectors < 1 || c.Vectors > MaxMSIXVectors:
		return fmt.Errorf("%d vectors, want 1 to %d", c.Vectors, MaxMSIXVectors)
	case c.BAR < 0 || c.BAR >= NumBARs:
		return fmt.Errorf("BAR %d does not exist", c.BAR)
	case c.TableOffset%8 != 0 || c.PBAOffset%8 != 0:
		return fmt.Errorf("table at %#x or PBA at %#x not 8-byte aligned", c.TableOffset, c.PBAOffset)
	case tEnd > 1<<32 || pEnd > 1<<32:
		return fmt.Errorf("table or PBA runs past 4 GiB")
	case uint64(c.TableOffset) < pEnd && uint64(c.PBAOffset) < tEnd:
		return fmt.Errorf("table %#x+%#x and PBA %#x+%#x overlap", c.TableOffset, c.TableSize(), c.PBAOffset, c.PBASize())
	}
	return nil
}

// MSIX is one function's MSI-X state: the capability (add it to the
// function's CapList) and the table and PBA (map them with Read and Write,
// which take offsets into the BAR the config names). Every vector starts
// masked and MSI-X disabled, as after reset, and the router is told about
// a vector only once it becomes unmasked (the VMM starts every vector with
// no irqfd assigned). Safe for concurrent use: the
// capability is accessed under the PCI bus lock, the table from vCPU
// threads, Trigger from device goroutines.
type MSIX struct {
	cfg    MSIXConfig
	router MSIRouter
	onErr  func(error)

	mu      sync.Mutex
	ctrl    uint16 // message control: enable and function mask
	entries []msixEntry
	pending []uint64
}

type msixEntry struct {
	addr   uint64
	data   uint32
	ctrl   uint32
	route  MSIRoute // last route handed to the router
	routed bool     // route was handed over at least once
}

var (
	_ Capability = (*MSIX)(nil)
	_ bus.Device = (*MSIX)(nil)
)

// NewMSIX makes the MSI-X state for cfg, delivering through r. onErr, if
// not nil, receives every error the router returns (wrapped with the
// vector); device models log it with their own attributes.
func NewMSIX(cfg MSIXConfig, r MSIRouter, onErr func(error)) (*MSIX, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("pci: MSI-X: %w", err)
	}
	if r == nil {
		return nil, fmt.Errorf("pci: MSI-X: no router")
	}
	m := &MSIX{cfg: cfg, router: r, onErr: onErr,
		entries: make([]msixEntry, cfg.Vectors),
		pending: make([]uint64, (cfg.Vectors+63)/64),
	}
	for i := range m.entries {
		m.entries[i].ctrl = msixVectorMasked
		m.entries[i].route.Masked = true
	}
	return m, nil
}

// Config returns the layout the MSIX was made with.
func (m *MSIX) Config() MSIXConfig { return m.cfg }

// Enabled reports whether the guest enabled MSI-X; while it has not, the
// function interrupts through INTx.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctrl&msixCtrlEnable != 0
}

// Trigger raises vector: delivered through the router if it is unmasked,
// else its pending bit is set (and the interrupt delivered when the guest
// unmasks it). With MSI-X disabled or an out-of-range vector (a guest may
// program any vector number into a virtio queue) it does nothing and
// returns false. It returns whether the vector was delivered or made
// pending.
func (m *MSIX) Trigger(vector int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= len(m.entries) || m.ctrl&msixCtrlEnable == 0 {
		return false
	}
	if m.maskedLocked(vector) {
		m.pending[vector/64] |= 1 << (vector % 64)
		return true
	}
	m.signalLocked(vector)
	return true
}

// Pending reports vector's pending bit.
func (m *MSIX) Pending(vector int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= len(m.entries) {
		return false
	}
	return m.pending[vector/64]&(1<<(vector%64)) != 0
}

// Reset returns the MSI-X state to power-on: disabled, every vector
// masked with address and data zero, nothing pending. The router sees the
// vectors that were unmasked become masked.
func (m *MSIX) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ctrl = 0
	clear(m.pending)
	for i := range m.entries {
		e := &m.entries[i]
		e.addr, e.data, e.ctrl = 0, 0, msixVectorMasked
		m.updateLocked(i)
	}
}

func (m *MSIX) maskedLocked(v int) bool {
	return m.ctrl&msixCtrlEnable == 0 || m.ctrl&msixCtrlFuncMask != 0 || m.entries[v].ctrl&msixVectorMasked != 0
}

func (m *MSIX) signalLocked(v int) {
	if err := m.router.Signal(v); err != nil {
		m.report(fmt.Errorf("MSI-X vector %d: signal: %w", v, err))
	}
}

func (m *MSIX) report(err error) {
	if m.onErr != nil {
		m.onErr(err)
	}
}

// updateLocked hands vector v's route to the router if it changed, and
// delivers its pending interrupt if it became unmasked.
func (m *MSIX) updateLocked(v int) {
	e := &m.entries[v]
	r := MSIRoute{MSIMessage: MSIMessage{Addr: e.addr, Data: e.data}, Masked: m.maskedLocked(v)}
	if r.Masked == e.route.Masked && (r.Masked || r.MSIMessage == e.route.MSIMessage) {
		return
	}
	wasMasked := e.route.Masked
	e.route = r
	if err := m.router.SetRoute(v, r); err != nil {
		m.report(fmt.Errorf("MSI-X vector %d: route %#x/%#x masked %v: %w", v, r.Addr, r.Data, r.Masked, err))
	}
	if wasMasked && !r.Masked && m.pending[v/64]&(1<<(v%64)) != 0 {
		m.pending[v/64] &^= 1 << (v % 64)
		m.signalLocked(v)
	}
}

// CapID implements Capability.
func (m *MSIX) CapID() uint8 { return CapMSIX }

// CapLen implements Capability.
func (m *MSIX) CapLen() int { return msixCapLen }

func (m *MSIX) capBytes() [msixCapLen]byte {
	var b [msixCapLen]byte
	m.mu.Lock()
	ctrl := m.ctrl | uint16(m.cfg.Vectors-1)
	m.mu.Unlock()
	binary.LittleEndian.PutUint16(b[2:], ctrl)
	binary.LittleEndian.PutUint32(b[4:], m.cfg.TableOffset|uint32(m.cfg.BAR))
	binary.LittleEndian.PutUint32(b[8:], m.cfg.PBAOffset|uint32(m.cfg.BAR))
	return b
}

// ReadCap implements Capability: message control (table size, function
// mask, enable), table and PBA offset/BIR.
func (m *MSIX) ReadCap(off int, data []byte) {
	b := m.capBytes()
	for i := range data {
		if off+i < len(b) {
			data[i] = b[off+i]
		} else {
			data[i] = 0
		}
	}
}

// WriteCap implements Capability: only the enable and function-mask bits
// of message control are writable.
func (m *MSIX) WriteCap(off int, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctrl := m.ctrl
	for i, v := range data {
		switch off + i {
		case 3: // high byte of message control
			ctrl = ctrl&0x00ff | uint16(v)<<8
		}
	}
	ctrl &= msixCtrlEnable | msixCtrlFuncMask
	if ctrl == m.ctrl {
		return
	}
	m.ctrl = ctrl
	for v := range m.entries {
		m.updateLocked(v)
	}
}

// Contains reports whether off, an offset into the MSI-X BAR, falls in the
// table or the PBA: for functions that share the BAR with other registers.
func (m *MSIX) Contains(off uint64) bool {
	t, p := uint64(m.cfg.TableOffset), uint64(m.cfg.PBAOffset)
	return (off >= t && off < t+uint64(m.cfg.TableSize())) || (off >= p && off < p+uint64(m.cfg.PBASize()))
}

// Read implements bus.Device for the table and PBA at their offsets in the
// BAR; 4- and 8-byte aligned accesses only (others read as all ones, as
// does every offset outside table and PBA).
func (m *MSIX) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	n := uint64(len(data))
	if (n != 4 && n != 8) || off%n != 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var v uint64
	t, p := uint64(m.cfg.TableOffset), uint64(m.cfg.PBAOffset)
	switch {
	case off >= t && off+n <= t+uint64(m.cfg.TableSize()):
		rel := off - t
		e := &m.entries[rel/MSIXEntrySize]
		words := [4]uint32{uint32(e.addr), uint32(e.addr >> 32), e.data, e.ctrl}
		w := rel % MSIXEntrySize / 4
		v = uint64(words[w])
		if n == 8 {
			v |= uint64(words[w+1]) << 32
		}
	case off >= p && off+n <= p+uint64(m.cfg.PBASize()):
		rel := off - p
		v = m.pending[rel/8] >> (8 * (rel % 8))
	default:
		return
	}
	for i := range data {
		data[i] = byte(v >> (8 * i))
	}
}

// Write implements bus.Device: table entries take 4- and 8-byte aligned
// writes; the PBA is read-only.
func (m *MSIX) Write(off uint64, data []byte) {
	n := uint64(len(data))
	if (n != 4 && n != 8) || off%n != 0 {
		return
	}
	t := uint64(m.cfg.TableOffset)
	if off < t || off+n > t+uint64(m.cfg.TableSize()) {
		return
	}
	var v uint64
	for i := range data {
		v |= uint64(data[i]) << (8 * i)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rel := off - t
	vec := int(rel / MSIXEntrySize)
	e := &m.entries[vec]
	for w := rel % MSIXEntrySize / 4; n > 0; w, n, v = w+1, n-4, v>>32 {
		switch x := uint32(v); w {
		case 0:
			e.addr = e.addr&^0xffffffff | uint64(x&^3) // the address is dword aligned
		case 1:
			e.addr = e.addr&0xffffffff | uint64(x)<<32
		case 2:
			e.data = x
		case 3:
			e.ctrl = x & msixVectorMasked
		}
	}
	m.updateLocked(vec)
}
