// Package lab runs commands on an emulated KVM host: QEMU's software
// emulator (TCG) with `-cpu max` emulates AMD SVM with nested paging, and
// Debian's kernel loads kvm_amd inside it, so /dev/kvm works there on any
// Linux machine. The machine's / is shared read-only over virtio-9p with
// tmpfs on /tmp and /run, the working directory and each share read-write at
// the same path, and the command runs as root in a chroot of it with its
// stdout on ttyS1 and stderr on ttyS2 (ttyS0 carries the kernel console and
// /init's progress markers). docs/lab.md has the numbers and the limits.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ExitLabFailure is the exit status `popvmm lab run` gives when the lab
// itself failed (QEMU missing, image not built, boot timeout, a module that
// did not load), as distinct from the command's own status (docker run's
// convention).
const ExitLabFailure = 125

// Config is one lab run.
type Config struct {
	Image       Image
	QEMU        string    // emulator binary; "" is DefaultQEMU()
	CPUs        int       // emulated CPUs; 0 is 2
	Memory      uint64    // bytes; 0 is 4 GiB
	Dir         string    // the command's working directory, shared read-write
	Shares      []string  // more directories shared read-write at the same path
	Args        []string  // the command and its arguments
	Env         []string  // its environment, KEY=VALUE
	Interactive bool      // ttyS1 is the command's controlling terminal; Stdin is forwarded
	Stdin       io.Reader // used when Interactive
	Stdout      io.Writer // the command's stdout (and stderr when Interactive)
	Stderr      io.Writer // the command's stderr
	Progress    io.Writer // "lab: ..." lines; nil for none
	Console     io.Writer // a live copy of the lab host's console (ttyS0), a line at a time; nil for none
	// KVMHolder, if set, is a command the job starts in the background
	// before Args and waits for (until it prints HoldReady, exits, or 60
	// s): popvmm's `lab hold-kvm`, which takes a Hold (hold.go) for the
	// whole job.
	KVMHolder   []string
	BootTimeout time.Duration // until /init says ready; 0 is 3 minutes
	TSCkHz      uint64        // the host's TSC rate; 0 is measured
}

// Timing splits a run: QEMU started (its serial ports connected), the lab
// kernel ran /init, the modules loaded, the mounts were done (ready), the
// command ended, QEMU exited. Each is measured on the host from the start
// of Run. CPU is the emulator's user and system time.
type Timing struct {
	QEMU, Kernel, Modules, Ready, Done, Exit time.Duration
	CPU                                      time.Duration
}

// String is the split as `popvmm lab` prints it.
func (t Timing) String() string {
	s := fmt.Sprintf("QEMU start %.1f s, kernel to /init %.1f s, modules %.1f s, mounts %.1f s",
		t.QEMU.Seconds(), (t.Kernel - t.QEMU).Seconds(), (t.Modules - t.Kernel).Seconds(), (t.Ready - t.Modules).Seconds())
	if t.Exit > 0 && t.Done > 0 {
		s += fmt.Sprintf(", command %.1f s, power-off %.1f s", (t.Done - t.Ready).Seconds(), (t.Exit - t.Done).Seconds())
	}
	if t.CPU > 0 {
		s += fmt.Sprintf("; emulator CPU time %.1f s", t.CPU.Seconds())
	}
	return s
}

// Result is a finished run: the command's exit status and where the time went.
type Result struct {
	ExitCode int
	Timing   Timing
	Console  string // the lab host's console log (ttyS0), kept on failure
}

// Error is a failure of the lab itself, with a one-line reason.
type Error struct {
	Reason  string
	Console string // tail of the lab host's console, when there was one
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("lab: %s: %v", e.Reason, e.Err)
	}
	return "lab: " + e.Reason
}

func (e *Error) Unwrap() error { return e.Err }

func labErr(err error, format string, args ...any) *Error {
	return &Error{Reason: fmt.Sprintf(format, args...), Err: err}
}

// DefaultQEMU is the emulator a lab run uses when Config.QEMU is empty:
// $POPVMM_LAB_QEMU when set, else qemu-system-x86_64 from PATH.
func DefaultQEMU() string {
	if q := os.Getenv("POPVMM_LAB_QEMU"); q != "" {
		return q
	}
	return "qemu-system-x86_64"
}

func (c *Config) defaults() error {
	if c.QEMU == "" {
		c.QEMU = DefaultQEMU()
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.Memory == 0 {
		c.Memory = 4 << 30
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 3 * time.Minute
	}
	if c.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		c.Dir = wd
	}
	if len(c.Args) == 0 {
		return errors.New("no command")
	}
	for _, d := range append([]string{c.Dir}, c.Shares...) {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("share %q: not an absolute path", d)
		}
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return fmt.Errorf("share %q: not a directory", d)
		}
		if strings.ContainsAny(d, ",\n") {
			return fmt.Errorf("share %q: QEMU's -virtfs cannot take a path with a comma or newline", d)
		}
	}
	for _, w := range []*io.Writer{&c.Stdout, &c.Stderr, &c.Progress} {
		if *w == nil {
			*w = io.Discard
		}
	}
	if c.TSCkHz == 0 {
		khz, err := hostTSCkHz()
		if err != nil {
			return err
		}
		c.TSCkHz = khz
	}
	return nil
}

// shares lists the read-write shares, the working directory first, without
// repeats and without a share inside another one.
func (c *Config) shares() []string {
	var out []string
	for _, d := range append([]string{c.Dir}, c.Shares...) {
		d = filepath.Clean(d)
		dup := false
		for _, o := range out {
			if d == o || strings.HasPrefix(d, o+"/") {
				dup = true
			}
		}
		if !dup && d != "/" {
			out = append(out, d)
		}
	}
	return out
}

// QEMUArgs is the emulator's command line for a run whose job directory is
// job and whose three serial ports connect to the Unix sockets in sock.
// The machine is QEMU's microvm: no firmware (the kernel is entered at its
// PVH entry point), no PCI, virtio over MMIO described in ACPI; the PIT and
// PIC are on for the kernel's timer checks and the RTC for the time of day.
// With no HPET or ACPI PM timer to calibrate the TSC against, the kernel
// is told its rate (c.TSCkHz, the host's, which TCG's RDTSC reads).
func (c *Config) QEMUArgs(job string, sock [3]string) []string {
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "microvm,pit=on,pic=on,rtc=on,isa-serial=on", "-accel", "tcg,thread=" + c.tcgThread(), "-cpu", c.cpuModel(),
		"-smp", strconv.Itoa(c.CPUs), "-m", strconv.FormatUint(c.Memory>>20, 10) + "M",
		"-kernel", c.Image.Kernel(), "-initrd", c.Image.Initrd(),
		"-append", KernelArgs + " tsc_early_khz=" + strconv.FormatUint(c.TSCkHz, 10) + labAppend(),
	}
	for i, s := range sock {
		args = append(args, "-chardev", fmt.Sprintf("socket,id=ser%d,path=%s", i, s))
		if i == 0 {
			args = append(args, "-serial", "chardev:ser0") // microvm's own COM1
		} else {
			args = append(args, "-device", fmt.Sprintf("isa-serial,chardev=ser%d,index=%d", i, i))
		}
	}
	virtfs := func(tag, path string, ro bool) {
		v := fmt.Sprintf("local,id=%s,path=%s,security_model=passthrough,multidevs=remap", tag, path)
		if ro {
			v += ",readonly=on"
		}
		args = append(args, "-fsdev", v, "-device", fmt.Sprintf("virtio-9p-device,fsdev=%s,mount_tag=%s", tag, tag))
	}
	virtfs("root", "/", true)
	virtfs("ctl", job, false)
	for i, d := range c.shares() {
		virtfs("s"+strconv.Itoa(i), d, false)
	}
	return args
}

// tcgThread is QEMU's TCG threading: "multi" (one host thread per emulated
// CPU), or $POPVMM_LAB_TCG ("single": one thread runs them all in turn).
func (c *Config) tcgThread() string {
	if t := os.Getenv("POPVMM_LAB_TCG"); t == "single" || t == "multi" {
		return t
	}
	return "multi"
}

// labAppend is more of the lab kernel's command line: " " and
// $POPVMM_LAB_APPEND, or nothing. lab.MODULE=P=V[,P=V] there sets a lab
// module's parameters (init.sh), e.g. lab.kvm_amd=npt=0.
func labAppend() string {
	if a := os.Getenv("POPVMM_LAB_APPEND"); a != "" {
		return " " + a
	}
	return ""
}

// cpuModel is the emulated CPU: "max" (every feature TCG emulates, SVM
// with nested paging among them), or $POPVMM_LAB_CPU.
func (c *Config) cpuModel() string {
	if m := os.Getenv("POPVMM_LAB_CPU"); m != "" {
		return m
	}
	return "max"
}

// KernelArgs is the lab kernel's command line, less tsc_early_khz. Beyond
// the consoles: tsc=reliable (no clocksource watchdog), cryptomgr.notests
// (the crypto self-tests cost a second under emulation), no_timer_check,
// audit=0 and nowatchdog (less work at boot and after).
//
// loglevel=4 keeps errors on the console (an RCU stall report is one),
// for the post-mortem of a lab host that wedges.
//
// lab.kvm_amd=npt=0 (init.sh passes it to insmod): an interactive lab
// (popvmm lab up, shell, run) shadows the nested guests' page tables. With
// nested paging on, the emulator's SVM faults nested kernels and the lab
// host itself now and then (an interrupt taken inside the world switch,
// docs/kvm-backends.md), on the lab CPUs that take the lab host's
// interrupts and its other work, as every CPU of a two-CPU lab does. The
// KVM tier, which keeps that work on a housekeeping CPU of its own, runs
// with it on, as every real KVM host does (scripts/test-kvm.sh, issue 20).
// POPVMM_LAB_APPEND=lab.kvm_amd=npt=1 turns it on (the last value wins);
// TestKVMLabNestedPaging checks that the lab's kvm_amd runs with what its
// command line asked.
const KernelArgs = "console=ttyS0 quiet loglevel=4 panic=-1 8250.nr_uarts=4 tsc=reliable cryptomgr.notests no_timer_check audit=0 nowatchdog lab.kvm_amd=npt=0"

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellWords quotes each of args for sh and joins them with spaces.
func shellWords(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// JobScript is the script the lab's /init runs in the chroot.
func (c *Config) JobScript() string {
	var b strings.Builder
	b.WriteString("# written by popvmm lab\n")
	for _, kv := range c.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(k) {
			continue
		}
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	b.WriteString("export POPVMM_IN_LAB=1\n")
	// The lab's /tmp is fresh: a TMPDIR of this machine's is not there
	// (unless on a share), and the holder's log and every mktemp in it
	// would fail.
	b.WriteString(`[ -z "${TMPDIR:-}" ] || [ -d "$TMPDIR" ] || unset TMPDIR` + "\n")
	b.WriteString(holdScript(c.KVMHolder))
	fmt.Fprintf(&b, "cd %s || exit 125\n", shellQuote(c.Dir))
	b.WriteString("exec " + shellWords(c.Args) + "\n")
	return b.String()
}

func validEnvName(k string) bool {
	if k == "" || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// Run boots the lab host, runs the command in it and returns its exit
// status. A failure of the lab itself is an *Error. Cancelling ctx kills
// the emulator; it is also killed if this process dies (PR_SET_PDEATHSIG).
func Run(ctx context.Context, c Config) (Result, error) {
	start := time.Now()
	var res Result
	qemu, err := c.resolve()
	if err != nil {
		return res, err
	}
	tmp, job, err := makeJobDir(c)
	if tmp != "" {
		defer os.RemoveAll(tmp)
	}
	if err != nil {
		return res, err
	}
	sock, ln, err := listenSerial(tmp)
	defer closeAll(ln[:])
	if err != nil {
		return res, err
	}
	emu, err := startEmulator(qemu, c.QEMUArgs(job, sock))
	if err != nil {
		return res, err
	}
	fmt.Fprintf(c.Progress, "lab: booting emulated KVM host (%d CPUs, %d MiB)…\n", c.CPUs, c.Memory>>20)
	defer emu.kill()
	conns, err := acceptSerial(ln, emu)
	defer closeAll(conns[:])
	if err != nil {
		return res, err
	}
	res.Timing.QEMU = time.Since(start)

	ports := copySerial(c, conns)
	failure, ready, err := c.watch(ctx, start, emu, ports, &res)
	// The emulator is gone: its sockets are closed, the copies end.
	ports.wg.Wait()
	if err != nil {
		res.Console = ports.consoleText()
		return res, err
	}
	for m := range ports.markers { // seen after the emulator exited
		if step, _, _ := strings.Cut(m, " "); step == "done" {
			res.Timing.Done = time.Since(start)
		}
	}
	res.Console = ports.consoleText()
	if failure == nil {
		res.ExitCode, failure = jobStatus(job, ready, emu.stderr.String())
		if failure == nil {
			return res, nil
		}
	}
	failure.Console = tail(res.Console, 20)
	return res, failure
}

// resolve fills in c's defaults and checks what a run needs before it
// starts anything: the request, the lab image, and the emulator, whose
// path it returns.
func (c *Config) resolve() (qemu string, err error) {
	if err := c.defaults(); err != nil {
		return "", labErr(err, "bad lab request")
	}
	if err := c.Image.Check(); err != nil {
		return "", labErr(err, "no lab image")
	}
	qemu, err = exec.LookPath(c.QEMU)
	if err != nil {
		return "", labErr(err, "%s not found (make deps installs qemu-system-x86)", c.QEMU)
	}
	return qemu, nil
}

// makeJobDir makes the run's temporary directory (tmp, removed by the
// caller, even on error, when not empty) with its owner's pid in it, and
// the job directory the lab host mounts (job: the job script, the shares,
// and the interactive flag), after sweeping the ones killed runs left.
func makeJobDir(c Config) (tmp, job string, err error) {
	sweepJobDirs(os.TempDir())
	tmp, err = os.MkdirTemp("", "popvmm-lab-")
	if err != nil {
		return "", "", labErr(err, "job directory")
	}
	// Its owner, for the sweep of a later run should this one be killed.
	if err := os.WriteFile(filepath.Join(tmp, "owner"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return tmp, "", labErr(err, "job directory")
	}
	job = filepath.Join(tmp, "job")
	if err := os.Mkdir(job, 0o755); err != nil {
		return tmp, "", labErr(err, "job directory")
	}
	files := map[string]string{"job.sh": c.JobScript(), "shares": strings.Join(c.shares(), "\n") + "\n"}
	if c.Interactive {
		files["interactive"] = ""
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(job, name), []byte(data), 0o644); err != nil {
			return tmp, "", labErr(err, "job directory")
		}
	}
	return tmp, job, nil
}

// listenSerial listens on a socket in dir for each of the emulator's
// three serial ports; the caller closes what it returns, on error too.
func listenSerial(dir string) (sock [3]string, ln [3]*net.UnixListener, err error) {
	for i := range sock {
		sock[i] = filepath.Join(dir, fmt.Sprintf("ttyS%d.sock", i))
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock[i], Net: "unix"})
		if err != nil {
			return sock, ln, labErr(err, "serial socket")
		}
		ln[i] = l
	}
	return sock, ln, nil
}

// closeAll closes every one of cs that is set.
func closeAll[T interface {
	comparable
	io.Closer
}](cs []T) {
	var unset T
	for _, c := range cs {
		if c != unset {
			c.Close()
		}
	}
}

// emulator is the running QEMU: its process (in a process group of its
// own), its stderr, and its exit.
type emulator struct {
	cmd    *exec.Cmd
	stderr strings.Builder
	exited chan error // Wait's result, once
}

// startEmulator starts QEMU on a thread kept for its lifetime: its
// Pdeathsig kills it should popvmm die.
func startEmulator(qemu string, args []string) (*emulator, error) {
	e := &emulator{cmd: exec.Command(qemu, args...), exited: make(chan error, 1)}
	e.cmd.Stderr = &e.stderr
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	started := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the creating thread exits: keep it
		// alive for as long as the emulator runs.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := e.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		e.exited <- e.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, labErr(err, "start %s", qemu)
	}
	return e, nil
}

// kill kills the emulator's process group.
func (e *emulator) kill() { syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL) }

// acceptSerial accepts the three serial connections QEMU makes at
// start-up; the caller closes what it returns, on error too. On error the
// emulator is killed and waited for.
func acceptSerial(ln [3]*net.UnixListener, e *emulator) (conns [3]*net.UnixConn, err error) {
	for i, l := range ln {
		l.SetDeadline(time.Now().Add(30 * time.Second))
		conn, err := l.AcceptUnix()
		if err != nil {
			e.kill()
			<-e.exited
			return conns, labErr(err, "QEMU did not connect its serial ports: %s", lastLine(e.stderr.String()))
		}
		conns[i] = conn
	}
	return conns, nil
}

// serialPorts is what the lab host says on its serial ports: the console
// (ttyS0) kept whole, with /init's markers, and the command's stdout and
// stderr (ttyS1, ttyS2) copied out.
type serialPorts struct {
	mu      sync.Mutex
	console strings.Builder
	markers chan string // closed when the console ends
	wg      sync.WaitGroup
}

// copySerial starts copying conns: ttyS0 into the console (and c.Console),
// its markers to markers; ttyS1 and ttyS2 to c.Stdout and c.Stderr; and
// c.Stdin to ttyS1 when c.Interactive. wg ends when the emulator's sockets
// close.
func copySerial(c Config, conns [3]*net.UnixConn) *serialPorts {
	p := &serialPorts{markers: make(chan string, 16)}
	p.wg.Add(3)
	go func() { // ttyS0: console log and /init's markers
		defer p.wg.Done()
		defer close(p.markers)
		sc := bufio.NewScanner(conns[0])
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			p.mu.Lock()
			p.console.WriteString(line + "\n")
			p.mu.Unlock()
			if c.Console != nil {
				io.WriteString(c.Console, line+"\n") // a copy: its errors do not stop the run
			}
			if m, ok := consoleMarker(line); ok {
				p.markers <- m
			}
		}
	}()
	go func() { defer p.wg.Done(); io.Copy(c.Stdout, conns[1]) }()
	go func() { defer p.wg.Done(); io.Copy(c.Stderr, conns[2]) }()
	if c.Interactive && c.Stdin != nil {
		go io.Copy(conns[1], c.Stdin)
	}
	return p
}

func (p *serialPorts) consoleText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.console.String()
}

// watch follows the run until the emulator exits: /init's markers set
// res.Timing (and a fail marker the failure), the boot timeout kills the
// emulator, and so does ctx, whose error watch then returns once the
// emulator is gone. ready says the lab host reached /init's ready marker.
func (c *Config) watch(ctx context.Context, start time.Time, e *emulator, p *serialPorts, res *Result) (failure *Error, ready bool, err error) {
	boot := time.NewTimer(c.BootTimeout)
	defer boot.Stop()
	markers := p.markers
	for {
		select {
		case m, ok := <-markers:
			if !ok {
				markers = nil
				continue
			}
			at := time.Since(start)
			step, rest, _ := strings.Cut(m, " ")
			if step == "ready" {
				ready = true
				boot.Stop()
			}
			if f := c.mark(step, rest, at, &res.Timing); f != nil {
				failure = f
			}
		case <-e.exited:
			res.Timing.Exit = time.Since(start)
			if ps := e.cmd.ProcessState; ps != nil {
				res.Timing.CPU = ps.UserTime() + ps.SystemTime()
			}
			return failure, ready, nil
		case <-boot.C:
			failure = labErr(nil, "the lab host was not ready within %s", c.BootTimeout)
			e.kill()
		case <-ctx.Done():
			e.kill()
			<-e.exited
			return failure, ready, ctx.Err()
		}
	}
}

// mark records /init's marker step (with the rest of its line) seen at
// at; a fail marker is the lab's failure.
func (c *Config) mark(step, rest string, at time.Duration, t *Timing) *Error {
	switch step {
	case "kernel":
		t.Kernel = at
	case "modules":
		t.Modules = at
	case "ready":
		t.Ready = at
		fmt.Fprintf(c.Progress, "lab: ready in %.1f s (%s)\n", at.Seconds(), *t)
	case "done":
		t.Done = at
	case "fail":
		return labErr(nil, "%s", rest)
	}
	return nil
}

// jobStatus is the command's exit status, from the status file the job
// writes in job; without one, the failure says where the lab host
// stopped, with the emulator's last word (qemuErr).
func jobStatus(job string, ready bool, qemuErr string) (int, *Error) {
	st, err := os.ReadFile(filepath.Join(job, "status"))
	switch {
	case err == nil:
		code, perr := strconv.Atoi(strings.TrimSpace(string(st)))
		if perr == nil {
			return code, nil
		}
		return 0, labErr(perr, "bad exit status %q from the lab host", st)
	case !ready:
		return 0, labErr(nil, "the lab host stopped while booting (QEMU: %s)", lastLine(qemuErr))
	default:
		return 0, labErr(nil, "the lab host stopped before the command finished (QEMU: %s)", lastLine(qemuErr))
	}
}

// sweepJobDirs removes the job directories (popvmm-lab-*) in dir that a
// killed popvmm lab left behind: those whose owner file names a process
// that no longer exists. A directory without an owner file, or whose owner
// still runs, stays.
func sweepJobDirs(dir string) {
	dirs, _ := filepath.Glob(filepath.Join(dir, "popvmm-lab-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		os.RemoveAll(d)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return "no message"
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// consoleMarker is the marker a lab console line carries: "popvmm-lab:
// STEP REST" at its start, written by /init, or a fail marker after the
// kernel log's time stamp ("[  370.56] popvmm-lab: fail ..."), written
// through /dev/kmsg by the CPU watcher, whose console write must not
// depend on the UART's interrupt (the lost CPU may be the one that takes
// it). The watcher's other lines are no markers: their number has no
// bound, and markers are read after the emulator exits.
func consoleMarker(line string) (string, bool) {
	if strings.HasPrefix(line, "[") {
		_, rest, ok := strings.Cut(line, "] ")
		if !ok {
			return "", false
		}
		m, ok := strings.CutPrefix(rest, "popvmm-lab: ")
		if !ok || !strings.HasPrefix(m, "fail ") {
			return "", false
		}
		return m, true
	}
	if m, ok := strings.CutPrefix(line, "popvmm-lab: "); ok {
		return m, true
	}
	return "", false
}
