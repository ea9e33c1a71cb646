package supervisor

import (
	"bytes"
	"testing"
	"time"
)

func TestWriteMigrations(t *testing.T) {
	now := time.Date(2026, 12, 7, 23, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	writeMigrations(&b, &Status{}, now)
	if b.Len() != 0 {
		t.Errorf("no migrations printed %q", b.String())
	}
	st := &Status{Migrations: []MigrationStatus{{Source: "primary", Target: "secondary", PID: 30001, Stage: "transfer", Since: now.Add(-1500 * time.Millisecond)}}}
	writeMigrations(&b, st, now)
	if want := "\nmigrations in flight:\n  primary:30001 → secondary  transfer  for 1.5s\n"; b.String() != want {
		t.Errorf("writeMigrations = %q, want %q", b.String(), want)
	}
	var w *windowHost
	if m := w.migrations(nil); m != nil {
		t.Errorf("a cluster without a window has migrations %v", m)
	}
}
