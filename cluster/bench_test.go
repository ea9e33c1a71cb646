package cluster_test

import (
	"testing"

	"github.com/popvmm/popvmm/cluster"
)

// BenchmarkParseCheck is `popvmm validate` minus printing, on the
// two-kernel base config with fake images and a fake host.
func BenchmarkParseCheck(b *testing.B) {
	for b.Loop() {
		f, err := cluster.Parse([]byte(baseConfig))
		if err != nil {
			b.Fatal(err)
		}
		f.Path = "/nonexistent/cluster.toml" // images missing: warnings only
		if _, err := cluster.Check(f, fakeHost{}); err != nil {
			b.Fatal(err)
		}
	}
}
