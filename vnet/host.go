package vnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Bridge is a cluster's Linux bridge, with the host's address on it.
type Bridge struct {
	Name string
	link netlink.Link
}

// DefaultMTU is the bridge's MTU when its config names none: Ethernet's,
// which is also what a new tap gets.
const DefaultMTU = 1500

// BridgeConfig is the state EnsureBridge converges a bridge to: whatever
// the bridge had before (a killed popvmm's run with another subnet, a hand
// edit) is replaced, not added to.
type BridgeConfig struct {
	Name string
	// Addrs are the bridge's addresses, exactly: every other IPv4 address
	// and every other IPv6 address but the kernel's own link-local ones is
	// removed.
	Addrs []netip.Prefix
	// MTU is the bridge's MTU; 0 means DefaultMTU.
	MTU int
	// Owner, if set, marks the bridge as made for one user (popvmm puts
	// "popvmm cluster NAME run RUNDIR" there): a new bridge gets it as its alias
	// (IFLA_IFALIAS, set right after creating it), and an existing
	// link of that name without that alias is refused rather than taken
	// over. RemoveStaleBridge deletes what a killed owner left.
	Owner string
}

// EnsureBridge converges the bridge name to one host address, hostAddr,
// the default MTU and up: see BridgeConfig.Ensure.
func EnsureBridge(name string, hostAddr netip.Prefix) (*Bridge, error) {
	return BridgeConfig{Name: name, Addrs: []netip.Prefix{hostAddr}}.Ensure()
}

// Ensure creates the bridge if it does not exist (tolerating a concurrent
// creation), checks that what exists under that name really is a bridge,
// and brings it to the config: exactly its addresses (stale ones removed,
// and an address with another prefix length counts as stale), its MTU, up.
// It then reads the bridge back and fails if it is not so.
func (c BridgeConfig) Ensure() (b *Bridge, err error) {
	if err := linkname.Check(c.Name); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	want, err := c.addrs()
	if err != nil {
		return nil, err
	}
	mtu := c.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 68 || mtu > 65535 {
		return nil, fmt.Errorf("bridge %s: MTU %d is outside 68-65535", c.Name, c.MTU)
	}

	created := false
	link, err := netlink.LinkByName(c.Name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.Name}})
		switch {
		case err == nil:
			created = true
			// A bridge this call made is gone again if the call fails.
			defer func() {
				if b == nil {
					RemoveLink(c.Name)
				}
			}()
		case !errors.Is(err, unix.EEXIST):
			return nil, fmt.Errorf("create bridge %s: %w", c.Name, err)
		}
		link, err = netlink.LinkByName(c.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", c.Name, err)
	}
	if n := link.Attrs().Name; n != c.Name {
		return nil, fmt.Errorf("bridge %s: that is an alternative name of the %s link %s", c.Name, link.Type(), n)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %s: a %s link of that name exists and is not a bridge", c.Name, link.Type())
	}
	if created && c.Owner != "" {
		// RTM_NEWLINK ignores IFLA_IFALIAS: the mark is set right after.
		if err := netlink.LinkSetAlias(link, c.Owner); err != nil {
			return nil, fmt.Errorf("bridge %s: mark it as %s's: %w", c.Name, c.Owner, err)
		}
	} else if a := link.Attrs().Alias; c.Owner != "" && a != c.Owner {
		return nil, fmt.Errorf("bridge %s: a bridge of that name exists and is not %s's (its alias is %q); delete it (ip link del %s) or choose another name", c.Name, c.Owner, a, c.Name)
	}

	// Stale addresses go first: deleting an IPv4 primary address deletes
	// the secondaries of its subnet with it, which a wanted address added
	// earlier could be.
	have, err := bridgeAddrs(link)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", c.Name, err)
	}
	for p, a := range have {
		if !slices.Contains(want, p) {
			if err := netlink.AddrDel(link, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return nil, fmt.Errorf("bridge %s: remove stale address %s: %w", c.Name, p, err)
			}
		}
	}
	for _, p := range want {
		if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
			return nil, fmt.Errorf("bridge %s: address %s: %w", c.Name, p, err)
		}
	}
	if link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("bridge %s: MTU %d: %w", c.Name, mtu, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bridge %s: up: %w", c.Name, err)
	}
	if err := checkBridge(link.Attrs().Index, c.Name, want, mtu); err != nil {
		return nil, err
	}
	return &Bridge{Name: c.Name, link: link}, nil
}

// addrs is the config's addresses, checked and without duplicates.
func (c BridgeConfig) addrs() ([]netip.Prefix, error) {
	var want []netip.Prefix
	for _, p := range c.Addrs {
		switch {
		case !p.IsValid():
			return nil, fmt.Errorf("bridge %s: address %s is not a valid prefix", c.Name, p)
		case p.Addr().Is4In6():
			return nil, fmt.Errorf("bridge %s: address %s: write an IPv4 address as such, not mapped into IPv6", c.Name, p)
		case p.Addr().Is6() && p.Addr().IsLinkLocalUnicast():
			return nil, fmt.Errorf("bridge %s: address %s: IPv6 link-local addresses are the kernel's", c.Name, p)
		}
		if !slices.Contains(want, p) {
			want = append(want, p)
		}
	}
	return want, nil
}

// bridgeAddrs is the bridge's addresses that its config governs: all but
// the IPv6 link-local ones the kernel gives any link that is up.
func bridgeAddrs(link netlink.Link) (map[netip.Prefix]*netlink.Addr, error) {
	as, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	m := map[netip.Prefix]*netlink.Addr{}
	for i := range as {
		a := &as[i]
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			continue
		}
		bits, _ := a.Mask.Size()
		m[netip.PrefixFrom(ip, bits)] = a
	}
	return m, nil
}

// checkBridge reads the bridge back and says how it differs from what
// Ensure made of it.
func checkBridge(index int, name string, want []netip.Prefix, mtu int) error {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		return fmt.Errorf("bridge %s: read back: %w", name, err)
	}
	have, err := bridgeAddrs(link)
	if err != nil {
		return fmt.Errorf("bridge %s: read back: %w", name, err)
	}
	var got []netip.Prefix
	for p := range have {
		got = append(got, p)
	}
	slices.SortFunc(got, netip.Prefix.Compare)
	sorted := slices.SortedFunc(slices.Values(want), netip.Prefix.Compare)
	switch a := link.Attrs(); {
	case a.Name != name:
		return fmt.Errorf("bridge %s: link %d is now called %s", name, index, a.Name)
	case !slices.Equal(got, sorted):
		return fmt.Errorf("bridge %s: has addresses %v, want exactly %v", name, got, sorted)
	case a.MTU != mtu:
		return fmt.Errorf("bridge %s: MTU %d, want %d", name, a.MTU, mtu)
	case a.Flags&net.FlagUp == 0:
		return fmt.Errorf("bridge %s: still down after setting it up", name)
	}
	return nil
}

// Remove deletes the bridge; a bridge already gone is not an error.
func (b *Bridge) Remove() error {
	return RemoveLink(b.Name)
}

// RemoveLink deletes the link called name, if there is one: how `up`
// clears a stale bridge a killed popvmm left behind.
func RemoveLink(name string) error {
	if err := linkname.Check(name); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if n := link.Attrs().Name; n != name {
		return fmt.Errorf("delete %s: that is an alternative name of the %s link %s, which is not deleted", name, link.Type(), n)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, &netlink.LinkNotFoundError{}) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// RemoveStaleBridge deletes the bridge called name when stale, given the
// bridge's alias (BridgeConfig.Owner), says its owner is gone: the bridge
// a killed owner left behind. stale returns nil to have it deleted, or
// why not (an owner still running, another program's bridge): that error
// is returned, wrapped with the bridge's name. It reports whether it
// deleted one; a missing link is no error; a link of that name that is
// not a bridge is left alone and reported.
func RemoveStaleBridge(name string, stale func(alias string) error) (bool, error) {
	if err := linkname.Check(name); err != nil {
		return false, err
	}
	link, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	a := link.Attrs()
	if _, isBridge := link.(*netlink.Bridge); !isBridge || a.Name != name {
		return false, fmt.Errorf("bridge %s: a %s link of that name exists (alias %q); delete it (ip link del %s) or choose another name",
			name, link.Type(), a.Alias, a.Name)
	}
	if err := stale(a.Alias); err != nil {
		return false, fmt.Errorf("bridge %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, &netlink.LinkNotFoundError{}) {
		return false, fmt.Errorf("delete stale bridge %s: %w", name, err)
	}
	return true, nil
}

// OwnedBy is the stale test of RemoveStaleBridge for a bridge whose owner
// is known to be gone: its alias must be owner.
func OwnedBy(owner string) func(alias string) error {
	return func(alias string) error {
		if owner == "" || alias != owner {
			return fmt.Errorf("the bridge of that name is not %s's (its alias is %q); delete it (ip link del) or choose another name", owner, alias)
		}
		return nil
	}
}

// Tap is a non-persistent tap device on a bridge: it exists exactly as long
// as its file is open, so a popvmm that dies leaves no tap behind.
type Tap struct {
	Name string
	// File carries frames, each preceded by a virtio-net header
	// (IFF_VNET_HDR), in non-blocking mode.
	File *os.File
}

// tunDevice is the TUN/TAP clone device.
const tunDevice = "/dev/net/tun"

// OpenTap creates tap name, attaches it to the bridge and brings it up.
// The tap must be new: a link of that name that already exists (a
// persistent tap from `ip tuntap add`, another popvmm's tap, any other
// link) is refused, never taken over, so that no tap popvmm uses outlives
// it and no other program's tap is put on the cluster's bridge.
func OpenTap(name string, b *Bridge) (*Tap, error) {
	if err := linkname.Check(name); err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	// The kernel refuses an existing name itself (IFF_TUN_EXCL, below); the
	// look-up first names what is in the way.
	if l, err := netlink.LinkByName(name); err == nil {
		what := "a " + l.Type() + " link of that name"
		if n := l.Attrs().Name; n != name {
			what = fmt.Sprintf("the %s link %s, with that alternative name,", l.Type(), n)
		}
		return nil, fmt.Errorf("tap %s: %s already exists; popvmm makes its own taps and takes over none", name, what)
	} else if !errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	f, err := createTap(name)
	if err != nil {
		return nil, err
	}
	t := &Tap{Name: name, File: f}
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetMaster(link, b.link)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tap %s on bridge %s: %w", name, b.Name, err)
	}
	return t, nil
}

// createTap makes the tap name with TUNSETIFF and returns its file,
// non-blocking. IFF_TUN_EXCL makes the kernel fail with EBUSY rather than
// attach to a device of that name that already exists, so the tap is new
// even when another program creates the name between the look-up and
// here. No TUNSETPERSIST: the tap goes when the file closes.
func createTap(name string) (*os.File, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_ONE_QUEUE | unix.IFF_TUN_EXCL)
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, &os.PathError{Op: "open", Path: tunDevice, Err: err})
	}
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("tap %s: a link of that name already exists; popvmm makes its own taps and takes over none: %w", name, os.NewSyscallError("TUNSETIFF", err))
		}
		return nil, fmt.Errorf("create tap %s: %w", name, os.NewSyscallError("TUNSETIFF", err))
	}
	if got := ifr.Name(); got != name {
		unix.Close(fd) // a non-persistent tap goes with its file
		return nil, fmt.Errorf("create tap %s: the kernel named it %q", name, got)
	}
	// Non-blocking before os.NewFile, so the runtime poller takes the fd.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, os.NewSyscallError("fcntl", err))
	}
	return os.NewFile(uintptr(fd), tunDevice), nil
}

// Close closes the tap's file, which removes the tap.
func (t *Tap) Close() error {
	if t.File == nil {
		return nil
	}
	err := t.File.Close()
	t.File = nil
	return err
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
