package boot_test

import (
	"testing"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
)

// mpEntries parses the MP configuration table's entries: processors are
// 20 bytes, everything else 8.
func mpEntries(t *testing.T, table []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for off := 44; off < len(table); {
		n := 8
		if table[off] == 0 {
			n = 20
		}
		out = append(out, table[off:off+n])
		off += n
	}
	if got := int(le.Uint16(table[34:])); got != len(out) {
		t.Fatalf("header counts %d entries, the table holds %d", got, len(out))
	}
	return out
}

// TestMPTablePCIRouting checks what Linux needs to find a PCI function's
// INTx without ACPI: a PCI bus whose MP id is its bus number (0), the ISA
// IRQs on the ISA bus, and INTA# of devices 1-8 each on its own IOAPIC pin,
// level-triggered, the pin PCIINTxGSI gives the VMM.
func TestMPTablePCIRouting(t *testing.T) {
	m, _ := guest(t, 8*memmap.MiB)
	if err := boot.WriteMPTable(m, 3); err != nil {
		t.Fatal(err)
	}
	ptr := uint64(le.Uint32(read(t, m, memmap.MPTableAddr, 16)[4:]))
	table := read(t, m, ptr, uint64(le.Uint16(read(t, m, ptr, 44)[4:])))
	buses := map[byte]string{}
	isa := map[byte]byte{}   // ISA IRQ → pin
	pci := map[byte][]byte{} // srcbusirq → entry
	for _, e := range mpEntries(t, table) {
		switch e[0] {
		case 1:
			buses[e[1]] = string(e[2:8])
		case 3:
			switch buses[e[4]] {
			case "ISA   ":
				isa[e[5]] = e[7]
			case "PCI   ":
				pci[e[5]] = e
			default:
				t.Errorf("interrupt entry %x on unknown bus %d", e, e[4])
			}
		}
	}
	if buses[0] != "PCI   " || buses[1] != "ISA   " {
		t.Errorf("buses %q, want PCI as 0 and ISA as 1", buses)
	}
	for irq := range byte(16) {
		if pin, ok := isa[irq]; !ok || pin != irq {
			t.Errorf("ISA IRQ %d → pin %d (%v), want pin %d", irq, pin, ok, irq)
		}
	}
	for dev := 1; dev <= boot.PCIINTxDevices; dev++ {
		gsi, ok := boot.PCIINTxGSI(dev)
		e := pci[byte(dev<<2)]
		if !ok || e == nil {
			t.Errorf("device %d INTA#: no route (%v)", dev, ok)
			continue
		}
		if e[7] != byte(gsi) || gsi < 16 || gsi > 23 || e[6] != 0xfe {
			t.Errorf("device %d INTA# → IOAPIC %#x pin %d, want pin %d (16-23)", dev, e[6], e[7], gsi)
		}
		if flags := le.Uint16(e[2:]); flags != 0xd {
			t.Errorf("device %d INTA# flags %#x, want level-triggered active high (0xd)", dev, flags)
		}
	}
	if len(pci) != boot.PCIINTxDevices {
		t.Errorf("%d PCI interrupt entries, want %d", len(pci), boot.PCIINTxDevices)
	}
	for _, dev := range []int{0, boot.PCIINTxDevices + 1, 31} {
		if _, ok := boot.PCIINTxGSI(dev); ok {
			t.Errorf("PCIINTxGSI(%d) has a route", dev)
		}
	}
}
