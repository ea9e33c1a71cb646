package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLoadOrder(t *testing.T) {
	idx := map[string]string{"kvm_amd": "a", "kvm": "k", "ccp": "c", "irqbypass": "i", "9p": "9", "netfs": "n", "loop_a": "la", "loop_b": "lb"}
	deps := map[string][]string{"a": {"kvm", "ccp"}, "k": {"irqbypass"}, "9": {"netfs"}, "la": {"loop_b"}, "lb": {"loop_a"}}
	dep := func(ko string) ([]string, error) { return deps[ko], nil }
	for _, tc := range []struct {
		want    []string
		order   []string
		errText string
	}{
		{[]string{"kvm-amd"}, []string{"ccp", "irqbypass", "kvm", "kvm_amd"}, ""},
		{[]string{"kvm_amd", "kvm", "9p"}, []string{"ccp", "irqbypass", "kvm", "kvm_amd", "netfs", "9p"}, ""},
		{[]string{"nosuch"}, nil, "module nosuch (needed by lab) is not in"},
		{[]string{"loop_a"}, nil, "cycle: lab -> loop_a -> loop_b -> loop_a"},
	} {
		got, err := LoadOrder(idx, tc.want, dep)
		if tc.errText != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errText) {
				t.Errorf("LoadOrder(%v) = %v, %v; want error containing %q", tc.want, got, err, tc.errText)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.order) {
			t.Errorf("LoadOrder(%v) = %v, %v; want %v", tc.want, got, err, tc.order)
		}
	}
}

func TestJobScriptQuotes(t *testing.T) {
	dir := t.TempDir()
	c := Config{Dir: "/work/it's here", Args: []string{"printf", "%s|", "a b", "it's", "$HOME", "`x`"},
		Env: []string{"A=1", "B=it's $x", "1BAD=x", "BAD-NAME=y", "NOEQUALS"}}
	script := c.JobScript()
	for _, bad := range []string{"1BAD", "BAD-NAME", "NOEQUALS"} {
		if strings.Contains(script, bad) {
			t.Errorf("job script exports %s:\n%s", bad, script)
		}
	}
	// Run it with the host's sh in a directory of the same shape.
	c.Dir = filepath.Join(dir, "it's here")
	os.Mkdir(c.Dir, 0o755)
	script = strings.Replace(c.JobScript(), "exec 'printf'", `printf "%s|" "$A" "$B" "$POPVMM_IN_LAB" "$(pwd)"; exec 'printf'`, 1)
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	want := "1|it's $x|1|" + c.Dir + "|a b|it's|$HOME|`x`|"
	if string(out) != want {
		t.Errorf("job script ran as %q, want %q", out, want)
	}
}

func TestQEMUArgs(t *testing.T) {
	c := Config{Image: Image{"/img"}, CPUs: 3, Memory: 2 << 30, Dir: "/work/a", Shares: []string{"/work/a/sub", "/data", "/data", "/"}, TSCkHz: 2445402}
	args := strings.Join(c.QEMUArgs("/tmp/job", [3]string{"/s0", "/s1", "/s2"}), " ")
	for _, want := range []string{
		"-M microvm,pit=on,pic=on,rtc=on,isa-serial=on -accel tcg,thread=multi -cpu max -smp 3 -m 2048M",
		"-kernel /img/vmlinux -initrd /img/lab.cpio",
		" tsc_early_khz=2445402 ",
		"-chardev socket,id=ser0,path=/s0 -serial chardev:ser0",
		"-chardev socket,id=ser1,path=/s1 -device isa-serial,chardev=ser1,index=1",
		"-fsdev local,id=root,path=/,security_model=passthrough,multidevs=remap,readonly=on -device virtio-9p-device,fsdev=root,mount_tag=root",
		"local,id=ctl,path=/tmp/job,",
		"local,id=s0,path=/work/a,", "local,id=s1,path=/data,",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU args lack %q:\n%s", want, args)
		}
	}
	for _, bad := range []string{"mount_tag=s2", "path=/work/a/sub", "readonly=on -device virtio-9p-device,fsdev=ctl"} {
		if strings.Contains(args, bad) {
			t.Errorf("QEMU args have %q (a share inside another, a repeat, or /):\n%s", bad, args)
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{
		{Dir: "/", Args: nil},
		{Dir: "relative", Args: []string{"true"}},
		{Dir: "/nonexistent-popvmm", Args: []string{"true"}},
		{Dir: "/", Shares: []string{"/tmp/a,b"}, Args: []string{"true"}},
	} {
		if err := c.defaults(); err == nil {
			t.Errorf("defaults(%+v) = nil, want an error", c)
		}
	}
}

func TestImageCheck(t *testing.T) {
	im := Image{t.TempDir()}
	if err := im.Check(); err == nil {
		t.Fatal("Check of an empty directory = nil")
	}
	for _, f := range []string{"vmlinux", "lab.cpio"} {
		os.WriteFile(filepath.Join(im.Dir, f), nil, 0o644)
	}
	os.WriteFile(filepath.Join(im.Dir, "key"), []byte("stale\n"), 0o644)
	if err := im.Check(); err == nil || !strings.Contains(err.Error(), "another version") {
		t.Errorf("Check with a stale key = %v", err)
	}
	os.WriteFile(filepath.Join(im.Dir, "key"), []byte(key()+"\n"), 0o644)
	if err := im.Check(); err != nil {
		t.Errorf("Check = %v", err)
	}
}

// TestSweepJobDirs: a job directory whose owner is gone is removed; one
// whose owner runs, or that names no owner, stays.
func TestSweepJobDirs(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, owner string) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		if owner != "" {
			os.WriteFile(filepath.Join(d, "owner"), []byte(owner+"\n"), 0o644)
		}
		return d
	}
	// A pid that does not exist: above the kernel's pid_max limit.
	dead := mk("popvmm-lab-dead", "4194305")
	alive := mk("popvmm-lab-alive", strconv.Itoa(os.Getpid()))
	unowned := mk("popvmm-lab-unowned", "")
	other := mk("other-dir", "4194305")
	sweepJobDirs(dir)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("job directory of a gone owner still there: %v", err)
	}
	for _, d := range []string{alive, unowned, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

// TestJobScriptHold: with a KVMHolder, the job starts it in the background
// with its arguments quoted, runs the command once it said ready (or
// exited without), and not before; without one, nothing of it is there.
func TestJobScriptHold(t *testing.T) {
	if s := (&Config{Dir: "/", Args: []string{"true"}}).JobScript(); strings.Contains(s, "popvmm-lab-hold") {
		t.Errorf("job script without a holder mentions one:\n%s", s)
	}
	for _, tc := range []struct {
		name, holder string
		want         string
	}{
		{"ready", `echo "it's held" >"$TMPDIR/held"; echo ready; sleep 2`, "it's held\n"},
		{"exits without ready", `echo "it's held" >"$TMPDIR/held"; exit 1`, "it's held\n"},
		{"fails at once", `exit 1`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := Config{Dir: dir, Args: []string{"sh", "-c", `cat "$TMPDIR/held" 2>/dev/null || true`},
				KVMHolder: []string{"sh", "-c", tc.holder}}
			cmd := exec.Command("sh", "-c", c.JobScript())
			cmd.Env = append(os.Environ(), "TMPDIR="+dir)
			start := time.Now()
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("sh: %v: %s", err, out)
			}
			if string(out) != tc.want {
				t.Errorf("the command saw %q, want %q", out, tc.want)
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("the command ran %v after the start: it waited for more than the ready line", d)
			}
		})
	}
}

// TestJobScriptTMPDIR: a TMPDIR that does not exist where the job runs
// (the lab's /tmp is fresh) is dropped; one that does is kept.
func TestJobScriptTMPDIR(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ tmpdir, want string }{
		{filepath.Join(dir, "gone"), ""},
		{dir, dir},
	} {
		c := Config{Dir: dir, Env: []string{"TMPDIR=" + tc.tmpdir}, Args: []string{"sh", "-c", `printf %s "${TMPDIR:-}"`}}
		out, err := exec.Command("sh", "-c", c.JobScript()).Output()
		if err != nil {
			t.Fatalf("sh: %v: %s", err, out)
		}
		if string(out) != tc.want {
			t.Errorf("TMPDIR=%s: the command saw TMPDIR %q, want %q", tc.tmpdir, out, tc.want)
		}
	}
}

// TestConsoleMarker: /init's markers start their line; the CPU watcher's
// fail marker comes through the kernel log after its time stamp; nothing
// else is one.
func TestConsoleMarker(t *testing.T) {
	for _, tc := range []struct {
		line, want string
		ok         bool
	}{
		{"popvmm-lab: ready 5.44", "ready 5.44", true},
		{"[  370.562841] popvmm-lab: fail CPU 0 ran nothing for 20.0 s", "fail CPU 0 ran nothing for 20.0 s", true},
		{"[    8.5] kvm: popvmm-lab: fail no", "", false},
		{"[  356.1] popvmm-lab: CPU 0 ran nothing for 5.5 s", "", false},
		{"say popvmm-lab: fail no", "", false},
		{"[  1.0 popvmm-lab: ready", "", false},
		{"", "", false},
	} {
		got, ok := consoleMarker(tc.line)
		if got != tc.want || ok != tc.ok {
			t.Errorf("consoleMarker(%q) = %q, %v; want %q, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
