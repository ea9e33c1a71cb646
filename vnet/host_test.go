package vnet_test

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/vnet"
)

// inNetns runs the test body on a locked thread in a fresh network
// namespace, so it touches none of the host's links (vishvananda/netlink's
// own tests do the same).
func inNetns(t *testing.T) {
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
