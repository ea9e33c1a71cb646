package supervisor_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/supervisor"
)

func TestConflictsWithRunningClusters(t *testing.T) {
	root := t.TempDir()
	start(t, testCluster(t, root, "alpha")) // cores 0,1; pv-alpha; 10.199.0.0/24

	clash := testCluster(t, root, "beta")
	clash.Network.Bridge = "pv-alpha"
	clash.Network.Subnet = netip.MustParsePrefix("10.199.0.128/25")
	clash.Kernels[1].CPUs = []int{1, 2}
	clash.Kernels[0].CPUs = []int{3}
	err := supervisor.Conflicts(context.Background(), root, clash)
	want := []string{
		`kernel[1].cpus: core 1 is owned by kernel "secondary" of running cluster "alpha"`,
		`cluster.network.bridge: "pv-alpha" is the bridge of running cluster "alpha"`,
		`cluster.network.subnet: 10.199.0.128/25 overlaps 10.199.0.0/24 of running cluster "alpha"`,
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Conflicts = %v, want %q", err, w)
		}
	}
	if n := len(cluster.FieldErrors(err)); n != len(want) {
		t.Errorf("Conflicts gave %d errors, want %d:\n%v", n, len(want), err)
	}

	fine := testCluster(t, root, "gamma")
	fine.Network.Bridge = "pv-gamma"
	fine.Network.Subnet = netip.MustParsePrefix("10.200.0.0/24")
	fine.Kernels[0].CPUs, fine.Kernels[1].CPUs = []int{4}, []int{5}
	if err := supervisor.Conflicts(context.Background(), root, fine); err != nil {
		t.Errorf("Conflicts(disjoint cluster) = %v", err)
	}
	// A cluster does not conflict with itself (a second up of it is
	// refused by the lock instead).
	if err := supervisor.Conflicts(context.Background(), root, testCluster(t, root, "alpha")); err != nil {
		t.Errorf("Conflicts(self) = %v", err)
	}
}
