// Package ipi will provide the shared inter-kernel window: an
// ivshmem-compatible PCI device whose BAR2 is one memfd shared by every
// kernel, doorbells routed KVM ioeventfd → irqfd with no popvmm thread on
// the path, the ivshmem-server protocol for host peers, and the messaging
// layer built on the window.
//
// Not built yet: package memmap already reserves the window BAR in every
// kernel's map, and cluster.toml's [cluster.window] sizes it.
package ipi
