package pci

import (
	"sync"

	"github.com/popvmm/popvmm/vmm/bus"
)

// INTx is a function's legacy interrupt pin (Header.IntPin, INTA# = 1): a
// level-triggered line the device asserts and deasserts, gated by the
// command register's interrupt-disable bit, reflected in the status
// register's interrupt bit. The VMM backs the line (bus.IRQ) with the GSI
// it routes the pin to (KVM_IRQ_LINE, or a resampling irqfd pair).
//
// A Function that has one returns it from an INTx() method (the
// INTxFunction interface), so the configuration space can apply the
// interrupt-disable bit and report the status bit.
type INTx struct {
	mu       sync.Mutex
	irq      bus.IRQ
	level    bool // the device's own level: status bit 3
	disabled bool // command bit 10
	out      bool // what the line carries now
}

// INTxFunction is implemented by functions with an INTx pin.
type INTxFunction interface {
	INTx() *INTx
}

var _ bus.IRQ = (*INTx)(nil)

// NewINTx makes a deasserted pin driving irq.
func NewINTx(irq bus.IRQ) *INTx { return &INTx{irq: irq} }

// Set asserts (true) or deasserts the device's interrupt; the line follows
// unless the guest disabled INTx. Safe from any goroutine.
func (x *INTx) Set(level bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.level = level
	x.driveLocked()
}

// Asserted reports the device's interrupt state (status bit 3), which the
// interrupt-disable bit does not hide.
func (x *INTx) Asserted() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.level
}

func (x *INTx) setDisabled(d bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.disabled = d
	x.driveLocked()
}

func (x *INTx) driveLocked() {
	out := x.level && !x.disabled
	if out == x.out {
		return
	}
	x.out = out
	if x.irq != nil {
		x.irq.Set(out)
	}
}

// intx returns the function's pin, if it has one.
func (c *config) intx() *INTx {
	if f, ok := c.fn.(INTxFunction); ok {
		return f.INTx()
	}
	return nil
}
