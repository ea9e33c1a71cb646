package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/ipi/agent"
)

func TestParseMigrateArgs(t *testing.T) {
	got, err := parseMigrateArgs("primary:412", "secondary")
	if err != nil || got != (migrateArgs{"primary", 412, "secondary"}) {
		t.Errorf("parseMigrateArgs(primary:412, secondary) = %+v, %v", got, err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"primary", "secondary", "is not SOURCE:PID"},
		{":412", "secondary", "is not SOURCE:PID"},
		{"primary:", "secondary", "is not SOURCE:PID"},
		{"primary:abc", "secondary", `"abc" in "primary:abc" is not a process id`},
		{"primary:-3", "secondary", "is not a process id"},
		{"primary:0", "secondary", "is not a process id"},
		{"primary:12", "primary", "in primary already"},
		{"primary:12", "", "no TARGET"},
	} {
		_, err := parseMigrateArgs(tc.from, tc.to)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseMigrateArgs(%q, %q) = %v, want a usage error saying %q", tc.from, tc.to, err, tc.want)
		}
	}
}

func TestMigrateSummary(t *testing.T) {
	got := migrateSummary(&agent.MigrateResult{Source: "primary", Target: "secondary", PID: 412, NewPID: 412,
		FrozenNS: 840e6, DumpNS: 310e6, TransferNS: 120e6, RestoreNS: 360e6, Bytes: 9 << 20, Carried: []string{"/root/count.log"}})
	want := "migrated primary:412 to secondary: pid 412 there now; frozen 0.84 s (dump 0.31 s, transfer 0.12 s of 9.0 MiB at 75 MiB/s, restore 0.36 s); carried /root/count.log"
	if got != want {
		t.Errorf("summary\n %s\nwant\n %s", got, want)
	}
}

// TestMigrateRefusals: a migration the cluster cannot do is refused with a
// clear error and status, nothing touched.
func TestMigrateRefusals(t *testing.T) {
	root := t.TempDir()
	rr := "--run-root=" + root
	// No cluster up at all.
	if code, _, errs := popvmm(t, "migrate", rr, "primary:12", "secondary"); code != exitFailure || !strings.Contains(errs, "no cluster is up") {
		t.Errorf("migrate with no cluster up = %d %q, want %d saying no cluster is up", code, errs, exitFailure)
	}

	pr, pw := io.Pipe()
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(done)
		c := newRoot(pw, io.Discard)
		c.SetArgs([]string{"up", "--no-kernels", "--run-root", root, "../../examples/cluster.toml"})
		c.ExecuteContext(ctx)
		pw.Close()
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitLine(t, pr, "is up")
	go io.Copy(io.Discard, pr)

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"migrate", rr, "primary:12", "secondary"}, exitFailure, `kernel "primary" is defined, not running: nothing was touched`},
		{[]string{"migrate", rr, "nope:12", "secondary"}, exitUsage, `cluster "demo" has no kernel "nope" (kernels: primary, secondary)`},
		{[]string{"migrate", rr, "primary:12", "nope"}, exitUsage, `has no kernel "nope"`},
		{[]string{"migrate", rr, "-c", "other", "primary:12", "secondary"}, exitFailure, "cluster is not up"},
		{[]string{"migrate", rr, "primary", "secondary"}, exitUsage, "is not SOURCE:PID"},
		{[]string{"migrate", rr, "primary:12"}, exitUsage, "wants SOURCE:PID TARGET"},
		{[]string{"migrate", rr, "--timeout", "0s", "primary:12", "secondary"}, exitUsage, "--timeout 0s"},
	} {
		code, out, errs := popvmm(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) || out != "" {
			t.Errorf("popvmm %q = %d %q %q, want %d with %q", tc.args, code, out, errs, tc.code, tc.msg)
		}
	}
}
