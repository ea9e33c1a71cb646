package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

// bells rings nodes of one window in one process.
type bells struct {
	ch []chan struct{}
	id int
}

func (b bells) Ring(peer int) error {
	select {
	case b.ch[peer] <- struct{}{}:
	default:
	}
	return nil
}

func (b bells) Wait(ctx context.Context) error {
	select {
	case <-b.ch[b.id]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// window is a formatted window with n nodes joined, each running until
// its stop is called or the test ends.
type window struct {
	nodes []*msg.Node
	stop  []context.CancelFunc
	done  []chan struct{}
}

func newWindow(t *testing.T, size, n int, serve func(i int, node *msg.Node)) *window {
	t.Helper()
	mem := make([]byte, size)
	if _, err := msg.Format(mem, n); err != nil {
		t.Fatal(err)
	}
	ch := make([]chan struct{}, n)
	for i := range ch {
		ch[i] = make(chan struct{}, 1)
	}
	w := &window{}
	for i := range n {
		node, err := msg.Join(mem, i, "peer"+strconv.Itoa(i), bells{ch, i}, msg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		serve(i, node)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); node.Run(ctx) }()
		w.nodes, w.stop, w.done = append(w.nodes, node), append(w.stop, cancel), append(w.done, done)
	}
	t.Cleanup(func() {
		for i := range w.stop {
			w.stop[i]()
			<-w.done[i]
		}
	})
	// Wait until every node sees every other online.
	deadline := time.Now().Add(5 * time.Second)
	for _, node := range w.nodes {
		for p := range n {
			for node.PeerState(p) != msg.StateOnline && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	return w
}

// fakeCRIU stops a real process on dump and writes images that say which;
// on restore it checks them and starts a stopped process in its place.
type fakeCRIU struct {
	t          *testing.T
	pages      []byte // written as pages-1.img: a transfer of many chunks
	dumpErr    error
	restoreErr error
	// restoring, if set, runs inside Restore (e.g. blocks until released).
	restoring func(ctx context.Context)
	// dumped, if set, runs at the end of a successful Dump.
	dumped func()

	mu       sync.Mutex
	dumps    int
	restored []*exec.Cmd
}

func (f *fakeCRIU) Available() error { return nil }

func (f *fakeCRIU) Dump(ctx context.Context, pid int, images, work string, o CheckpointOptions) error {
	f.mu.Lock()
	f.dumps++
	f.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	if err := waitState(pid, func(s string) bool { return s == "T" }); err != nil {
		return err
	}
	if f.dumpErr != nil {
		return f.dumpErr
	}
	sum := sha256.Sum256(f.pages)
	if err := os.WriteFile(filepath.Join(images, "pages-1.img"), f.pages, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(images, "inventory.img"), fmt.Appendf(nil, "%d %x", pid, sum), 0o600); err != nil {
		return err
	}
	if f.dumped != nil {
		f.dumped()
	}
	return nil
}

func (f *fakeCRIU) Restore(ctx context.Context, images, work string, o CheckpointOptions) (int, error) {
	if f.restoring != nil {
		f.restoring(ctx)
	}
	if f.restoreErr != nil {
		return 0, f.restoreErr
	}
	pages, err := os.ReadFile(filepath.Join(images, "pages-1.img"))
	if err != nil {
		return 0, err
	}
	inv, err := os.ReadFile(filepath.Join(images, "inventory.img"))
	if err != nil {
		return 0, err
	}
	if sum := sha256.Sum256(pages); !bytes.HasSuffix(inv, fmt.Appendf(nil, "%x", sum)) {
		return 0, errors.New("pages do not match the inventory")
	}
	cmd := startSleeper(f.t, "")
	syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP)
	if err := waitState(cmd.Process.Pid, func(s string) bool { return s == "T" }); err != nil {
		return 0, err
	}
	f.mu.Lock()
	f.restored = append(f.restored, cmd)
	f.mu.Unlock()
	return cmd.Process.Pid, nil
}

// startSleeper starts a process in a session of its own, holding file
// open (when not "") on descriptor 3.
func startSleeper(t *testing.T, file string) *exec.Cmd {
	t.Helper()
	script := "exec sleep 1000"
	if file != "" {
		script += " 3>>" + file
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// Wait until sh has become sleep (the descriptor is then open).
	if err := waitFor(func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		return strings.TrimSpace(string(b)) == "sleep"
	}); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(cond func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// state is a process's state letter, "" when it is gone (or a zombie: X/Z
// count as gone).
func state(pid int) string {
	st, err := (&inspector{proc: "/proc"}).readStat(pid)
	if err != nil || st.zombieOnly {
		return ""
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 || f[0] == "X" {
		return ""
	}
	return f[0]
}

func waitState(pid int, ok func(string) bool) error {
	if err := waitFor(func() bool { return ok(state(pid)) }); err != nil {
		return fmt.Errorf("pid %d stays in state %q: %w", pid, state(pid), err)
	}
	return nil
}

func running(s string) bool { return s == "S" || s == "R" }
func gone(s string) bool    { return s == "" }

// rig is a command (peer 0), a source agent (peer 1) and a target agent
// (peer 2) on one window.
type rig struct {
	w              *window
	src, tgt       *Migrations
	watch          *MigrationWatch
	criu           *fakeCRIU
	dir, root      string
	srcCfg, tgtCfg MigrateConfig
}

func newRig(t *testing.T, windowSize int, edit func(*rig)) *rig {
	t.Helper()
	dir := t.TempDir()
	pages := make([]byte, 300<<10+17) // about ten chunks, the last short
	for i := range pages {
		pages[i] = byte(i * 7 / 3)
	}
	r := &rig{criu: &fakeCRIU{t: t, pages: pages}, dir: dir, root: filepath.Join(dir, "target-root")}
	private := func(p string) bool { return strings.HasPrefix(p, dir) }
	r.srcCfg = MigrateConfig{Name: "primary", Dir: filepath.Join(dir, "src-run"), CRIU: r.criu, CommitWait: 2 * time.Second, private: private}
	r.tgtCfg = MigrateConfig{Name: "secondary", Dir: filepath.Join(dir, "tgt-run"), CRIU: r.criu, CommitWait: 2 * time.Second, private: private,
		root: r.root, pidInUse: func(int) (string, bool) { return "", false }}
	if edit != nil {
		edit(r)
	}
	r.w = newWindow(t, windowSize, 3, func(i int, node *msg.Node) {
		switch i {
		case 0:
			r.watch = WatchMigrations(node)
		case 1:
			r.src = ServeMigrate(node, r.srcCfg)
		case 2:
			r.tgt = ServeMigrate(node, r.tgtCfg)
		}
	})
	return r
}

func (r *rig) migrate(t *testing.T, pid int, timeout time.Duration) *MigrateResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := MigrateFrom(ctx, r.w.nodes[0], 1, MigrateRequest{PID: pid, Target: 2, TargetName: "secondary", TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		t.Fatalf("MigrateFrom: %v", err)
	}
	return res
}

func TestMigrateMovesTheTree(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window int
	}{{"large window", 4 << 20}, {"small window", 64 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.window, nil)
			log := filepath.Join(r.dir, "count.log")
			if err := os.WriteFile(log, []byte("1\n2\n3\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			proc := startSleeper(t, log)
			pid := proc.Process.Pid
			res := r.migrate(t, pid, 0)
			if err := res.Err(); err != nil {
				t.Fatalf("migrate: %v (%+v)", err, res)
			}
			if res.NewPID == 0 || res.NewPID == pid || res.FrozenNS <= 0 || res.Bytes < int64(len(r.criu.pages)) || res.Images != 2 {
				t.Errorf("result %+v", res)
			}
			if err := waitState(pid, gone); err != nil {
				t.Errorf("the source's copy: %v", err)
			}
			if err := waitState(res.NewPID, running); err != nil {
				t.Errorf("the target's copy: %v", err)
			}
			// The private file went with it: on the target, and not on the source.
			got, err := os.ReadFile(r.root + log)
			if err != nil || string(got) != "1\n2\n3\n" {
				t.Errorf("carried file on the target: %q, %v", got, err)
			}
			if fi, err := os.Stat(r.root + log); err != nil || fi.Mode().Perm() != 0o640 {
				t.Errorf("carried file's mode: %v, %v", fi, err)
			}
			if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("carried file still on the source: %v", err)
			}
			if len(res.Carried) != 1 || res.Carried[0] != log {
				t.Errorf("result's carried files %q, want %q", res.Carried, log)
			}
			// Nothing staged is left on either side.
			for _, d := range []string{r.srcCfg.Dir, r.tgtCfg.Dir} {
				if ents, _ := os.ReadDir(d); len(ents) != 0 {
					t.Errorf("%s holds %v after the migration", d, ents)
				}
			}
		})
	}
}

// Every failure before the commit leaves the source's process running and
// no other.
func TestMigrateFailureResumesSource(t *testing.T) {
	release := make(chan struct{})
	for _, tc := range []struct {
		name    string
		edit    func(r *rig)
		timeout time.Duration
		stage   string
		want    string
		blocks  bool // the fake restore waits for release
	}{
		{"dump fails", func(r *rig) { r.criu.dumpErr = errors.New("criu dump: unsupported fd") }, 0, StageDump, "unsupported fd", false},
		{"restore fails", func(r *rig) { r.criu.restoreErr = errors.New("pid 77 is already taken") }, 0, StageRestore, "secondary: pid 77 is already taken", false},
		{"restore times out", func(r *rig) {
			r.criu.restoring = func(ctx context.Context) { <-release }
		}, 700 * time.Millisecond, StageRestore, "deadline", true},
		{"target goes away before the transfer", func(r *rig) {
			r.criu.dumped = func() { r.w.stop[2](); <-r.w.done[2] }
		}, 0, StageTransfer, "peer offline", false},
		{"target goes away", func(r *rig) {
			r.criu.restoring = func(ctx context.Context) { r.w.stop[2](); <-release }
		}, 0, StageRestore, "went away", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 1<<20, tc.edit)
			proc := startSleeper(t, "")
			pid := proc.Process.Pid
			res := r.migrate(t, pid, tc.timeout)
			err := res.Err()
			var me *MigrateError
			if !errors.As(err, &me) || me.Stage != tc.stage || me.Code != CodeFailed || !strings.Contains(me.Msg, tc.want) || !strings.Contains(me.Msg, "resumed on primary") {
				t.Errorf("migrate = %v (%+v), want a failure at %s saying %q and that the process resumed", err, res, tc.stage, tc.want)
			}
			if err := waitState(pid, running); err != nil {
				t.Errorf("the source's process: %v", err)
			}
			if tc.blocks {
				release <- struct{}{}
			}
			// A copy restored late is killed before it ever runs.
			r.criu.mu.Lock()
			restored := r.criu.restored
			r.criu.mu.Unlock()
			for _, c := range restored {
				if err := waitState(c.Process.Pid, gone); err != nil {
					t.Errorf("a restored copy: %v", err)
				}
			}
		})
	}
}

func TestMigrateRefusedBeforeFreezing(t *testing.T) {
	r := newRig(t, 1<<20, func(r *rig) {
		r.tgtCfg.pidInUse = func(pid int) (string, bool) { return "sshd", true }
	})
	proc := startSleeper(t, "")
	for _, tc := range []struct {
		name string
		req  MigrateRequest
		code string
		want string
	}{
		{"no such pid", MigrateRequest{PID: 1 << 30, Target: 2, TargetName: "secondary"}, CodeNoProcess, "no process 1073741824 in kernel primary"},
		{"pid taken on the target", MigrateRequest{PID: proc.Process.Pid, Target: 2, TargetName: "secondary"}, CodeRefused, "is taken there (sshd)"},
		{"target is the source", MigrateRequest{PID: proc.Process.Pid, Target: 1, TargetName: "primary"}, CodeBadTarget, "the kernel the process runs in"},
		{"target not there", MigrateRequest{PID: proc.Process.Pid, Target: 7, TargetName: "ghost"}, CodeBadTarget, "not on the window"},
		{"the agent's own tree", MigrateRequest{PID: os.Getpid(), Target: 2, TargetName: "secondary"}, CodeRefused, "holds the agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := MigrateFrom(ctx, r.w.nodes[0], 1, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Code != tc.code || !strings.Contains(res.Error, tc.want) {
				t.Errorf("migrate %+v = %q (code %q), want code %q saying %q", tc.req, res.Error, res.Code, tc.code, tc.want)
			}
		})
	}
	if r.criu.dumps != 0 {
		t.Errorf("%d dumps, want none: every refusal comes before freezing", r.criu.dumps)
	}
	if s := state(proc.Process.Pid); !running(s) {
		t.Errorf("the process is in state %q", s)
	}
}

func TestMigrateStatusInFlight(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	r := newRig(t, 1<<20, func(r *rig) {
		r.criu.restoring = func(ctx context.Context) { close(entered); <-release }
	})
	proc := startSleeper(t, "")
	done := make(chan *MigrateResult)
	go func() { done <- r.migrate(t, proc.Process.Pid, 0) }()
	<-entered
	fl := r.src.InFlight()
	if len(fl) != 1 || fl[0].PID != proc.Process.Pid || fl[0].Stage != StageRestore || fl[0].Target != "secondary" {
		t.Errorf("in flight: %+v", fl)
	}
	// The command's node watches the announcements, as popvmm's does.
	want := MigrationInFlight{Source: 1, Target: 2, PID: proc.Process.Pid, Stage: StageRestore}
	if err := waitFor(func() bool {
		l := r.watch.List()
		return len(l) == 1 && l[0].Source == want.Source && l[0].Target == want.Target && l[0].PID == want.PID && l[0].Stage == want.Stage
	}); err != nil {
		t.Errorf("watched: %+v, want %+v", r.watch.List(), want)
	}
	close(release)
	if res := <-done; res.Err() != nil {
		t.Fatal(res.Err())
	}
	if fl := r.src.InFlight(); len(fl) != 0 {
		t.Errorf("in flight after the migration: %+v", fl)
	}
	if err := waitFor(func() bool { return len(r.watch.List()) == 0 }); err != nil {
		t.Errorf("watched after the migration: %+v", r.watch.List())
	}
}

// fakeProc builds a /proc tree with one task.
type fakeProc struct {
	t    *testing.T
	root string
}

func (p fakeProc) write(rel, s string) {
	p.t.Helper()
	path := filepath.Join(p.root, rel)
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p fakeProc) fd(pid, fd int, target string) {
	p.t.Helper()
	dir := filepath.Join(p.root, strconv.Itoa(pid), "fd")
	os.MkdirAll(dir, 0o755)
	if err := os.Symlink(target, filepath.Join(dir, strconv.Itoa(fd))); err != nil {
		p.t.Fatal(err)
	}
}

func (p fakeProc) task(pid, ppid, pgrp, sid int, comm string) {
	p.write(fmt.Sprintf("%d/stat", pid), fmt.Sprintf("%d (%s) S %d %d %d 0 -1 4194304 0 0\n", pid, comm, ppid, pgrp, sid))
	os.MkdirAll(filepath.Join(p.root, strconv.Itoa(pid), "fd"), 0o755)
}

const tcpTable = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0200C60A:0016 0100C60A:D431 01 00000000:00000000 02:000A7B1B 00000000     0        0 1002 4 0000000000000000 20 4 31 10 -1
   2: 0200C60A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
`

func TestInspectTree(t *testing.T) {
	for _, tc := range []struct {
		name    string
		build   func(p fakeProc)
		dropTCP bool
		want    []string // problems, in part
	}{
		{"clean", func(p fakeProc) { p.fd(100, 0, "/dev/null"); p.fd(100, 1, "pipe:[5]") }, false, nil},
		{"terminal", func(p fakeProc) { p.fd(100, 0, "/dev/ttyS0") }, false, []string{"fd 0 of pid 100 (counter) is the terminal /dev/ttyS0"}},
		{"device", func(p fakeProc) { p.fd(100, 4, "/dev/vda") }, false, []string{"fd 4 of pid 100 (counter) is the device /dev/vda"}},
		{"mapped device", func(p fakeProc) {
			p.write("100/maps", "7f0000000000-7f0000001000 rw-s 00000000 00:05 12 /dev/uio0\n")
		}, false, []string{"a mapping of pid 100 (counter) is the device /dev/uio0"}},
		{"established TCP", func(p fakeProc) { p.fd(100, 3, "socket:[1002]") }, false, []string{"TCP connection 10.198.0.2:22 → 10.198.0.1:54321"}},
		{"established TCP dropped", func(p fakeProc) { p.fd(100, 3, "socket:[1002]") }, true, nil},
		{"loopback listener", func(p fakeProc) { p.fd(100, 3, "socket:[1001]") }, false, nil},
		{"bound listener", func(p fakeProc) { p.fd(100, 3, "socket:[1003]") }, false, []string{"TCP listener bound to 10.198.0.2:8081"}},
		{"netlink", func(p fakeProc) { p.fd(100, 3, "socket:[999]") }, false, []string{"netlink, packet or raw socket (socket:[999])"}},
		{"session outside", func(p fakeProc) { p.task(100, 50, 50, 50, "counter") }, false, []string{"in session 50, led from outside the tree: start the program with setsid"}},
		{"child in the tree", func(p fakeProc) { p.task(101, 100, 100, 100, "worker"); p.fd(101, 0, "/dev/pts/0") }, false, []string{"fd 0 of pid 101 (worker) is the terminal /dev/pts/0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := fakeProc{t, t.TempDir()}
			p.task(1, 0, 1, 1, "init")
			p.task(100, 1, 100, 100, "counter")
			p.write("100/net/tcp", tcpTable)
			p.write("100/status", "Name:\tcounter\nVmRSS:\t  1024 kB\n")
			tc.build(p)
			in := &inspector{proc: p.root, self: 1 << 30, dropTCP: tc.dropTCP, private: func(string) bool { return false }}
			tree, err := in.tree(100)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(tree.Problems, "\n")
			if len(tc.want) == 0 && got != "" {
				t.Errorf("problems %q, want none", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems %q lack %q", got, w)
				}
			}
			if tree.PIDs[0] != 100 || tree.Bytes < 1<<20 {
				t.Errorf("tree %+v", tree)
			}
		})
	}
	if _, err := (&inspector{proc: t.TempDir()}).tree(4242); !errors.Is(err, errNoProcess) {
		t.Errorf("tree of a missing pid: %v, want errNoProcess", err)
	}
}

func TestParseHexAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"0200C60A:0016", "10.198.0.2:22"},
		{"00000000000000000000000001000000:0016", "[::1]:22"},
		{"0000000000000000FFFF00000200C60A:0016", "10.198.0.2:22"},
	} {
		got, err := parseHexAddr(tc.in)
		if err != nil || got.String() != tc.want {
			t.Errorf("parseHexAddr(%q) = %v, %v, want %s", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "0100007F", "zz00007F:0016", "0100007F:FFFFF", "01:0016"} {
		if _, err := parseHexAddr(bad); err == nil {
			t.Errorf("parseHexAddr(%q) succeeded", bad)
		}
	}
}

func TestCheckPaths(t *testing.T) {
	for _, ok := range []string{"/root/count.log", "/tmp/x", "/var/lib/a b"} {
		if err := checkCarriedPath(ok); err != nil {
			t.Errorf("checkCarriedPath(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/", "relative", "/root/../etc/passwd", "/proc/1/mem", "/dev/vda", "/sys/x", "/run/popvmm/rw/x", "/a\x00b", "/root/"} {
		if err := checkCarriedPath(bad); err == nil {
			t.Errorf("checkCarriedPath(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "x\x00", strings.Repeat("a", 256)} {
		if err := checkImageName(bad); err == nil {
			t.Errorf("checkImageName(%q) accepted", bad)
		}
	}
	if err := checkFiles([]fileMeta{{Name: "a", Size: 1}, {Name: "a", Size: 1}}); err == nil {
		t.Error("checkFiles accepted a name twice")
	}
	if err := checkFiles([]fileMeta{{Name: "a", Path: "/a"}}); err == nil {
		t.Error("checkFiles accepted a file with a name and a path")
	}
	if err := checkFiles([]fileMeta{{Path: "/a", Size: maxCarriedTotal + 1}}); err == nil {
		t.Error("checkFiles accepted more than the carried limit")
	}
}

// A watcher takes only well-formed announcements from a peer that is
// there, keeps at most maxWatched, and forgets a source that left.
func TestMigrationWatchBounds(t *testing.T) {
	var watch *MigrationWatch
	w := newWindow(t, 1<<20, 2, func(i int, node *msg.Node) {
		if i == 0 {
			watch = WatchMigrations(node)
		}
	})
	src := msg.Sender{ID: 1, Gen: w.nodes[0].Generation(1)}
	for _, garbage := range []string{"", "{", "null", `{"session":1,"pid":5,"stage":"dance"}`, `{"session":1,"pid":0,"stage":"dump"}`,
		`{"session":1,"pid":5,"stage":"dump","x":"` + strings.Repeat("a", 2000) + `"}`} {
		watch.progress(src, []byte(garbage))
	}
	if l := watch.List(); len(l) != 0 {
		t.Errorf("garbage made %+v", l)
	}
	for i := range 2 * maxWatched {
		watch.progress(src, fmt.Appendf(nil, `{"session":%d,"pid":5,"target":0,"stage":"dump"}`, i+1))
	}
	if l := watch.List(); len(l) != maxWatched {
		t.Errorf("%d migrations watched, want the limit %d", len(l), maxWatched)
	}
	watch.progress(msg.Sender{ID: 1, Gen: src.Gen + 1}, []byte(`{"session":1,"pid":5,"stage":"dump"}`))
	w.stop[1]()
	<-w.done[1]
	if l := watch.List(); len(l) != 0 {
		t.Errorf("a source that left still has %d migrations watched", len(l))
	}
}
