package ipi

// The window device's BARs (QEMU's ivshmem layout).
const (
	RegsBAR   = 0   // BAR0: the registers
	MSIXBAR   = 1   // BAR1: MSI-X table and PBA
	WindowBAR = 2   // BAR2: the window, 64-bit prefetchable
	RegsSize  = 256 // BAR0's size
	// MSIXBARSize is BAR1's size: the table (16 bytes a vector, at most
	// MaxVectors) at 0 and the PBA at MSIXPBAOffset, as QEMU's
	// msix_init_exclusive_bar lays them out.
	MSIXBARSize   = 4096
	MSIXPBAOffset = MSIXBARSize / 2
)

// The window device's ids and BAR0 registers: QEMU's ivshmem-doorbell
// layout, which the PCI function (Device) keeps and the guest driver
// (GuestDevice) relies on.
const (
	VendorID = 0x1af4
	DeviceID = 0x1110

	RegIntrMask   = 0  // BAR0: interrupt mask (INTx mode)
	RegIntrStatus = 4  // BAR0: interrupt status (INTx mode)
	RegIVPosition = 8  // BAR0: this peer's id, read-only
	RegDoorbell   = 12 // BAR0: write (peer << 16) | vector to ring peer
)

// DoorbellValue is what a guest writes to RegDoorbell to ring vector of peer.
func DoorbellValue(peer, vector int) uint32 { return uint32(peer)<<16 | uint32(vector)&0xffff }
