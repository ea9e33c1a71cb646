// Package vnet gives every kernel a virtio-net device backed by a tap on
// the cluster's Linux bridge, managed with github.com/vishvananda/netlink,
// so the host and every kernel share one subnet and `popvmm ssh` reaches any
// kernel.
//
// Built so far: the host side — EnsureBridge (idempotent, checks that an
// existing link of that name is a bridge, then converges it: exactly the
// configured addresses, MTU, up), non-persistent taps with virtio-net
// headers attached to it (always new: an existing link of the name is
// refused, never taken over; gone when their file closes, so a killed
// popvmm leaves none), RemoveLink for a stale bridge, and CheckLinkName,
// the one check every link name passes (IFNAMSIZ, the kernel's
// dev_valid_name). The virtio-net device model (on packages virtio and
// pci) and the wiring into `popvmm up` land with the VMM.
package vnet
