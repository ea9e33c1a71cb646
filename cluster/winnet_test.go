package cluster_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
)

// winnetCluster is a cluster of n kernels with [cluster.winnet] body.
func winnetCluster(n int, body string) string {
	return strings.Replace(manyKernels(n, "1M", false), "[cluster.network]", "[cluster.winnet]\n"+body+"\n[cluster.network]", 1)
}

func TestCheckWinnetDefaults(t *testing.T) {
	cl, err := load(t, manyKernels(3, "1M", false), fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Winnet.Enabled || cl.Kernels[0].WinnetIP.IsValid() {
		t.Errorf("no [cluster.winnet]: %+v, kernel 0 at %v; want none", cl.Winnet, cl.Kernels[0].WinnetIP)
	}
	cl, err = load(t, winnetCluster(3, "enabled = true"), fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	want := cluster.Winnet{Enabled: true, Size: cluster.DefaultWinnetSize, Subnet: netip.MustParsePrefix(cluster.DefaultWinnetSubnet)}
	if cl.Winnet != want {
		t.Errorf("Winnet = %+v, want %+v", cl.Winnet, want)
	}
	for i, k := range cl.Kernels {
		if w := netip.AddrFrom4([4]byte{10, 200, 0, byte(i + 1)}); k.WinnetIP != w {
			t.Errorf("kernel[%d].WinnetIP = %v, want %v", i, k.WinnetIP, w)
		}
	}
	cl, err = load(t, winnetCluster(2, "enabled = true\nsize = \"4M\"\nsubnet = \"172.31.7.0/29\""), fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Winnet.Size != 4<<20 || cl.Kernels[1].WinnetIP.String() != "172.31.7.2" {
		t.Errorf("Winnet = %+v, kernel[1] at %v", cl.Winnet, cl.Kernels[1].WinnetIP)
	}
}

func TestCheckWinnetErrors(t *testing.T) {
	for _, tt := range []struct {
		kernels int
		body    string
		want    string
	}{
		{2, `enabled = true
size = "3M"`, "cluster.winnet.size: 3 MiB is not a power of two"},
		{2, `enabled = true
size = "1G"`, "cluster.winnet.size: 1 GiB is over the 512 MiB maximum"},
		{2, `enabled = true
size = "512K"`, "cluster.winnet.size: 512 KiB is under the 1 MiB minimum"},
		{16, `enabled = true
size = "1M"`, "cluster.winnet.size: 1 MiB is too small for 16 kernels"},
		{2, `enabled = true
subnet = "10.199.3.0/24"`, "cluster.winnet.subnet: 10.199.3.0/24 overlaps cluster.network.subnet 10.199.0.0/16"},
		{2, `enabled = true
subnet = "10.200.0.1/24"`, "cluster.winnet.subnet: 10.200.0.1/24 has host bits set"},
		{2, `enabled = true
subnet = "fd00::/64"`, "cluster.winnet.subnet: fd00::/64: only IPv4"},
		{2, `enabled = true
subnet = "nonsense"`, `cluster.winnet.subnet: "nonsense" is not a CIDR subnet`},
		{4, `enabled = true
subnet = "10.200.0.0/30"`, "cluster.winnet.subnet: 10.200.0.0/30 has 2 addresses for 4 kernels"},
	} {
		_, err := load(t, winnetCluster(tt.kernels, tt.body), fakeHost{})
		var got []string
		if err != nil {
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.Contains(l, "winnet") {
					got = append(got, strings.TrimSpace(l))
				}
			}
		}
		if len(got) != 1 || !strings.HasPrefix(got[0], tt.want) {
			t.Errorf("%d kernels, %q: %q, want one problem starting %q", tt.kernels, tt.body, got, tt.want)
		}
	}
}

// TestWinnetPlan: validate's plan says the window network's size, subnet,
// MTU and ring size, and each kernel's win0 address; "off" without one.
func TestWinnetPlan(t *testing.T) {
	for _, tt := range []struct {
		body string
		want []string
	}{
		{"enabled = true", []string{"window network  64 MiB, subnet 10.200.0.0/24, MTU 65000, 16376 KiB per ring",
			"window network  win0 10.200.0.1/24", "window network  win0 10.200.0.2/24"}},
		{"enabled = false", []string{"window network  off"}},
	} {
		cl, err := load(t, winnetCluster(2, tt.body), fakeHost{})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		if err := cl.WritePlan(&b, func(*cluster.Kernel) string { return "" }); err != nil {
			t.Fatal(err)
		}
		for _, w := range tt.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%q: plan lacks %q:\n%s", tt.body, w, b.String())
			}
		}
	}
}
