package boot

// PCI interrupt routing in the MP table. Without ACPI, Linux finds a PCI
// function's INTx line in the MP table's I/O interrupt entries whose source
// bus is a PCI bus: source IRQ (device << 2) | pin (0 = INTA#), looked up by
// the function's bus number, device and pin (IO_APIC_get_PCI_irq_vector).
// popvmm's PCI bus is bus 0, so it is MP bus 0 and the ISA bus is MP bus 1.
// INTA# of devices 1 to PCIINTxDevices goes to IOAPIC pins 16 and up, one
// pin each (no sharing): the VMM raises a function's INTx with KVM_IRQ_LINE
// on PCIINTxGSI(device).
const (
	mpPCIBusID = 0
	mpISABusID = 1

	// PCIINTxDevices is how many PCI device numbers (1 to PCIINTxDevices)
	// have their INTA# routed.
	PCIINTxDevices = 8
	// pciINTxPin0 is the IOAPIC pin of device 1's INTA#: the first pin
	// above the ISA IRQs' 0-15.
	pciINTxPin0 = 16

	// Interrupt entry flags: polarity active high (01), trigger level (11).
	mpIRQLevelHigh = 0x1 | 0x3<<2
)

// PCIINTxGSI is the GSI (IOAPIC pin) that INTA# of PCI device dev on bus
// 0 is routed to, and false for a device number without a route.
func PCIINTxGSI(dev int) (uint32, bool) {
	if dev < 1 || dev > PCIINTxDevices {
		return 0, false
	}
	return uint32(pciINTxPin0 + dev - 1), true
}

// mpPCIEntries is the PCI bus entry followed by one I/O interrupt entry
// per routed device's INTA#.
func mpPCIEntries() [][]byte {
	out := [][]byte{{mpBus, mpPCIBusID, 'P', 'C', 'I', ' ', ' ', ' '}}
	for dev := 1; dev <= PCIINTxDevices; dev++ {
		gsi, _ := PCIINTxGSI(dev)
		e := make([]byte, mpIntSize)
		e[0], e[1] = mpIOIntr, intINT
		e[2], e[3] = mpIRQLevelHigh, 0
		e[4], e[5], e[6], e[7] = mpPCIBusID, byte(dev<<2|0), ioapicID, byte(gsi)
		out = append(out, e)
	}
	return out
}
