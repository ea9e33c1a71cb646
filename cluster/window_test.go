package cluster_test

import (
	"fmt"
	"strings"
	"testing"
)

// manyKernels is a cluster of n kernels with a window of window bytes.
func manyKernels(n int, window string, protect bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[cluster]\nname = \"many\"\nrun_dir = \"run\"\nimages = \"images\"\n[cluster.window]\nsize = %q\nprotect = %v\n", window, protect)
	b.WriteString("[cluster.network]\nsubnet = \"10.199.0.0/16\"\n")
	for i := range n {
		fmt.Fprintf(&b, "[[kernel]]\nname = \"k%d\"\ncpus = \"%d\"\nmemory = \"64M\"\n", i, i%4)
	}
	return b.String()
}

// TestCheckWindowPeers: the window must hold every kernel and popvmm's own
// node, and the messaging layer's geometry for them must fit its size.
func TestCheckWindowPeers(t *testing.T) {
	tests := []struct {
		kernels int
		window  string
		protect bool
		want    string // "" = no window problem
	}{
		{2, "1M", true, ""},
		{20, "1M", true, ""},
		{30, "1M", false, "cluster.window.size: 1 MiB is too small for 38 peers (30 kernels + 8 host peers)"},
		{30, "4M", true, ""},
		{55, "16M", true, ""},
		{56, "16M", false, "kernel: 56 kernels: the shared window holds at most 55"},
	}
	for _, tt := range tests {
		_, err := load(t, manyKernels(tt.kernels, tt.window, tt.protect), fakeHost{})
		var windowErrs []string
		if err != nil {
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.Contains(l, "window") {
					windowErrs = append(windowErrs, strings.TrimSpace(l))
				}
			}
		}
		switch {
		case tt.want == "" && len(windowErrs) > 0:
			t.Errorf("%d kernels, %s window: %q, want no window problem", tt.kernels, tt.window, windowErrs)
		case tt.want != "" && (len(windowErrs) != 1 || !strings.HasPrefix(windowErrs[0], tt.want)):
			t.Errorf("%d kernels, %s window: %q, want one problem starting %q", tt.kernels, tt.window, windowErrs, tt.want)
		}
	}
}
