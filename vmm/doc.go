// Package vmm runs one kernel of a cluster as a KVM VM. A VM (New) has
// guest RAM on a memfd (hugetlbfs pages when configured, optionally
// populated, mlocked and bound to a NUMA node) in memory slots laid out by
// package memmap around the PCI hole, passthrough regions mapped from
// their files (read-only slots when asked), the in-kernel irqchip (PICs,
// IOAPIC, LAPICs) and PIT, CPUID from KVM_GET_SUPPORTED_CPUID filtered per
// vCPU (FilterCPUID), and a kernel loaded by package boot (bzImage 64-bit
// protocol, PVH, or a flat test binary) with an MP table through which the
// boot vCPU wakes the others with INIT-SIPI.
//
// Start runs one OS thread per vCPU (vcpu.go; never the process's main
// thread), locked for life, pinned to its host core and named
// (ThreadName); each loops over KVM_RUN and HandleExit, a pure function of
// the kvm_run page that sends port I/O and MMIO to the buses and returns
// an Action. A triple fault, a guest-reported crash, pvpanic or (with
// RestartNever) a reset ends that VM only, in state crashed with the
// reason kept and Status.Ending saying how it ended; RestartAlways
// reboots it. Stop kicks vCPUs out of KVM_RUN with immediate_exit and a
// signal to each thread; Close releases every fd, mapping and thread.
//
// The package never imports a device package: the supervisor inserts
// devices (bus.Device) on PIO and MMIO and gives them interrupt lines
// (IRQLine, or eventfds through IRQFD and IOEventFD). Package vmm/kvm holds
// the typed KVM handles.
package vmm
