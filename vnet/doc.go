// Package vnet will give every kernel a virtio-net device backed by a tap on
// the cluster's Linux bridge, managed with github.com/vishvananda/netlink,
// so the host and every kernel share one subnet and `popvmm ssh` reaches any
// kernel.
//
// Not built yet: cluster.toml's [cluster.network] and per-kernel ip/mac are
// parsed, checked and shown by `popvmm validate` and `popvmm status`.
package vnet
