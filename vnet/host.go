package vnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Bridge is a cluster's Linux bridge, with the host's address on it.
type Bridge struct {
	Name string
	link netlink.Link
}

// EnsureBridge creates the bridge name if it does not exist (tolerating a
// concurrent creation), checks that what exists under that name really is a
// bridge, gives it hostAddr (replacing what it had) and brings it up.
func EnsureBridge(name string, hostAddr netip.Prefix) (*Bridge, error) {
	link, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		link, err = netlink.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %s: a %s link of that name exists and is not a bridge", name, link.Type())
	}
	b := &Bridge{Name: name, link: link}
	addr := &netlink.Addr{IPNet: prefixToIPNet(hostAddr)}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("bridge %s: address %s: %w", name, hostAddr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bridge %s: up: %w", name, err)
	}
	return b, nil
}

// Remove deletes the bridge; a bridge already gone is not an error.
func (b *Bridge) Remove() error {
	return RemoveLink(b.Name)
}

// RemoveLink deletes the link called name, if there is one: how `up`
// clears a stale bridge a killed popvmm left behind.
func RemoveLink(name string) error {
	link, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, &netlink.LinkNotFoundError{}) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Tap is a non-persistent tap device on a bridge: it exists exactly as long
// as its file is open, so a popvmm that dies leaves no tap behind.
type Tap struct {
	Name string
	// File carries frames, each preceded by a virtio-net header
	// (IFF_VNET_HDR), in non-blocking mode.
	File *os.File
}

// OpenTap creates tap name, attaches it to the bridge and brings it up.
func OpenTap(name string, b *Bridge) (*Tap, error) {
	tt := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		NonPersist: true,
		Queues:     1,
	}
	if err := netlink.LinkAdd(tt); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	if len(tt.Fds) != 1 {
		for _, f := range tt.Fds {
			f.Close()
		}
		return nil, fmt.Errorf("create tap %s: %d queues, want 1", name, len(tt.Fds))
	}
	t := &Tap{Name: tt.Name, File: tt.Fds[0]}
	link, err := netlink.LinkByName(t.Name)
	if err == nil {
		err = netlink.LinkSetMaster(link, b.link)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tap %s on bridge %s: %w", t.Name, b.Name, err)
	}
	return t, nil
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
