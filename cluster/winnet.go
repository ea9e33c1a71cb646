package cluster

import (
	"fmt"
	"net/netip"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/winnet"
)

// Winnet is the window network (docs/winnet.md): when Enabled, every
// kernel gets a second window device whose BAR2 is a window of Size bytes
// laid out by package winnet, and an interface win0 with address
// Kernel.WinnetIP in Subnet.
type Winnet struct {
	Enabled bool         `json:"enabled"`
	Size    uint64       `json:"size,omitempty"`
	Subnet  netip.Prefix `json:"subnet,omitzero"`
}

// Window network defaults and bounds.
const (
	// DefaultWinnetSize is the window network's window when none is
	// given: 16 MiB rings for two kernels, 1 MiB for eight.
	DefaultWinnetSize = 64 << 20
	// DefaultWinnetSubnet is its subnet when none is given.
	DefaultWinnetSubnet = "10.200.0.0/24"
	minWinnet           = 1 << 20
	// maxWinnet keeps its BAR within the 64-bit PCI window's free gigabyte
	// after the shared window (pci.Allocator).
	maxWinnet = 512 << 20
)

// WinnetPeers is how many peers the window network's window is formatted
// for: every kernel, and at least two.
func (cl *Cluster) WinnetPeers() int { return max(2, len(cl.Kernels)) }

// WinnetAddr is kernel index's address on the window network: the
// subnet's (index+1)th address.
func WinnetAddr(subnet netip.Prefix, index int) netip.Addr {
	a := subnet.Masked().Addr()
	for range index + 1 {
		a = a.Next()
	}
	return a
}

// checkWinnet checks [cluster.winnet] once the kernels are known, and
// gives every kernel its address.
func (c *checker) checkWinnet(cl *Cluster) {
	s := c.f.Cluster.Winnet
	if !s.Enabled {
		if s.Size.IsSet() || s.Subnet != "" {
			c.warnf("cluster.winnet: size and subnet are set but enabled is false: no window network")
		}
		return
	}
	cl.Winnet = Winnet{Enabled: true, Size: DefaultWinnetSize}
	if s.Size.IsSet() {
		n, err := scalarSize(s.Size)
		switch {
		case err != nil:
			c.errf("cluster.winnet.size", "%v", err)
		case n&(n-1) != 0 || n == 0:
			c.errf("cluster.winnet.size", "%s is not a power of two (a PCI BAR must be)", memmap.FormatSize(n))
		case n < minWinnet:
			c.errf("cluster.winnet.size", "%s is under the 1 MiB minimum", memmap.FormatSize(n))
		case n > maxWinnet:
			c.errf("cluster.winnet.size", "%s is over the %s maximum", memmap.FormatSize(n), memmap.FormatSize(maxWinnet))
		default:
			cl.Winnet.Size = n
		}
	}
	if len(cl.Kernels) > 0 {
		if g, err := winnet.For(cl.Winnet.Size, cl.WinnetPeers()); err != nil {
			c.errf("cluster.winnet.size", "%s is too small for %d kernels: %v", memmap.FormatSize(cl.Winnet.Size), len(cl.Kernels), err)
		} else if g.MTU < 1500 {
			c.errf("cluster.winnet.size", "%s for %d kernels gives an MTU of %d, under 1500", memmap.FormatSize(cl.Winnet.Size), len(cl.Kernels), g.MTU)
		}
	}
	sub := s.Subnet
	if sub == "" {
		sub = DefaultWinnetSubnet
	}
	p, err := netip.ParsePrefix(sub)
	switch {
	case err != nil:
		c.errf("cluster.winnet.subnet", "%q is not a CIDR subnet such as %q", sub, DefaultWinnetSubnet)
		return
	case !p.Addr().Is4():
		c.errf("cluster.winnet.subnet", "%s: only IPv4 subnets are supported", p)
		return
	case p.Bits() < 8 || p.Bits() > 30:
		c.errf("cluster.winnet.subnet", "%s: prefix length must be 8 to 30", p)
		return
	case p.Masked() != p:
		c.errf("cluster.winnet.subnet", "%s has host bits set; did you mean %s?", p, p.Masked())
		return
	case cl.Network.Subnet.IsValid() && cl.Network.Subnet.Overlaps(p):
		c.errf("cluster.winnet.subnet", "%s overlaps cluster.network.subnet %s: the window network needs a subnet of its own", p, cl.Network.Subnet)
		return
	}
	if hosts := 1<<(32-p.Bits()) - 2; len(cl.Kernels) > hosts {
		c.errf("cluster.winnet.subnet", "%s has %d addresses for %d kernels", p, hosts, len(cl.Kernels))
		return
	}
	cl.Winnet.Subnet = p
	for _, k := range cl.Kernels {
		k.WinnetIP = WinnetAddr(p, k.Index)
	}
}

// winnetPlanLine is the window network's line in the plan.
func (cl *Cluster) winnetPlanLine() string {
	if !cl.Winnet.Enabled {
		return "off"
	}
	g, err := winnet.For(cl.Winnet.Size, cl.WinnetPeers())
	if err != nil {
		return fmt.Sprintf("%s, subnet %s", memmap.FormatSize(cl.Winnet.Size), cl.Winnet.Subnet)
	}
	return fmt.Sprintf("%s, subnet %s, MTU %d, %s per ring", memmap.FormatSize(cl.Winnet.Size), cl.Winnet.Subnet, g.MTU, memmap.FormatSize(g.DataSize))
}
