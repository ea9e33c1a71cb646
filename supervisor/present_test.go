package supervisor_test

import (
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/supervisor"
)

// TestStatusShowsWhatExists: status reads the host. A cluster brought up
// without kernels has its window (a socket in the run directory) but no
// bridge and no taps: the table prints the window plainly and marks the
// bridge, the host address and the taps as only planned. A bridge name
// that does exist on the host (lo, standing in for a bridge that `up`
// made) is printed plainly.
func TestStatusShowsWhatExists(t *testing.T) {
	for _, tc := range []struct {
		bridge  string
		exists  bool
		marking string
	}{
		{"pv-nonexistent", false, "network bridge pv-nonexistent (planned, not created)"},
		{"lo", true, "network bridge lo  subnet"},
	} {
		cl := testCluster(t, t.TempDir(), "demo")
		cl.Network.Bridge = tc.bridge
		c, _ := start(t, cl)
		st, err := c.Status(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.BridgeExists != tc.exists || !st.WindowExists {
			t.Errorf("bridge %s: BridgeExists = %v, WindowExists = %v; want %v, true", tc.bridge, st.BridgeExists, st.WindowExists, tc.exists)
		}
		for _, k := range st.Kernels {
			if k.TapExists {
				t.Errorf("kernel %s: TapExists with no VM running (tap %q)", k.Name, k.Tap)
			}
		}
		var b strings.Builder
		if err := supervisor.WriteStatus(&b, st, time.Now()); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if !strings.Contains(out, tc.marking) {
			t.Errorf("bridge %s: status table lacks %q:\n%s", tc.bridge, tc.marking, out)
		}
		if strings.Contains(out, "window 1 MiB (planned") {
			t.Errorf("status table marks the window, which is up, as planned:\n%s", out)
		}
		for _, k := range st.Kernels {
			if strings.Contains(out, k.Tap) {
				t.Errorf("status table shows tap %s, which does not exist:\n%s", k.Tap, out)
			}
		}
	}
}

// TestStatusShowsDevices: a running kernel's devices are listed under the
// kernel table with their counters, in name order; a kernel without a VM
// lists none.
func TestStatusShowsDevices(t *testing.T) {
	st := &supervisor.Status{Cluster: "demo", Kernels: []supervisor.KernelStatus{
		{Name: "primary", State: supervisor.StateRunning, Machine: &machine.Info{Devs: map[string][]string{
			"vdb":  {"virtio-blk", "data", "/d.img", "read-write", "io errors 2, refused 1"},
			"net0": {"virtio-net", "tap pvt-demo-0"},
		}}},
		{Name: "secondary", State: supervisor.StateDefined},
	}}
	var b strings.Builder
	if err := supervisor.WriteStatus(&b, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	net, vdb := strings.Index(out, "primary  net0"), strings.Index(out, "primary  vdb     virtio-blk, data, /d.img, read-write, io errors 2, refused 1")
	if net < 0 || vdb < net || !strings.Contains(out, "KERNEL   DEVICE  DETAIL") || strings.Count(out, "secondary") != 1 {
		t.Errorf("status devices:\n%s", out)
	}
}
