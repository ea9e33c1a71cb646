// Package ipi provides the shared inter-kernel window and its doorbells.
//
// The window is one memfd (Window) shared by every kernel of a cluster, as
// BAR2 of each kernel's window device, and by host processes that join as
// peers through popvmm's ivshmem server (Server), which speaks QEMU's
// ivshmem-server protocol, so any ivshmem client works; the Go Client here
// is one. A peer is a kernel (its index in cluster.toml) or a host peer (an
// id the server gives).
//
// Every peer has one eventfd per interrupt vector, and ringing a peer is
// writing its eventfd; Doorbells holds them all: the kernels' eventfds are
// made there, and the server hands them to host peers as those kernels'
// eventfds, while the host peers' own are recorded there.
//
// Device (pcifunction.go) is the window device of one kernel's VM: a PCI
// function with QEMU's ivshmem-doorbell registers (BAR0, regs.go), MSI-X
// (BAR1) and the window (BAR2). It has the VMM wire it into KVM through
// the Wiring interface (pciwiring.go) so that no doorbell passes through
// popvmm: an ioeventfd per bell on the Doorbell register of every VM, and
// an irqfd per vector on the kernel's own bells. PlanDoorbells and
// PlanWindow (plan.go) are that wiring as data, and windowgeom.Slots the
// window's KVM slots, read-only outside the kernel's own section and the
// common page when the window is protected (docs/window.md).
//
// GuestDevice (guestdriver.go) is the guest-side driver of the same
// device: from inside a guest, through sysfs, its BARs and uio. Package
// ipi/msg is the messaging layer on the window.
package ipi
