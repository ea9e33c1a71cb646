package vnet_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/vnet"
)

func TestCheckLinkName(t *testing.T) {
	for _, name := range []string{"a", "pv-test-0", "pv-0123456789ab", "eth0.100", "br_x-Y", "é", "..."} {
		if err := vnet.CheckLinkName(name); err != nil {
			t.Errorf("CheckLinkName(%q) = %v, want nil", name, err)
		}
	}
	for _, tc := range []struct {
		name string
		want []string // in the error
	}{
		{"", []string{"empty"}},
		{"pv-0123456789abc", []string{`"pv-0123456789abc"`, "16 bytes", "IFNAMSIZ", "15"}},
		{"pv-bh-0123456789", []string{`"pv-bh-0123456789"`, "16 bytes", "IFNAMSIZ", "15"}},
		{strings.Repeat("x", 40), []string{"40 bytes", "IFNAMSIZ", "15"}},
		{"ééééééé-x", []string{"16 bytes", "IFNAMSIZ"}}, // 9 characters, 16 bytes
		{".", []string{"not a valid interface name"}},
		{"..", []string{"not a valid interface name"}},
		{"pv/0", []string{`'/'`}},
		{"pv:0", []string{`':'`}},
		{"pv 0", []string{"white space"}},
		{"pv\t0", []string{"white space"}},
		{"pv\n0", []string{"white space"}},
		{"pv\v0", []string{"white space"}},
		{"pv\f0", []string{"white space"}},
		{"pv\r0", []string{"white space"}},
		{"pvà", []string{"white space", "0xa0"}}, // à is c3 a0; the kernel's isspace takes a0
		{"pv\x000", []string{"NUL"}},
		{"tap%d", []string{"'%'", "template"}},
	} {
		err := vnet.CheckLinkName(tc.name)
		if err == nil {
			t.Errorf("CheckLinkName(%q) = nil, want an error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("CheckLinkName(%q) = %v, want it to say %q", tc.name, err, w)
			}
		}
	}
}

// Every name vnet hands the kernel is checked first: a bad one is refused
// with CheckLinkName's reason and makes no link (the TUN ioctl used to
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
		want := vnet.CheckLinkName(name)
		if want == nil {
			t.Fatalf("CheckLinkName(%q) = nil", name)
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
