package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/supervisor"
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

	// Through the window: two host peers stand in for the kernels' agents
	// (their peer ids in a status that says the kernels run); the command
	// asks the source and reports its answer.
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	cl, err := supervisor.Find(ctx, root, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var peers []*ipi.HostPeer
	for _, name := range []string{"agent-primary", "agent-secondary"} {
		hp, err := ipi.JoinHostPeer(ctx, ipi.HostPeerConfig{Socket: st.Window, Name: name, Serve: func(n *msg.Node) {
			agent.ServeMigrate(n, agent.MigrateConfig{Name: strings.TrimPrefix(name, "agent-"), CRIU: stubCRIU{}, Dir: t.TempDir()})
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer hp.Close()
		peers = append(peers, hp)
	}
	for i := range st.Kernels {
		st.Kernels[i].PeerID, st.Kernels[i].State = peers[i].Client.ID, supervisor.StateRunning
	}
	sleeper := exec.Command("sleep", "600")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	for _, tc := range []struct {
		pid  int
		want string
	}{
		{1 << 30, "no process 1073741824 in kernel primary"},
		// Both stand-ins share this host's /proc: the PID is taken "there".
		{sleeper.Process.Pid, "secondary cannot take it: pid"},
	} {
		var out bytes.Buffer
		c := &cli{stdout: &out, stderr: io.Discard, runRoot: root}
		err := c.migrate(ctx, st, migrateArgs{"primary", tc.pid, "secondary"}, agent.MigrateRequest{PID: tc.pid, TimeoutMS: 30000}, true)
		var ee *exitError
		var res agent.MigrateResult
		if !errors.As(err, &ee) || ee.code != exitFailure || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("migrate primary:%d = %v, want status 1 saying %q", tc.pid, err, tc.want)
		}
		if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil || res.Error == "" || res.Source != "primary" || res.Target != "secondary" {
			t.Errorf("--json printed %q (%v)", out.String(), jerr)
		}
	}
	if err := sleeper.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process was touched: %v", err)
	}
}

// stubCRIU is never reached: every migration here is refused before.
type stubCRIU struct{}

func (stubCRIU) Available() error { return nil }
func (stubCRIU) Dump(context.Context, int, string, string, agent.CheckpointOptions) error {
	return errors.New("no dumps in this test")
}
func (stubCRIU) Restore(context.Context, string, string, agent.CheckpointOptions) (int, error) {
	return 0, errors.New("no restores in this test")
}
