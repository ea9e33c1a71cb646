package kvm

import (
	"sync/atomic"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// ioctlPtr issues an ioctl whose argument is a pointer to p's struct.
// An EINTR is retried (see eintr).
func ioctlPtr(fd int, name string, req uintptr, p unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return ioctlErr(name, e)
	}
}

// addrOf is the host virtual address of b's first byte (b is mmapped
// memory that the Go garbage collector never moves or frees).
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

func (v *VM) setUserMemoryRegion(r *kvmUserspaceMemoryRegion) error {
	return ioctlPtr(v.fd, "KVM_SET_USER_MEMORY_REGION",
		gokvm.IIOW(nrSetUserMemory, unsafe.Sizeof(*r)), unsafe.Pointer(r))
}

func (v *VM) irqLine(l *kvmIRQLevel) error {
	return ioctlPtr(v.fd, "KVM_IRQ_LINE", gokvm.IIOW(nrIRQLine, unsafe.Sizeof(*l)), unsafe.Pointer(l))
}

func (v *VM) createPIT2(c kvmPITConfig) error {
	return ioctlPtr(v.fd, "KVM_CREATE_PIT2", gokvm.IIOW(nrCreatePIT2, unsafe.Sizeof(c)), unsafe.Pointer(&c))
}

func (v *VM) irqfd(r *kvmIRQFD) error {
	return ioctlPtr(v.fd, "KVM_IRQFD", gokvm.IIOW(nrIRQFD, unsafe.Sizeof(*r)), unsafe.Pointer(r))
}

func (v *VM) ioeventfd(r *kvmIOEventFD) error {
	return ioctlPtr(v.fd, "KVM_IOEVENTFD", gokvm.IIOW(nrIOEventFD, unsafe.Sizeof(*r)), unsafe.Pointer(r))
}

func (v *VM) setGSIRouting(table []byte) error {
	return ioctlPtr(v.fd, "KVM_SET_GSI_ROUTING",
		gokvm.IIOW(nrSetGSIRouting, unsafe.Sizeof(kvmIRQRoutingHeader{})), unsafe.Pointer(&table[0]))
}

func (v *VM) signalMSI(m *kvmMSI) error {
	return ioctlPtr(v.fd, "KVM_SIGNAL_MSI", gokvm.IIOW(nrSignalMSI, unsafe.Sizeof(*m)), unsafe.Pointer(m))
}

// setImmediateExit stores kvm_run.immediate_exit atomically, as part of
// the aligned 32-bit word that also holds request_interrupt_window (which
// popvmm never sets) and padding, so that another thread's store is seen
// by the vCPU thread's next KVM_RUN.
func setImmediateExit(run []byte, on bool) {
	var v uint32
	if on {
		v = 1 << 8 // byte 1, little-endian
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&run[runImmediateExitWord])), v)
}

// Struct sizes, for abi_test.go.
var abiSizes = map[string]uintptr{
	"kvm_userspace_memory_region": unsafe.Sizeof(kvmUserspaceMemoryRegion{}),
	"kvm_irq_level":               unsafe.Sizeof(kvmIRQLevel{}),
	"kvm_pit_config":              unsafe.Sizeof(kvmPITConfig{}),
	"kvm_ioeventfd":               unsafe.Sizeof(kvmIOEventFD{}),
	"kvm_irqfd":                   unsafe.Sizeof(kvmIRQFD{}),
	"kvm_irq_routing":             unsafe.Sizeof(kvmIRQRoutingHeader{}),
	"kvm_irq_routing_entry":       unsafe.Sizeof(kvmIRQRoutingEntry{}),
	"kvm_msi":                     unsafe.Sizeof(kvmMSI{}),
	"kvm_vcpu_events":             unsafe.Sizeof(Events{}),
}
