package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// MP table (Intel MultiProcessor Specification 1.4): a floating pointer
// structure and a configuration table in the EBDA, with one processor entry
// per vCPU, the PCI and ISA buses, the IOAPIC, the interrupt routing of ISA
// IRQs 0-15 to IOAPIC pins and of PCI INTA# lines (mptable_pci.go). Linux
// reads it when there is no ACPI.
const (
	mpfSize       = 16
	mpcHeaderSize = 44
	mpProcSize    = 20
	mpBusSize     = 8
	mpIOAPICSize  = 8
	mpIntSize     = 8

	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIOIntr    = 3
	mpLocalIntr = 4

	apicVersion   = 0x14
	ioapicID      = 0xfe // above every vCPU's APIC id
	ioapicVersion = 0x11
	cpuEnabled    = 1
	cpuBSP        = 2
	intINT        = 0
	intNMI        = 1
	intExtINT     = 3

	// MaxCPUs is how many processor entries fit the EBDA space reserved
	// for the table.
	MaxCPUs = (memmap.LowRAMEnd - memmap.MPTableAddr - mpfSize - mpcHeaderSize - 2*mpBusSize - mpIOAPICSize -
		(18+PCIINTxDevices)*mpIntSize) / mpProcSize
)

// WriteMPTable writes the MP floating pointer and configuration table for
// cpus vCPUs (APIC ids 0..cpus-1, the first the bootstrap processor).
func WriteMPTable(mem *guestmem.Memory, cpus int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("MP table for %d vCPUs: want 1-%d", cpus, MaxCPUs)
	}
	le := binary.LittleEndian
	var body []byte
	entries := 0
	add := func(e []byte) { body = append(body, e...); entries++ }
	for i := range cpus {
		e := make([]byte, mpProcSize)
		e[0] = mpProcessor
		e[1] = byte(i) // APIC id
		e[2] = apicVersion
		e[3] = cpuEnabled
		if i == 0 {
			e[3] |= cpuBSP
		}
		le.PutUint32(e[4:], 0x600)     // CPU signature: family 6
		le.PutUint32(e[8:], 1<<9|1<<0) // features: APIC, FPU
		add(e)
	}
	pci := mpPCIEntries()
	add(pci[0]) // the PCI bus, then ISA: bus entries precede the others
	add([]byte{mpBus, mpISABusID, 'I', 'S', 'A', ' ', ' ', ' '})
	ioa := make([]byte, mpIOAPICSize)
	ioa[0], ioa[1], ioa[2], ioa[3] = mpIOAPIC, ioapicID, ioapicVersion, 1
	le.PutUint32(ioa[4:], memmap.IOAPICBase)
	add(ioa)
	for irq := range 16 {
		e := make([]byte, mpIntSize)
		e[0], e[1] = mpIOIntr, intINT
		e[4], e[5], e[6], e[7] = mpISABusID, byte(irq), ioapicID, byte(irq) // ISA IRQ → IOAPIC pin
		add(e)
	}
	for _, e := range pci[1:] {
		add(e)
	}
	// Local interrupts: ExtINT and NMI to every LAPIC's LINT0/LINT1.
	add([]byte{mpLocalIntr, intExtINT, 0, 0, 0, 0, 0xff, 0})
	add([]byte{mpLocalIntr, intNMI, 0, 0, 0, 0, 0xff, 1})

	table := make([]byte, mpcHeaderSize, mpcHeaderSize+len(body))
	copy(table[0:], "PCMP")
	table = append(table, body...)
	le.PutUint16(table[4:], uint16(len(table))) // base table length
	table[6] = 4                                // spec revision 1.4
	copy(table[8:], "POPVMM  ")
	copy(table[16:], "popvmm 1    ")
	le.PutUint16(table[34:], uint16(entries))
	le.PutUint32(table[36:], memmap.LAPICBase)
	table[7] = checksum(table)

	mpf := make([]byte, mpfSize)
	copy(mpf, "_MP_")
	le.PutUint32(mpf[4:], memmap.MPTableAddr+mpfSize) // config table right after
	mpf[8] = 1                                        // length in 16-byte units
	mpf[9] = 4
	mpf[10] = checksum(mpf)

	if err := mem.Write(memmap.MPTableAddr, mpf); err != nil {
		return fmt.Errorf("write MP floating pointer: %w", err)
	}
	if err := mem.Write(memmap.MPTableAddr+mpfSize, table); err != nil {
		return fmt.Errorf("write MP table: %w", err)
	}
	return nil
}

// checksum is the byte that makes b sum to zero (b's own checksum byte
// must be zero when called).
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
