package cluster_test

import (
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/vtty"
)

// TestConsoleLogMax: every kernel's console log has a cap, the console's
// default unless console_log_max names another (a size, at least the
// console's minimum); a cap that is not a size or is too small is an error
// at the field.
func TestConsoleLogMax(t *testing.T) {
	cl, err := load(t, edit(secondaryCPUs, secondaryCPUs+"\nconsole_log_max = \"1M\""), fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	if vtty.MinLogMax != 64<<10 {
		t.Errorf("vtty.MinLogMax is %d; cluster checks for 64 KiB", vtty.MinLogMax)
	}
	if p, s := cl.Kernels[0], cl.Kernels[1]; p.ConsoleLogMax != vtty.DefaultLogMax || s.ConsoleLogMax != 1<<20 {
		t.Errorf("console log caps %d and %d, want the default %d and 1 MiB", p.ConsoleLogMax, s.ConsoleLogMax, vtty.DefaultLogMax)
	}
	for _, tt := range []struct{ value, want string }{
		{`"4K"`, `kernel[1].console_log_max: 4 KiB is under the 64 KiB minimum`},
		{`0`, `kernel[1].console_log_max: 0 B is under the 64 KiB minimum`},
		{`"lots"`, `kernel[1].console_log_max: `},
		{`-1`, `kernel[1].console_log_max: `},
	} {
		_, err := load(t, edit(secondaryCPUs, secondaryCPUs+"\nconsole_log_max = "+tt.value), fakeHost{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("console_log_max = %s: %v, want %q", tt.value, err, tt.want)
		}
		for _, fe := range cluster.FieldErrors(err) {
			if fe.Path != "kernel[1].console_log_max" {
				t.Errorf("console_log_max = %s: error at %q: %v", tt.value, fe.Path, fe)
			}
		}
	}
}
