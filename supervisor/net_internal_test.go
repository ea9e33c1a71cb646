package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
)

// TestStaleBridge: `up` deletes a bridge of its cluster's name only when
// its alias says it is the cluster's and the supervisor that made it is
// gone; a live supervisor of the same cluster name, run from another run
// directory, keeps its bridge (seen in the KVM tier: a test's `up`
// deleted the bridge of a supervisor still stopping), and another
// program's bridge is refused.
func TestStaleBridge(t *testing.T) {
	root := t.TempDir()
	cl := &cluster.Cluster{Name: "story", RunDir: filepath.Join(root, "mine")}
	cl.Network.Bridge = "pv-story"
	live, dead := filepath.Join(root, "live"), filepath.Join(root, "dead")
	rd, err := Lock(live)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Release()
	if err := os.Mkdir(dead, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead, lockName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := staleBridge(cl)
	for _, tc := range []struct {
		alias string
		want  string // "" deletes it; else a part of the refusal
	}{
		{BridgeOwner("story", cl.RunDir), ""},
		{BridgeOwner("story", dead), ""},                        // its supervisor was killed
		{BridgeOwner("story", filepath.Join(root, "gone")), ""}, // its run directory too
		{"popvmm cluster story", ""},                            // an earlier popvmm's alias
		{BridgeOwner("story", live), fmt.Sprintf("run from %s by supervisor pid %d, is up", live, os.Getpid())},
		{BridgeOwner("story2", dead), "is not cluster story's"},
		{"popvmm cluster other", "is not cluster story's"},
		{"", "is not cluster story's"},
	} {
		err := stale(tc.alias)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("alias %q: %v; want it taken for stale", tc.alias, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("alias %q: %v; want a refusal saying %q", tc.alias, err, tc.want)
		}
	}
	rd.Release()
	if err := stale(BridgeOwner("story", live)); err != nil {
		t.Errorf("after its supervisor released the run directory: %v", err)
	}
}
