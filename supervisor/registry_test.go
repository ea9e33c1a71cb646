package supervisor_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/supervisor"
)

// TestRegistry: a cluster whose run directory is outside the run root is
// found by name while its supervisor holds the directory; a record left by
// a supervisor that died (its lock gone) is ignored; a second cluster of
// the same name in another run directory is refused; down removes the
// record.
func TestRegistry(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(t.TempDir(), "rd")
	if got, want := supervisor.ClusterDir(root, "c1"), filepath.Join(root, "c1"); got != want {
		t.Errorf("ClusterDir before up = %q, want %q", got, want)
	}
	rd, err := supervisor.Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	unregister, err := supervisor.Register(root, "c1", dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := supervisor.ClusterDir(root, "c1"); got != dir {
		t.Errorf("ClusterDir while up = %q, want the registered %q", got, dir)
	}

	// Another cluster "c1", elsewhere, while the first is up.
	other := filepath.Join(t.TempDir(), "rd")
	ord, err := supervisor.Lock(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := supervisor.Register(root, "c1", other); !errors.Is(err, supervisor.ErrNameTaken) {
		t.Errorf("Register of a second c1 = %v, want ErrNameTaken", err)
	}

	// The supervisor dies without unregistering: the lock goes with it.
	rd.Release()
	if got, want := supervisor.ClusterDir(root, "c1"), filepath.Join(root, "c1"); got != want {
		t.Errorf("ClusterDir after the supervisor died = %q, want %q (a stale record)", got, want)
	}
	// The next c1 replaces the stale record.
	unregister2, err := supervisor.Register(root, "c1", other)
	if err != nil {
		t.Fatalf("Register over a stale record = %v", err)
	}
	if got := supervisor.ClusterDir(root, "c1"); got != other {
		t.Errorf("ClusterDir = %q, want %q", got, other)
	}
	unregister() // the dead one's late unregister leaves the new record
	if got := supervisor.ClusterDir(root, "c1"); got != other {
		t.Errorf("after the old record's unregister, ClusterDir = %q, want %q", got, other)
	}
	unregister2()
	ord.Release()
	if ents, _ := os.ReadDir(filepath.Join(root, ".clusters")); len(ents) != 0 {
		t.Errorf("records left after unregister: %v", ents)
	}
}

func TestCommand(t *testing.T) {
	def := cluster.DefaultRunRoot()
	for _, tc := range []struct {
		root string
		args []string
		want string
	}{
		{def, []string{"down", "-c", "demo"}, "popvmm down -c demo"},
		{"", []string{"status"}, "popvmm status"},
		{"/tmp/roots/a", []string{"down", "-c", "demo"}, "popvmm --run-root /tmp/roots/a down -c demo"},
		{"/tmp/my roots", []string{"boot", "-c", "demo", "secondary"}, "popvmm --run-root '/tmp/my roots' boot -c demo secondary"},
	} {
		if got := supervisor.Command(tc.root, tc.args...); got != tc.want {
			t.Errorf("Command(%q, %q) = %q, want %q", tc.root, tc.args, got, tc.want)
		}
	}
}
