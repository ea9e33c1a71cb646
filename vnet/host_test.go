package vnet_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/vnet"
)

// inNetns runs the test body on a locked thread in a fresh network
// namespace, so it touches none of the host's links (vishvananda/netlink's
// own tests do the same).
func inNetns(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		netns.Set(orig)
		orig.Close()
		runtime.UnlockOSThread()
	})
}

func links(t *testing.T) map[string]netlink.Link {
	t.Helper()
	ls, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]netlink.Link{}
	for _, l := range ls {
		m[l.Attrs().Name] = l
	}
	return m
}

func TestBridgeAndTap(t *testing.T) {
	inNetns(t)
	host := netip.MustParsePrefix("10.199.0.1/24")
	b, err := vnet.EnsureBridge("pv-test", host)
	if err != nil {
		t.Fatal(err)
	}
	// Idempotent: a second call finds the bridge and keeps one address.
	if _, err := vnet.EnsureBridge("pv-test", host); err != nil {
		t.Fatalf("second EnsureBridge: %v", err)
	}
	l := links(t)["pv-test"]
	if l == nil || l.Attrs().Flags&1 == 0 {
		t.Fatalf("bridge missing or down: %+v", l)
	}
	addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.199.0.1/24" {
		t.Errorf("bridge addresses %v", addrs)
	}

	tap, err := vnet.OpenTap("pv-test-0", b)
	if err != nil {
		t.Fatal(err)
	}
	tl := links(t)["pv-test-0"]
	if tl == nil || tl.Attrs().MasterIndex != l.Attrs().Index {
		t.Fatalf("tap not on the bridge: %+v", tl)
	}
	// Closing the tap's file removes the tap: nothing left behind.
	tap.Close()
	tap.Close() // twice is fine
	if _, ok := links(t)["pv-test-0"]; ok {
		t.Error("tap survived its file")
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(); err != nil {
		t.Errorf("removing a removed bridge: %v", err)
	}
	if _, ok := links(t)["pv-test"]; ok {
		t.Error("bridge left after Remove")
	}
}

func TestBridgeNameTakenByAnotherKind(t *testing.T) {
	inNetns(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pv-veth"}, PeerName: "pv-veth-p"}); err != nil {
		t.Fatal(err)
	}
	_, err := vnet.EnsureBridge("pv-veth", netip.MustParsePrefix("10.0.0.1/24"))
	if err == nil || !strings.Contains(err.Error(), "pv-veth") || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("EnsureBridge over a veth link = %v", err)
	}
	// A stale bridge (left by a killed popvmm) is cleared by RemoveLink.
	if _, err := vnet.EnsureBridge("pv-stale", netip.MustParsePrefix("10.1.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := vnet.RemoveLink("pv-stale"); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t)["pv-stale"]; ok {
		t.Error("stale bridge not removed")
	}
	if err := vnet.RemoveLink("never-was"); err != nil {
		t.Errorf("RemoveLink(absent) = %v", err)
	}
}

// bridgeState is what EnsureBridge governs on the bridge: its addresses
// (but the kernel's IPv6 link-local ones), sorted, its MTU and whether it
// is up.
func bridgeState(t *testing.T, name string) (addrs []string, mtu int, up bool) {
	t.Helper()
	l := links(t)[name]
	if l == nil {
		t.Fatalf("bridge %s missing", name)
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		addrs = append(addrs, a.IPNet.String())
	}
	slices.Sort(addrs)
	return addrs, l.Attrs().MTU, l.Attrs().Flags&net.FlagUp != 0
}

func addAddr(t *testing.T, name, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(links(t)[name], a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, name, err)
	}
}

func ipv6Available(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("skipped: no IPv6 in this kernel")
	}
}

// EnsureBridge converges: whatever the bridge had from an earlier run or a
// hand edit (an address, one with another prefix length, extra ones, an
// MTU, down) is replaced, not added to.
func TestEnsureBridgeConverges(t *testing.T) {
	prefixes := func(ss ...string) []netip.Prefix {
		var ps []netip.Prefix
		for _, s := range ss {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		return ps
	}
	for i, tc := range []struct {
		desc    string
		before  func(t *testing.T, name string) // after EnsureBridge with 10.199.0.1/24
		cfg     vnet.BridgeConfig               // Name filled in
		addrs   []string
		mtu     int
		needIP6 bool
	}{
		{desc: "same config again",
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "address changed",
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.200.0.1/24")}, addrs: []string{"10.200.0.1/24"}, mtu: 1500},
		{desc: "host address changed within the subnet",
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.254/24")}, addrs: []string{"10.199.0.254/24"}, mtu: 1500},
		{desc: "prefix length changed",
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/16")}, addrs: []string{"10.199.0.1/16"}, mtu: 1500},
		{desc: "stale addresses added by hand",
			before: func(t *testing.T, name string) {
				addAddr(t, name, "10.199.0.7/24") // a secondary
				addAddr(t, name, "192.168.77.1/24")
				addAddr(t, name, "10.199.0.1/25") // same address, other prefix length
			},
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "wanted address is the secondary of a stale primary",
			// Deleting a primary deletes its subnet's secondaries.
			before: func(t *testing.T, name string) {
				a, _ := netlink.ParseAddr("10.199.0.1/24")
				if err := netlink.AddrDel(links(t)[name], a); err != nil {
					t.Fatal(err)
				}
				addAddr(t, name, "10.199.0.5/24")
				addAddr(t, name, "10.199.0.1/24")
			},
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "stale IPv6 address", needIP6: true,
			before: func(t *testing.T, name string) { addAddr(t, name, "fd00:199::1/64") },
			cfg:    vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "IPv6 address configured", needIP6: true,
			cfg:   vnet.BridgeConfig{Addrs: prefixes("fd00:199::1/64", "10.199.0.1/24")},
			addrs: []string{"10.199.0.1/24", "fd00:199::1/64"}, mtu: 1500},
		{desc: "set down by hand",
			before: func(t *testing.T, name string) {
				if err := netlink.LinkSetDown(links(t)[name]); err != nil {
					t.Fatal(err)
				}
			},
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "MTU changed by hand",
			before: func(t *testing.T, name string) {
				if err := netlink.LinkSetMTU(links(t)[name], 1400); err != nil {
					t.Fatal(err)
				}
			},
			cfg: vnet.BridgeConfig{Addrs: prefixes("10.199.0.1/24")}, addrs: []string{"10.199.0.1/24"}, mtu: 1500},
		{desc: "MTU and two addresses configured",
			cfg:   vnet.BridgeConfig{Addrs: prefixes("10.201.0.1/24", "10.199.0.1/24", "10.201.0.1/24"), MTU: 9000},
			addrs: []string{"10.199.0.1/24", "10.201.0.1/24"}, mtu: 9000},
		{desc: "no address",
			cfg: vnet.BridgeConfig{}, mtu: 1500},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if tc.needIP6 {
				ipv6Available(t)
			}
			inNetns(t)
			name := fmt.Sprintf("pv-cv%d", i)
			if _, err := vnet.EnsureBridge(name, netip.MustParsePrefix("10.199.0.1/24")); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { vnet.RemoveLink(name) })
			if tc.before != nil {
				tc.before(t, name)
			}
			tc.cfg.Name = name
			if _, err := tc.cfg.Ensure(); err != nil {
				t.Fatalf("%+v.Ensure() = %v", tc.cfg, err)
			}
			addrs, mtu, up := bridgeState(t, name)
			if !slices.Equal(addrs, tc.addrs) || mtu != tc.mtu || !up {
				t.Errorf("after %+v.Ensure(): addresses %v, MTU %d, up %v; want %v, %d, true", tc.cfg, addrs, mtu, up, tc.addrs, tc.mtu)
			}
		})
	}
}

func TestBridgeConfigRefused(t *testing.T) {
	inNetns(t)
	for _, cfg := range []vnet.BridgeConfig{
		{Name: "pv-bad0", Addrs: []netip.Prefix{{}}},
		{Name: "pv-bad1", Addrs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.199.0.1/120")}},
		{Name: "pv-bad2", Addrs: []netip.Prefix{netip.MustParsePrefix("fe80::1/64")}},
		{Name: "pv-bad3", Addrs: []netip.Prefix{netip.MustParsePrefix("10.199.0.1/24")}, MTU: 67},
		{Name: "pv-bad4", Addrs: []netip.Prefix{netip.MustParsePrefix("10.199.0.1/24")}, MTU: 65536},
	} {
		if _, err := cfg.Ensure(); err == nil || !strings.Contains(err.Error(), cfg.Name) {
			t.Errorf("%+v.Ensure() = %v, want an error naming the bridge", cfg, err)
		}
		if _, ok := links(t)[cfg.Name]; ok {
			t.Errorf("%+v.Ensure() failed but made the bridge", cfg)
		}
	}
}

// OpenTap makes its tap or fails: a link of that name that exists already
// is refused, named, and left as it was (not put on the bridge, not
// adopted so that it outlives popvmm, not removed).
func TestOpenTapRefusesExistingLink(t *testing.T) {
	for _, tc := range []struct {
		desc string
		name string
		make func(t *testing.T, name string, b *vnet.Bridge)
	}{
		{"persistent tap", "pv-ex-ptap", func(t *testing.T, name string, _ *vnet.Bridge) {
			persistentTap(t, name, netlink.TUNTAP_MODE_TAP)
		}},
		{"persistent tun", "pv-ex-ptun", func(t *testing.T, name string, _ *vnet.Bridge) {
			persistentTap(t, name, netlink.TUNTAP_MODE_TUN)
		}},
		{"tap held open by another popvmm", "pv-ex-open", func(t *testing.T, name string, b *vnet.Bridge) {
			tap, err := vnet.OpenTap(name, b)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tap.Close() })
		}},
		{"veth link", "pv-ex-veth", func(t *testing.T, name string, _ *vnet.Bridge) {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "-p"}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { vnet.RemoveLink(name) })
		}},
		{"alternative name of a link", "pv-ex-alt", func(t *testing.T, name string, _ *vnet.Bridge) {
			persistentTap(t, "pv-ex-real", netlink.TUNTAP_MODE_TAP)
			altName(t, "pv-ex-real", name)
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			inNetns(t)
			b, err := vnet.EnsureBridge("pv-ex", netip.MustParsePrefix("10.199.0.1/24"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Remove() })
			tc.make(t, tc.name, b)
			l, err := netlink.LinkByName(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			before := l.Attrs()

			tap, err := vnet.OpenTap(tc.name, b)
			if err == nil {
				tap.Close()
				t.Fatalf("OpenTap(%q) over an existing %s = nil error", tc.name, tc.desc)
			}
			if !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), "already exists") {
				t.Errorf("OpenTap(%q) = %v, want it to name the link and say it already exists", tc.name, err)
			}
			if l, err = netlink.LinkByName(tc.name); err != nil {
				t.Fatalf("OpenTap(%q) removed the existing link: %v", tc.name, err)
			}
			if a := l.Attrs(); a.Index != before.Index || a.MasterIndex != before.MasterIndex || a.Flags != before.Flags {
				t.Errorf("OpenTap(%q) changed the existing link: index %d master %d flags %v, was %d %d %v",
					tc.name, a.Index, a.MasterIndex, a.Flags, before.Index, before.MasterIndex, before.Flags)
			}
		})
	}
}

// The kernel itself refuses an existing name (IFF_TUN_EXCL), so a tap made
// by someone else between OpenTap's look-up and its TUNSETIFF is not
// attached to either.
func TestCreateTapExclusive(t *testing.T) {
	inNetns(t)
	persistentTap(t, "pv-excl", netlink.TUNTAP_MODE_TAP)
	f, err := vnet.CreateTap("pv-excl")
	if err == nil {
		f.Close()
		t.Fatal("TUNSETIFF attached to an existing persistent tap")
	}
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "pv-excl") || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("CreateTap(%q) = %v, want EBUSY naming the tap and saying it already exists", "pv-excl", err)
	}
	f, err = vnet.CreateTap("pv-excl-new")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, ok := links(t)["pv-excl-new"]; ok {
		t.Error("tap survived its file")
	}
}

// persistentTap makes a tap or tun the way `ip tuntap add` does, and
// deletes it when the test ends.
func persistentTap(t *testing.T, name string, mode netlink.TuntapMode) {
	t.Helper()
	pt := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: mode,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE}
	if err := netlink.LinkAdd(pt); err != nil {
		t.Fatal(err)
	}
	for _, f := range pt.Fds {
		f.Close()
	}
	t.Cleanup(func() {
		if err := vnet.RemoveLink(name); err != nil {
			t.Error(err)
		}
	})
}

// altName gives link an alternative name (`ip link property add altname`),
// which the kernel's name look-ups find like its name.
func altName(t *testing.T, link, alt string) {
	t.Helper()
	if err := netlink.LinkAddAltName(links(t)[link], alt); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			t.Skipf("skipped: no alternative link names here: %v", err)
		}
		t.Fatal(err)
	}
}

// A name the kernel already resolves as another link's alternative name
// is not that link's bridge: EnsureBridge says so instead of adopting it
// under a name that is not its own.
func TestAlternativeLinkName(t *testing.T) {
	inNetns(t)
	if _, err := vnet.EnsureBridge("pv-alt-real", netip.MustParsePrefix("10.199.0.1/24")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vnet.RemoveLink("pv-alt-real") })
	altName(t, "pv-alt-real", "pv-alt")
	_, err := vnet.EnsureBridge("pv-alt", netip.MustParsePrefix("10.200.0.1/24"))
	if err == nil || !strings.Contains(err.Error(), "pv-alt-real") || !strings.Contains(err.Error(), "alternative name") {
		t.Errorf("EnsureBridge over another bridge's alternative name = %v", err)
	}
	if addrs, _, _ := bridgeState(t, "pv-alt-real"); !slices.Equal(addrs, []string{"10.199.0.1/24"}) {
		t.Errorf("the other bridge's addresses changed to %v", addrs)
	}
	// Nor does RemoveLink delete the link that has the name as an
	// alternative one.
	if err := vnet.RemoveLink("pv-alt"); err == nil || !strings.Contains(err.Error(), "pv-alt-real") {
		t.Errorf("RemoveLink of another link's alternative name = %v", err)
	}
	if _, ok := links(t)["pv-alt-real"]; !ok {
		t.Error("RemoveLink deleted the link behind an alternative name")
	}
}

// A bridge that Ensure made and then could not configure is removed again.
func TestEnsureBridgeUndoesCreation(t *testing.T) {
	ipv6Available(t)
	inNetns(t)
	// New links in this namespace get no IPv6, so the address cannot go on.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0); err != nil {
		t.Skipf("skipped: cannot disable IPv6 for new links: %v", err)
	}
	cfg := vnet.BridgeConfig{Name: "pv-undo", Addrs: []netip.Prefix{netip.MustParsePrefix("fd00:199::1/64")}}
	if _, err := cfg.Ensure(); err == nil {
		t.Fatalf("%+v.Ensure() with IPv6 disabled = nil error", cfg)
	}
	if _, ok := links(t)["pv-undo"]; ok {
		t.Errorf("%+v.Ensure() failed and left the bridge it made", cfg)
	}
}
