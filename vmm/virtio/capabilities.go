package virtio

import (
	"encoding/binary"
	"sync"

	"github.com/popvmm/popvmm/vmm/pci"
)

// The modern transport's capability types (virtio 1.2, 4.1.4).
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
	capPCI    = 5
)

// virtioCap is a virtio_pci_cap (and virtio_pci_notify_cap) in BAR0.
type virtioCap struct {
	typ         uint8
	off, length uint32
	multiplier  uint32 // notify only
}

func (c *virtioCap) CapID() uint8 { return pci.CapVendor }
func (c *virtioCap) CapLen() int {
	if c.typ == capNotify {
		return 20
	}
	return 16
}

func (c *virtioCap) ReadCap(off int, data []byte) {
	var b [20]byte
	b[2] = byte(c.CapLen())
	b[3] = c.typ
	b[4] = BARIndex
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	binary.LittleEndian.PutUint32(b[16:], c.multiplier)
	copyCap(b[:c.CapLen()], off, data)
}

func (c *virtioCap) WriteCap(int, []byte) {}

func copyCap(b []byte, off int, data []byte) {
	for i := range data {
		data[i] = 0
		if off+i < len(b) {
			data[i] = b[off+i]
		}
	}
}

// pciCfgCap is VIRTIO_PCI_CAP_PCI_CFG: a window through configuration
// space onto BAR0, for drivers that cannot map it. The driver writes bar,
// offset and length, then reads or writes pci_cfg_data.
type pciCfgCap struct {
	p      *PCI
	mu     sync.Mutex
	bar    uint8
	off    uint32
	length uint32
	data   [4]byte
}

func (c *pciCfgCap) CapID() uint8 { return pci.CapVendor }
func (c *pciCfgCap) CapLen() int  { return 20 }

func (c *pciCfgCap) ReadCap(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off >= 16 {
		c.access(false)
	}
	var b [20]byte
	b[2], b[3], b[4] = 20, capPCI, c.bar
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	copy(b[16:], c.data[:])
	copyCap(b[:], off, data)
}

func (c *pciCfgCap) WriteCap(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b [20]byte
	b[4] = c.bar
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	copy(b[16:], c.data[:])
	for i, v := range data {
		if off+i < len(b) {
			b[off+i] = v
		}
	}
	c.bar = b[4]
	c.off = binary.LittleEndian.Uint32(b[8:])
	c.length = binary.LittleEndian.Uint32(b[12:])
	copy(c.data[:], b[16:])
	if off+len(data) > 16 {
		c.access(true)
	}
}

// access moves pci_cfg_data to or from BAR0 at the window's offset: the
// length 1, 2 or 4 and the offset aligned to it, else nothing.
func (c *pciCfgCap) access(write bool) {
	n := c.length
	if c.bar != BARIndex || (n != 1 && n != 2 && n != 4) || c.off%n != 0 || uint64(c.off)+uint64(n) > BARSize {
		return
	}
	if write {
		c.p.Write(uint64(c.off), c.data[:n])
	} else {
		c.p.Read(uint64(c.off), c.data[:n])
	}
}
