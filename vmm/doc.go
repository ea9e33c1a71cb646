// Package vmm will run one kernel of a cluster as a KVM VM: typed handles
// over github.com/bobuhiro11/gokvm's ioctls (plus KVM_IOEVENTFD and
// KVM_IRQFD), guest memory slots laid out by package memmap, the Linux boot
// protocol and PVH entry, vCPU threads pinned to the kernel's host cores,
// and the port-I/O/MMIO bus devices attach to. It never imports a device
// package; the supervisor wires them together.
//
// Built so far: exit decoding and dispatch (HandleExit, a pure function of
// the kvm_run page and the buses, tested with fabricated exits). The KVM
// handles, memory slots, vCPU threads and run loop need /dev/kvm and land
// with the VMM-core issue; until then the supervisor plans kernels and keeps
// them in state "defined".
package vmm
