package kvm

// Kernel ABI of the ioctls gokvm lacks or gets wrong, mirrored from
// include/uapi/linux/kvm.h (x86-64). Sizes are checked by abi_test.go.

// ioctl request numbers (_IOW(KVMIO, nr, struct)) computed with gokvm's
// helpers in kvm.go; the numbers here are the nr field.
const (
	nrIRQLine         = 0x61
	nrSetGSIRouting   = 0x6a
	nrIRQFD           = 0x76
	nrCreatePIT2      = 0x77
	nrIOEventFD       = 0x79
	nrSignalMSI       = 0xa5
	nrSetUserMemory   = 0x46
	nrRun             = 0x80
	nrCheckExtension  = 0x03
	nrGetVCPUMmapSize = 0x04
)

// kvmUserspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type kvmUserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// Memory slot flags (KVM_MEM_*).
const (
	MemLogDirtyPages = 1 << 0
	MemReadOnly      = 1 << 1
)

// kvmIRQLevel mirrors struct kvm_irq_level.
type kvmIRQLevel struct {
	IRQ   uint32
	Level uint32
}

// kvmPITConfig mirrors struct kvm_pit_config.
type kvmPITConfig struct {
	Flags uint32
	Pad   [15]uint32
}

// pitSpeakerDummy is KVM_PIT_SPEAKER_DUMMY: KVM then also emulates port
// 0x61 (the PC speaker gate of PIT channel 2), which Linux's PIT-based TSC
// calibration polls. Without it that port goes to userspace.
const pitSpeakerDummy = 1

// kvmIOEventFD mirrors struct kvm_ioeventfd.
type kvmIOEventFD struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	Pad       [36]uint8
}

// KVM_IOEVENTFD_FLAG_*.
const (
	ioeventfdDatamatch = 1 << 0
	ioeventfdPIO       = 1 << 1
	ioeventfdDeassign  = 1 << 2
)

// kvmIRQFD mirrors struct kvm_irqfd.
type kvmIRQFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	Pad        [16]uint8
}

// KVM_IRQFD_FLAG_*.
const (
	irqfdDeassign = 1 << 0
	irqfdResample = 1 << 1
)

// kvmIRQRoutingHeader mirrors the head of struct kvm_irq_routing; its
// entries (kvmIRQRoutingEntry) follow it in memory.
type kvmIRQRoutingHeader struct {
	Nr    uint32
	Flags uint32
}

// kvmIRQRoutingEntry mirrors struct kvm_irq_routing_entry. U is the union
// (kvm_irq_routing_irqchip: irqchip, pin; kvm_irq_routing_msi:
// address_lo, address_hi, data, devid), padded to 8 u32.
type kvmIRQRoutingEntry struct {
	GSI   uint32
	Type  uint32
	Flags uint32
	Pad   uint32
	U     [8]uint32
}

// KVM_IRQ_ROUTING_*.
const (
	routingIRQChip = 1
	routingMSI     = 2
)

// kvmMSI mirrors struct kvm_msi.
type kvmMSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	Pad       [12]uint8
}

// Offsets into struct kvm_run the VCPU handle itself touches.
const (
	runImmediateExitWord = 0 // the u32 holding request_interrupt_window (byte 0) and immediate_exit (byte 1)
)
