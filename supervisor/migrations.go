package supervisor

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/popvmm/popvmm/cluster"
)

// MigrationStatus is a process migration in flight (docs/migration.md), as
// its source kernel's agent announced it on the window.
type MigrationStatus struct {
	Source string    `json:"source"`
	Target string    `json:"target"`
	PID    int       `json:"pid"`
	Stage  string    `json:"stage"`
	Since  time.Time `json:"since"`
}

// migrations lists the migrations popvmm's node has heard announced. Peers
// are named from the config, not from what they wrote.
func (w *windowHost) migrations(cl *cluster.Cluster) []MigrationStatus {
	if w == nil || w.watch == nil {
		return nil
	}
	name := func(peer int) string {
		for _, k := range cl.Kernels {
			if k.Index == peer {
				return k.Name
			}
		}
		return "peer " + strconv.Itoa(peer)
	}
	var out []MigrationStatus
	for _, m := range w.watch.List() {
		out = append(out, MigrationStatus{Source: name(m.Source), Target: name(m.Target), PID: m.PID, Stage: m.Stage, Since: m.Since})
	}
	return out
}

// writeMigrations prints the migrations in flight, if any.
func writeMigrations(w io.Writer, st *Status, now time.Time) {
	if len(st.Migrations) == 0 {
		return
	}
	fmt.Fprintf(w, "\nmigrations in flight:\n")
	for _, m := range st.Migrations {
		fmt.Fprintf(w, "  %s:%d → %s  %s  for %s\n", m.Source, m.PID, m.Target, m.Stage, now.Sub(m.Since).Round(100*time.Millisecond))
	}
}
