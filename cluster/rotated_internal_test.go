package cluster

import (
	"testing"

	"github.com/popvmm/popvmm/vtty"
)

// TestRotatedLogName: the name checkConsoleLogs checks as a console log's
// LOG.1 is the one the console renames its log to (cluster may not import
// vtty).
func TestRotatedLogName(t *testing.T) {
	for _, p := range []string{"/run/demo/primary.console.log", "x", "x.1"} {
		if got, want := rotatedLog(p), vtty.RotatedLog(p); got != want {
			t.Errorf("rotatedLog(%q) = %q, vtty.RotatedLog says %q", p, got, want)
		}
	}
}
