// Package vnet gives every kernel a virtio-net device backed by a tap on
// the cluster's Linux bridge, managed with github.com/vishvananda/netlink,
// so the host and every kernel share one subnet and `popvmm ssh` reaches any
// kernel.
//
// The host side: EnsureBridge (idempotent, checks that an existing link of
// that name is a bridge, then converges it: exactly the configured
// addresses, MTU, up), non-persistent taps with virtio-net headers attached
// to it (always new: an existing link of the name is refused, never taken
// over; gone when their file closes, so a killed popvmm leaves none),
// RemoveLink for a stale bridge; every link name passes linkname.Check
// (IFNAMSIZ, the kernel's dev_valid_name) first.
//
// The guest side: Net, a virtio-net device (virtio 1.2, 5.1) for the
// modern PCI transport of package virtio, moving frames between its queues
// and the tap with their virtio_net_hdr on two goroutines of its own.
package vnet
