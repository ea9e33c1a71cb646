package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi/agent"
)

// counterPy counts in memory and appends each count to /root/count.log,
// with a 64 MiB buffer it checksums at start and again on SIGUSR1
// ("check ok" or "check BAD" in the log). It holds /etc/issue.net open, a
// file of the shared image, and writes its PID to /root/count.pid.
const counterPy = `import hashlib, os, signal, time
with open("/root/count.pid", "w") as f:
    f.write(str(os.getpid()))
buf = bytearray(range(256)) * (256 * 1024)
want = hashlib.sha256(buf).hexdigest()
held = open("/etc/issue.net")
log = open("/root/count.log", "a", buffering=1)
def check(sig, frame):
    log.write("check " + ("ok" if hashlib.sha256(buf).hexdigest() == want else "BAD") + "\n")
signal.signal(signal.SIGUSR1, check)
n = 0
while True:
    n += 1
    log.write("%d\n" % n)
    time.sleep(0.05)
`

// TestKVMMigrate: a process counting in memory, appending each count to a
// log on the kernel's private storage, migrates from the full kernel to the
// light one and back (issue 24): its log goes with it and has every number
// once, its 64 MiB buffer is intact, and the frozen time is printed. A
// migration whose target lacks a file the process holds open fails at
// restore: the process goes on counting on the source and no copy is left
// stopped anywhere. A PID that does not exist is refused, nothing touched.
//
// Not yet in the KVM tier: in the lab, the source kernel took the lab's
// double fault at entry_SYSCALL_64 (docs/kvm-backends.md) seconds into the
// migration in 2 runs of 2, before CRIU's dump and restore across the two
// flavours could be seen. POPVMM_E2E_MIGRATE=1 runs it.
func TestKVMMigrate(tt *testing.T) {
	if os.Getenv("POPVMM_E2E_MIGRATE") != "1" {
		tt.Skip("not yet in the KVM tier (see its comment); POPVMM_E2E_MIGRATE=1 runs it")
	}
	c := newKVMCluster(tt, "migrate",
		kvmKernel{"primary", "full", "0", "512M", "up"},
		kvmKernel{"secondary", "light", "1", "512M", "up"})
	t := c.t
	c.bootRoot(requireRootImage(tt))
	c.must("up", "-d", c.config)
	for _, k := range c.kernels {
		c.waitSSHD(k)
	}
	for _, k := range c.kernels {
		c.retry(agentDeadline, "msg", "ping", "-c", c.config, k)
	}

	// A PID that does not exist: refused, status 1.
	_, out, err := c.migrate("primary:4000000", "secondary")
	if code := exitCode(err); code != 1 || !strings.Contains(out, "no process 4000000 in kernel primary") {
		t.Errorf("migrate of a missing pid = status %d:\n%s", code, out)
	}

	// The counter starts high in the PID space: CRIU restores PIDs as they
	// were, and a young kernel's low PIDs are taken by its own boot.
	script := strings.ReplaceAll(counterPy, "'", `'"'"'`)
	// setsid -f: in a session of its own, which the ssh session's end
	// does not reach.
	out = c.mustSSH("primary", "printf '%s' '"+script+"' > /root/counter.py; echo $(($(cat /proc/sys/kernel/pid_max) * 3 / 4)) > /proc/sys/kernel/ns_last_pid || echo no-ns_last_pid; "+
		"cd /root && setsid -f python3 /root/counter.py </dev/null >/root/count.err 2>&1; echo started")
	if !strings.Contains(out, "started") || strings.Contains(out, "no-ns_last_pid") {
		t.Fatalf("starting the counter said:\n%s", out)
	}
	var pid int
	if err := waitUntil(5*time.Minute, func() bool {
		o, _ := c.ssh("primary", "echo $(cat /root/count.pid) $(grep -c . /root/count.log)")
		f := strings.Fields(o)
		if len(f) < 2 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
		n, _ := strconv.Atoi(f[1])
		return pid > 0 && n >= 3
	}); err != nil {
		o, _ := c.ssh("primary", "ls -la /root; cat /root/count.err; ps -eo pid,stat,etime,args | grep [p]ython")
		t.Fatalf("the counter did not start on primary: %v\n%s", err, o)
	}
	t.Logf("counter running on primary as pid %d", pid)

	migrate := func(from, to string) agent.MigrateResult {
		t.Helper()
		start := time.Now()
		stdout, stderr, err := c.migrate("--json", fmt.Sprintf("%s:%d", from, pid), to)
		var res agent.MigrateResult
		if jerr := json.Unmarshal([]byte(stdout), &res); err != nil || jerr != nil {
			t.Fatalf("migrate %s:%d %s: %v\n%s%s", from, pid, to, err, stdout, stderr)
		}
		t.Logf("migrated %s → %s in %.1f s: frozen %.2f s (dump %.2f s, transfer %.2f s of %.1f MiB, restore %.2f s), carried %v",
			from, to, time.Since(start).Seconds(), time.Duration(res.FrozenNS).Seconds(), time.Duration(res.DumpNS).Seconds(),
			time.Duration(res.TransferNS).Seconds(), float64(res.Bytes)/(1<<20), time.Duration(res.RestoreNS).Seconds(), res.Carried)
		if res.NewPID != pid || res.FrozenNS <= 0 || res.Bytes < 64<<20 {
			t.Errorf("result %+v", res)
		}
		return res
	}
	counting := func(k string) int {
		t.Helper()
		var n int
		first := -1
		if err := waitUntil(2*time.Minute, func() bool {
			o, _ := c.ssh(k, "tail -n 1 /root/count.log")
			v, err := strconv.Atoi(strings.TrimSpace(o))
			if err != nil {
				return false
			}
			if first < 0 {
				first = v
			}
			n = v
			return v > first
		}); err != nil {
			t.Fatalf("the counter does not count on %s: %v", k, err)
		}
		return n
	}

	migrate("primary", "secondary")
	counting("secondary")
	if o, _ := c.ssh("primary", fmt.Sprintf("test -e /proc/%d && echo still-there; test -e /root/count.log && echo log-left", pid)); strings.Contains(o, "still-there") || strings.Contains(o, "log-left") {
		t.Errorf("after the migration primary still has: %s", o)
	}
	migrate("secondary", "primary")
	counting("primary")

	// The buffer is intact, and the log has every number once.
	c.mustSSH("primary", fmt.Sprintf("kill -USR1 %d", pid))
	var log string
	if err := waitUntil(3*time.Minute, func() bool {
		log, _ = c.ssh("primary", "cat /root/count.log")
		return strings.Contains(log, "check ")
	}); err != nil {
		t.Fatalf("no checksum line in the log: %v", err)
	}
	if !strings.Contains(log, "check ok") {
		t.Errorf("the 64 MiB buffer changed on the way: %q", log[strings.Index(log, "check "):])
	}
	checkCounts(t, log)

	// A target that lacks a file the process holds open (its own deletion
	// of a file of the shared image): the restore fails, the process goes
	// on counting on primary, and nothing is left stopped on either side.
	c.mustSSH("secondary", "rm /etc/issue.net")
	_, out, err = c.migrate(fmt.Sprintf("primary:%d", pid), "secondary")
	if code := exitCode(err); code != 1 || !strings.Contains(out, "resumed on primary") {
		t.Errorf("migrate to a kernel without /etc/issue.net = status %d, want 1 saying the process resumed:\n%s", code, out)
	}
	t.Logf("the failed migration said: %s", strings.TrimSpace(out))
	counting("primary")
	for _, k := range c.kernels {
		if o, _ := c.ssh(k, "ps -eo pid,stat,comm | awk '$2 ~ /^T/'"); strings.TrimSpace(o) != "" {
			t.Errorf("%s has stopped processes after the failed migration:\n%s", k, o)
		}
	}
	c.down(c.status().PID)
}

// checkCounts checks that the counter's log runs 1, 2, 3... with no
// number lost or repeated (check lines aside).
func checkCounts(t testing.TB, log string) {
	t.Helper()
	want := 1
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if strings.HasPrefix(l, "check ") {
			continue
		}
		n, err := strconv.Atoi(l)
		if err != nil || n != want {
			t.Fatalf("the log has %q where %d belongs", l, want)
		}
		want++
	}
	t.Logf("the log counts 1 to %d with none lost or repeated", want-1)
}

// migrate runs `popvmm migrate -c CONFIG ARGS...` with the lab's patience
// and returns its standard output and error apart.
func (c *kvmCluster) migrate(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"migrate", "-c", c.config, "--timeout", "8m"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// exitCode is a command's exit status from its error.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
