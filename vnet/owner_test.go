package vnet_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/popvmm/popvmm/vnet"
)

func TestOwnedBridge(t *testing.T) {
	inNetns(t)
	addr := netip.MustParsePrefix("10.9.0.1/24")
	cfg := vnet.BridgeConfig{Name: "pv-own", Addrs: []netip.Prefix{addr}, Owner: "popvmm cluster own"}
	b, err := cfg.Ensure()
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	l := links(t)["pv-own"]
	if l == nil || l.Attrs().Alias != cfg.Owner {
		t.Fatalf("bridge %v: alias not %q", l, cfg.Owner)
	}
	// Ensure again (same owner) converges it.
	if _, err := cfg.Ensure(); err != nil {
		t.Fatalf("Ensure again: %v", err)
	}
	// Another owner's bridge is refused, by Ensure and by RemoveStaleBridge.
	other := cfg
	other.Owner = "popvmm cluster other"
	if _, err := other.Ensure(); err == nil || !strings.Contains(err.Error(), "is not popvmm cluster other's") {
		t.Errorf("Ensure with another owner = %v, want a refusal", err)
	}
	if removed, err := vnet.RemoveStaleBridge("pv-own", vnet.OwnedBy(other.Owner)); removed || err == nil {
		t.Errorf("RemoveStaleBridge(another owner) = %v, %v; want false and an error", removed, err)
	}
	// A tap on it goes with its file; the stale bridge goes with its owner's RemoveStaleBridge.
	tap, err := vnet.OpenTap("pvt-own-0", b)
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()
	if removed, err := vnet.RemoveStaleBridge("pv-own", vnet.OwnedBy(cfg.Owner)); !removed || err != nil {
		t.Fatalf("RemoveStaleBridge(owner) = %v, %v; want true, nil", removed, err)
	}
	if ls := links(t); ls["pv-own"] != nil || ls["pvt-own-0"] != nil {
		t.Errorf("links left: %v", ls)
	}
	if removed, err := vnet.RemoveStaleBridge("pv-own", vnet.OwnedBy(cfg.Owner)); removed || err != nil {
		t.Errorf("RemoveStaleBridge(gone) = %v, %v; want false, nil", removed, err)
	}
	// A bridge made by hand (no alias) is nobody's stale bridge.
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "pv-hand"}}); err != nil {
		t.Fatal(err)
	}
	if removed, err := vnet.RemoveStaleBridge("pv-hand", vnet.OwnedBy(cfg.Owner)); removed || err == nil {
		t.Errorf("RemoveStaleBridge(hand-made) = %v, %v; want false and an error", removed, err)
	}
	hand := cfg
	hand.Name = "pv-hand"
	if _, err := hand.Ensure(); err == nil {
		t.Errorf("Ensure(hand-made bridge with an owner) = nil, want a refusal")
	}
}
