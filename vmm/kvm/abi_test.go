package kvm

import (
	"encoding/binary"
	"testing"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// TestABISizes pins each mirrored struct to its size in
// include/uapi/linux/kvm.h (x86-64).
func TestABISizes(t *testing.T) {
	want := map[string]uintptr{
		"kvm_userspace_memory_region": 32,
		"kvm_irq_level":               8,
		"kvm_pit_config":              64,
		"kvm_ioeventfd":               64,
		"kvm_irqfd":                   32,
		"kvm_irq_routing":             8,
		"kvm_irq_routing_entry":       48,
		"kvm_msi":                     32,
		"kvm_vcpu_events":             64,
	}
	for name, size := range want {
		if got := abiSizes[name]; got != size {
			t.Errorf("%s: %d bytes, want %d", name, got, size)
		}
	}
}

// TestIoctlNumbers checks request numbers against the values the C
// headers produce.
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_SET_USER_MEMORY_REGION", gokvm.IIOW(nrSetUserMemory, abiSizes["kvm_userspace_memory_region"]), 0x4020ae46},
		{"KVM_IRQ_LINE", gokvm.IIOW(nrIRQLine, abiSizes["kvm_irq_level"]), 0x4008ae61},
		{"KVM_CREATE_PIT2", gokvm.IIOW(nrCreatePIT2, abiSizes["kvm_pit_config"]), 0x4040ae77},
		{"KVM_IOEVENTFD", gokvm.IIOW(nrIOEventFD, abiSizes["kvm_ioeventfd"]), 0x4040ae79},
		{"KVM_IRQFD", gokvm.IIOW(nrIRQFD, abiSizes["kvm_irqfd"]), 0x4020ae76},
		{"KVM_SET_GSI_ROUTING", gokvm.IIOW(nrSetGSIRouting, abiSizes["kvm_irq_routing"]), 0x4008ae6a},
		{"KVM_SIGNAL_MSI", gokvm.IIOW(nrSignalMSI, abiSizes["kvm_msi"]), 0x4020aea5},
		{"KVM_RUN", gokvm.IIO(nrRun), 0xae80},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestEncodeRouting(t *testing.T) {
	b := encodeRouting([]Route{
		{GSI: 4, Chip: IRQChipIOAPIC, Pin: 4},
		{GSI: 24, MSI: true, Addr: 0x1_fee0_1000, Data: 0x41},
	})
	le := binary.LittleEndian
	if len(b) != 8+2*48 || le.Uint32(b) != 2 {
		t.Fatalf("header: len %d nr %d", len(b), le.Uint32(b))
	}
	e0, e1 := b[8:], b[56:]
	if le.Uint32(e0) != 4 || le.Uint32(e0[4:]) != routingIRQChip || le.Uint32(e0[16:]) != 2 || le.Uint32(e0[20:]) != 4 {
		t.Errorf("irqchip entry % x", e0[:24])
	}
	if le.Uint32(e1) != 24 || le.Uint32(e1[4:]) != routingMSI || le.Uint32(e1[16:]) != 0xfee01000 ||
		le.Uint32(e1[20:]) != 1 || le.Uint32(e1[24:]) != 0x41 {
		t.Errorf("msi entry % x", e1[:28])
	}
}
