package vnet_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/vnet"
)

// Every name vnet hands the kernel is checked first: a bad one is refused
// with linkname.Check's reason and makes no link (the TUN ioctl used to
// truncate a 16-byte tap name to 15, and a second such name then failed
// with a bare EBUSY).
func TestBadLinkNamesRefused(t *testing.T) {
	inNetns(t)
	b, err := vnet.EnsureBridge("pv-ln", netip.MustParsePrefix("10.199.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Remove() })
	bad := []string{"pv-ln-0123456789", "pv-ln-0123456780", "pv-0123456789abc", "", ".", "..", "pv/ln", "pv:ln", "pv ln", "pv\tln", "pvà", "pv\x00ln", "pv-ln%d"}
	for _, name := range bad {
		want := linkname.Check(name)
		if want == nil {
			t.Fatalf("linkname.Check(%q) = nil", name)
		}
		if tap, err := vnet.OpenTap(name, b); err == nil || !strings.Contains(err.Error(), want.Error()) {
			if tap != nil {
				tap.Close()
			}
			t.Errorf("OpenTap(%q) = %v, want %v", name, err, want)
		}
		if _, err := vnet.EnsureBridge(name, netip.MustParsePrefix("10.198.0.1/24")); err == nil || !strings.Contains(err.Error(), want.Error()) {
			t.Errorf("EnsureBridge(%q) = %v, want %v", name, err, want)
		}
		if err := vnet.RemoveLink(name); err == nil || !strings.Contains(err.Error(), want.Error()) {
			t.Errorf("RemoveLink(%q) = %v, want %v", name, err, want)
		}
	}
	for n := range links(t) {
		if n != "lo" && n != "pv-ln" {
			t.Errorf("link %q made from a refused name", n)
		}
	}

	// 15 bytes is the limit, and is taken exactly.
	b15, err := vnet.EnsureBridge("pv-0123456789ab", netip.MustParsePrefix("10.198.0.1/24"))
	if err != nil {
		t.Fatalf("EnsureBridge with a 15-byte name: %v", err)
	}
	t.Cleanup(func() { b15.Remove() })
	tap, err := vnet.OpenTap("pv-ln-012345678", b15)
	if err != nil {
		t.Fatalf("OpenTap with a 15-byte name: %v", err)
	}
	defer tap.Close()
	if tap.Name != "pv-ln-012345678" {
		t.Errorf("Tap.Name = %q, want %q", tap.Name, "pv-ln-012345678")
	}
	if _, ok := links(t)["pv-ln-012345678"]; !ok {
		t.Errorf("15-byte tap not found under its name")
	}
}
