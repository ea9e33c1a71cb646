package pci

// NextDevice is the device number Add gives the next function, 0 when
// every slot is taken: a VMM that routes INTx by device number (the MP
// table's PCI interrupt entries) learns a function's line before it
// builds the function.
func (b *Bus) NextDevice() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for d := 1; d < len(b.devs); d++ {
		if b.devs[d] == nil {
			return d
		}
	}
	return 0
}
