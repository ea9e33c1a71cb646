package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
)

// FuzzParseCheck feeds arbitrary text through Parse and Check: neither may
// panic, and whatever Check accepts must be a consistent plan. Seeds: the
// base config here, the example and every broken config under
// tests/testdata, plus the corpus in testdata/fuzz.
func FuzzParseCheck(f *testing.F) {
	f.Add([]byte(baseConfig))
	for _, pat := range []string{"../examples/*.toml", "../tests/testdata/*.toml"} {
		files, _ := filepath.Glob(pat)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		wd := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("Parse+Check took over 10s on %q", data)) })
		defer wd.Stop()
		file, err := cluster.Parse(data)
		if err != nil {
			return
		}
		cl, err := cluster.Check(file, fakeHost{})
		if err != nil {
			for _, fe := range cluster.FieldErrors(err) {
				if fe.Path == "" || fe.Msg == "" {
					t.Fatalf("unnamed error %+v in:\n%v", fe, err)
				}
			}
			return
		}
		cores := map[int]bool{}
		names := map[string]bool{}
		for _, k := range cl.Kernels {
			if names[k.Name] {
				t.Fatalf("name %q twice in an accepted config", k.Name)
			}
			names[k.Name] = true
			for _, c := range k.CPUs {
				if cores[c] {
					t.Fatalf("core %d twice in an accepted config", c)
				}
				cores[c] = true
			}
			if k.Layout == nil || !cl.Network.Subnet.Contains(k.IP) || len(k.MAC) != 6 || k.Memory == 0 {
				t.Fatalf("accepted kernel %+v is incomplete", k)
			}
		}
	})
}
