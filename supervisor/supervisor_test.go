package supervisor_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/supervisor"
)

func testCluster(_ testing.TB, root, name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:   name,
		RunDir: filepath.Join(root, name),
		Network: cluster.Network{Bridge: "pv-" + name, Subnet: netip.MustParsePrefix("10.199.0.0/24"),
			Host: netip.MustParseAddr("10.199.0.1")},
		Window: cluster.Window{Size: 1 << 20},
		Kernels: []*cluster.Kernel{
			{Index: 0, Name: "primary", Boot: cluster.BootUp, CPUs: []int{0}, Memory: 64 << 20, IP: netip.MustParseAddr("10.199.0.2")},
			{Index: 1, Name: "secondary", Boot: cluster.BootManual, CPUs: []int{1}, Memory: 64 << 20, IP: netip.MustParseAddr("10.199.0.3")},
		},
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// start runs a supervisor and waits until its socket is ready. The returned
// channel yields Run's result.
// launchableCluster is testCluster with what a Launcher reads in place:
// an initrd file and a console log path per kernel, in a fresh directory.
func launchableCluster(t *testing.T, name string) *cluster.Cluster {
	root := t.TempDir()
	cl := testCluster(t, root, name)
	initrd := filepath.Join(root, "initrd.cpio")
	os.WriteFile(initrd, []byte("base"), 0o644)
	for _, k := range cl.Kernels {
		k.InitrdPath = initrd
		k.ConsoleLog = filepath.Join(root, k.Name+".log")
	}
	return cl
}

func start(t *testing.T, cl *cluster.Cluster) (supervisor.Client, <-chan error) {
	return startB(t, cl)
}

func startB(t testing.TB, cl *cluster.Cluster) (supervisor.Client, <-chan error) {
	t.Helper()
	return startWith(t, cl, supervisor.Options{NoVMM: "no KVM in this test"})
}

func startWith(t testing.TB, cl *cluster.Cluster, opt supervisor.Options) (supervisor.Client, <-chan error) {
	t.Helper()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	finished := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		opt.Ready = func(s string) { ready <- s }
		done <- supervisor.New(cl, quiet).Run(ctx, opt)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("supervisor did not stop on cancel")
		}
	})
	select {
	case s := <-ready:
		return supervisor.Client{Socket: s}, done
	case err := <-done:
		t.Fatalf("Run = %v before ready", err)
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor not ready within 10s")
	}
	return supervisor.Client{}, nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRunStatusBootDown(t *testing.T) {
	root := t.TempDir()
	cl := testCluster(t, root, "demo")
	c, done := start(t, cl)

	st, err := os.Stat(cl.RunDir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("run dir mode = %v, %v; want 0700", st.Mode().Perm(), err)
	}
	st, err = os.Stat(c.Socket)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode = %v, %v; want a 0600 socket", st.Mode(), err)
	}

	// Boot files: the cluster key pair and one overlay per kernel.
	for _, f := range []string{"ssh/id_ed25519", "ssh/id_ed25519.pub", "primary.overlay.cpio", "secondary.overlay.cpio"} {
		if st, err := os.Stat(filepath.Join(cl.RunDir, f)); err != nil || st.Size() == 0 {
			t.Errorf("run dir lacks %s: %v", f, err)
		}
	}

	status, err := c.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if status.Cluster != "demo" || status.PID != os.Getpid() || len(status.Kernels) != 2 ||
		status.Kernels[1].State != supervisor.StateDefined || status.Kernels[1].PeerID != 1 || status.Subnet != "10.199.0.0/24" {
		t.Errorf("Status = %+v", status)
	}

	tests := []struct {
		req      supervisor.Request
		wantCode string
		wantMsg  string
	}{
		{supervisor.Request{Op: supervisor.OpBoot, Name: "nope"}, supervisor.CodeNotFound, `no kernel "nope" (kernels: primary, secondary)`},
		{supervisor.Request{Op: supervisor.OpBoot, Name: "primary"}, supervisor.CodeNoKVM, `cannot boot "primary": no KVM in this test`},
		{supervisor.Request{Op: supervisor.OpBoot, Name: "secondary"}, supervisor.CodeNoKVM, `no KVM in this test`},
		{supervisor.Request{Op: supervisor.OpConsole, Name: "secondary"}, supervisor.CodeState, `has no console until it boots`},
		{supervisor.Request{Op: "reboot-the-world"}, supervisor.CodeBadRequest, `unknown op`},
	}
	for _, tt := range tests {
		_, err := c.Call(ctxT(t), tt.req)
		var oe *supervisor.OpError
		if !errors.As(err, &oe) || oe.Code != tt.wantCode || !strings.Contains(oe.Message, tt.wantMsg) {
			t.Errorf("Call(%+v) = %v, want code %s with %q", tt.req, err, tt.wantCode, tt.wantMsg)
		}
	}

	if err := c.Down(ctxT(t)); err != nil {
		t.Fatalf("Down = %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after down", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after down")
	}
	if _, err := os.Stat(c.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after down: %v", err)
	}
	if _, err := c.Status(ctxT(t)); !errors.Is(err, supervisor.ErrNotUp) {
		t.Errorf("Status after down = %v, want ErrNotUp", err)
	}
}

func TestSecondUpRefused(t *testing.T) {
	root := t.TempDir()
	cl := testCluster(t, root, "demo")
	start(t, cl)
	err := supervisor.New(cl, quiet).Run(ctxT(t), supervisor.Options{})
	var ae *supervisor.AlreadyUpError
	if !errors.As(err, &ae) || !errors.Is(err, supervisor.ErrAlreadyUp) || ae.PID != os.Getpid() {
		t.Fatalf("second Run = %v, want AlreadyUpError naming pid %d", err, os.Getpid())
	}
}

func TestTwoClustersAndFind(t *testing.T) {
	root := t.TempDir()
	ctx := ctxT(t)
	if _, err := supervisor.Find(ctx, root, ""); !errors.Is(err, supervisor.ErrNotUp) {
		t.Errorf("Find with none up = %v, want ErrNotUp", err)
	}
	a, _ := start(t, testCluster(t, root, "alpha"))
	c, err := supervisor.Find(ctx, root, "")
	if err != nil || c.Socket != a.Socket {
		t.Errorf("Find with one up = %v, %v; want %s", c, err, a.Socket)
	}
	start(t, testCluster(t, root, "beta"))
	if got := supervisor.Live(ctx, root); strings.Join(got, ",") != "alpha,beta" {
		t.Errorf("Live = %v, want [alpha beta]", got)
	}
	if _, err := supervisor.Find(ctx, root, ""); err == nil || !strings.Contains(err.Error(), "choose one with -c NAME") {
		t.Errorf("Find with two up = %v, want a choose-one error", err)
	}
	c, err = supervisor.Find(ctx, root, "beta")
	if st, err2 := c.Status(ctx); err != nil || err2 != nil || st.Cluster != "beta" {
		t.Errorf("Find(beta).Status = %+v, %v, %v", st, err, err2)
	}
}

// TestHostileClients: garbage, oversized and abrupt clients get an error
// or a closed connection, and the supervisor keeps serving.
func TestHostileClients(t *testing.T) {
	c, _ := start(t, testCluster(t, t.TempDir(), "demo"))
	send := func(data []byte) string {
		conn, err := net.Dial("unix", c.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(data)
		conn.(*net.UnixConn).CloseWrite()
		b, _ := io.ReadAll(conn)
		return string(b)
	}
	if got := send([]byte("{not json\n")); !strings.Contains(got, `"code":"bad_request"`) {
		t.Errorf("garbage request answered %q, want bad_request", got)
	}
	if got := send([]byte(`{"op":"status"}`)); !strings.Contains(got, `"ok":true`) {
		t.Errorf("request without newline answered %q, want a status", got)
	}
	big := []byte(`{"op":"` + strings.Repeat("x", 200<<10) + `"}` + "\n")
	if got := send(big); strings.Contains(got, `"ok":true`) {
		t.Errorf("oversized request answered %q", got)
	}
	conn, err := net.Dial("unix", c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close() // abrupt
	if _, err := c.Status(ctxT(t)); err != nil {
		t.Errorf("Status after hostile clients = %v", err)
	}
}

func TestLockTightensAndRejects(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rd")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rd, err := supervisor.Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("Lock left mode %v, want 0700", st.Mode().Perm())
	}
	if supervisor.ReadPID(dir) != os.Getpid() {
		t.Errorf("pid file = %d, want %d", supervisor.ReadPID(dir), os.Getpid())
	}
	rd.Release()
	rd.Release() // twice is fine
	if supervisor.ReadPID(dir) != 0 {
		t.Error("pid file left after Release")
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o600)
	if _, err := supervisor.Lock(file); err == nil {
		t.Error("Lock(a file) succeeded")
	}
}
