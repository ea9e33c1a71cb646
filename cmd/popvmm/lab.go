package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/kvmhost"
	"github.com/popvmm/popvmm/internal/termfilter"
	"github.com/popvmm/popvmm/lab"
)

// labFlags are the flags every lab command shares.
type labFlags struct {
	cpus       int
	memory     string
	shares     []string
	image      string
	timing     bool
	consoleLog string
	qemu       string
}

func (f *labFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&f.cpus, "cpus", 2, "emulated CPUs of the lab host")
	cmd.Flags().StringVar(&f.memory, "memory", "4G", "memory of the lab host (512M, 4G, ...)")
	cmd.Flags().StringArrayVar(&f.shares, "share", nil, "directory shared read-write at the same path (repeatable; the current directory always is)")
	cmd.Flags().StringVar(&f.image, "image", lab.DefaultImage().Dir, "lab image directory (make lab builds it)")
	cmd.Flags().BoolVar(&f.timing, "timing", false, "at the end, print the split on stderr as one line of seconds (lab: timing qemu=... kernel=...; bench/lab.sh reads it)")
	cmd.Flags().StringVar(&f.qemu, "qemu", lab.DefaultQEMU(), "the emulator that runs the lab host ($POPVMM_LAB_QEMU)")
	cmd.Flags().StringVar(&f.consoleLog, "console-log", "", "write the lab host's whole kernel console (ttyS0) to this file as it comes, whatever the outcome")
}

func (f *labFlags) config(c *cli) (lab.Config, error) {
	mem, err := cluster.ParseSize(f.memory)
	if err != nil {
		return lab.Config{}, usageErr("--memory %q: %v", f.memory, err)
	}
	if f.cpus < 1 || f.cpus > 64 {
		return lab.Config{}, usageErr("--cpus %d: want 1 to 64", f.cpus)
	}
	var shares []string
	for _, s := range f.shares {
		abs, err := filepath.Abs(s)
		if err != nil {
			return lab.Config{}, usageErr("--share %q: %v", s, err)
		}
		shares = append(shares, abs)
	}
	cfg := lab.Config{
		Image: lab.Image{Dir: f.image}, QEMU: f.qemu, CPUs: f.cpus, Memory: mem, Shares: shares,
		Env: os.Environ(), Stdout: c.stdout, Stderr: c.stderr, Progress: c.stderr,
	}
	// The lab host's / is this machine's: the same binary holds KVM there.
	if exe, err := os.Executable(); err == nil {
		cfg.KVMHolder = []string{exe, "lab", "hold-kvm"}
	}
	return cfg, nil
}

// labHoldCmd is what a lab job runs first (lab.Config.KVMHolder): it takes
// a lab.Hold, says lab.HoldReady, and keeps the hold until it is stopped
// (the lab powers off after the job). A hold that fails is reported and
// the job goes on without it.
func (c *cli) labHoldCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "hold-kvm",
		Short:  "Inside the lab: hold two idle KVM VMs for the whole job (docs/lab.md)",
		Hidden: true,
		Args:   exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stopWatch := c.startCPUWatchers()
			defer stopWatch()
			h, err := lab.HoldKVM()
			fmt.Fprintln(c.stdout, lab.HoldReady)
			if err != nil {
				// The watchers stay: the job runs on.
				fmt.Fprintf(c.stderr, "lab hold-kvm: %v (the job runs without the hold)\n", err)
				<-ctx.Done()
				return nil
			}
			<-ctx.Done()
			return h.Close()
		},
	}
}

// cpuWatchDir is where the lab's CPU watchers keep their beat files (the
// lab's /run is a fresh tmpfs).
const cpuWatchDir = "/run/popvmm-lab-cpus"

// startCPUWatchers starts `popvmm lab watch-cpu` for every CPU this
// process may run on (in the lab: every CPU online), each killed with
// this process; the returned function stops them. One that cannot start
// is reported and the job goes on. The watchers run SCHED_FIFO, and the
// kernel's real-time throttling is turned off first: a watcher's
// backtrace request waits in the kernel for up to 10 s, and a throttled
// watcher would wait for the throttle's timer, which may be the lost
// CPU's.
func (c *cli) startCPUWatchers() (stop func()) {
	exe, err := os.Executable()
	var set unix.CPUSet
	if err == nil {
		err = unix.SchedGetaffinity(0, &set)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "lab hold-kvm: no CPU watchers: %v\n", err)
		return func() {}
	}
	if err := os.WriteFile("/proc/sys/kernel/sched_rt_runtime_us", []byte("-1"), 0); err != nil {
		fmt.Fprintf(c.stderr, "lab hold-kvm: real-time throttling stays on: %v\n", err)
	}
	var cmds []*exec.Cmd
	for cpu := range 1024 {
		if !set.IsSet(cpu) {
			continue
		}
		cmd := exec.Command(exe, "lab", "watch-cpu", "--cpu", strconv.Itoa(cpu), "--dir", cpuWatchDir)
		cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(c.stderr, "lab hold-kvm: no watcher for CPU %d: %v\n", cpu, err)
			continue
		}
		cmds = append(cmds, cmd)
	}
	return func() {
		for _, cmd := range cmds {
			cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, cmd := range cmds {
			cmd.Wait()
		}
	}
}

// labWatchCPUCmd is one lab CPU's watcher (lab.CPUWatch), pinned to it.
func (c *cli) labWatchCPUCmd() *cobra.Command {
	var w lab.CPUWatch
	cmd := &cobra.Command{
		Use:    "watch-cpu",
		Short:  "Inside the lab: beat on one CPU; when another runs nothing, send an NMI, then end the lab host (docs/lab.md)",
		Hidden: true,
		Args:   exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := lab.PinProcess(w.CPU, true); err != nil {
				return fmt.Errorf("lab watch-cpu: %w", err)
			}
			w.Log = c.stdout
			return w.Run(ctx)
		},
	}
	cmd.Flags().IntVar(&w.CPU, "cpu", 0, "the CPU this watcher runs on")
	cmd.Flags().StringVar(&w.Dir, "dir", cpuWatchDir, "directory of the CPUs' beat files")
	cmd.Flags().DurationVar(&w.Silence, "silence", 5*time.Second, "a CPU silent this long gets an NMI")
	cmd.Flags().DurationVar(&w.FailAfter, "fail-after", 20*time.Second, "a CPU silent this long ends the lab host")
	return cmd
}

func (c *cli) labCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "lab",
		Short: "An emulated KVM host (QEMU TCG with kvm_amd inside) for machines without /dev/kvm",
		Long: `The lab boots Debian's kernel under QEMU's software emulator with an emulated
AMD CPU, loads kvm_amd in it, and runs commands there as root with /dev/kvm.
The machine's / is visible read-only, /tmp and /run are fresh, the current
directory and each --share are read-write at the same path. Exit status: the
command's own, or 125 when the lab itself failed. See docs/lab.md.`,
	}
	root.AddCommand(c.labRunCmd(), c.labShellCmd(), c.labUpCmd(), c.labBuildCmd(), c.labHoldCmd(), c.labWatchCPUCmd())
	return root
}

// labCommand gives cmd the lab flags and a RunE that calls run with the
// lab configuration they make.
func (c *cli) labCommand(cmd *cobra.Command, run func(cfg lab.Config, f *labFlags, args []string) error) *cobra.Command {
	var f labFlags
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg, err := f.config(c)
		if err != nil {
			return err
		}
		return run(cfg, &f, args)
	}
	f.add(cmd)
	return cmd
}

func (c *cli) labRunCmd() *cobra.Command {
	return c.labCommand(&cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Run CMD as root in the lab, with /dev/kvm; exit with its status",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr("lab run wants a command: popvmm lab run -- CMD [ARG...]")
			}
			return nil
		},
	}, func(cfg lab.Config, f *labFlags, args []string) error {
		cfg.Args = args
		return c.runLab(cfg, f)
	})
}

func (c *cli) labShellCmd() *cobra.Command {
	return c.labCommand(&cobra.Command{
		Use:   "shell",
		Short: "An interactive root shell in the lab",
		Args:  exactArgs(),
	}, func(cfg lab.Config, f *labFlags, args []string) error {
		cfg.Args = []string{"/bin/sh", "-i"}
		return c.runLabInteractive(cfg, f)
	})
}

func (c *cli) labUpCmd() *cobra.Command {
	return c.labCommand(&cobra.Command{
		Use:   "up CONFIG",
		Short: "Bring a cluster up inside the lab, then a shell there; leaving the shell brings it down",
		Args:  exactArgs("CONFIG"),
	}, func(cfg lab.Config, f *labFlags, args []string) error {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		config, err := filepath.Abs(args[0])
		if err != nil {
			return err
		}
		// The config's directory, and this binary's, which the lab's
		// fresh /tmp would hide when it lives there (go run, tests).
		cfg.Shares = append(cfg.Shares, filepath.Dir(config), filepath.Dir(exe))
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			// No terminal (make up </dev/null, a CI job): no one to
			// give a shell to, so the cluster stays up until the lab is
			// stopped, as a foreground `popvmm up` does.
			cfg.Args = []string{"/bin/sh", "-c", labUpScript + labUpHold, "lab-up", exe, config}
			return c.runLab(cfg, f)
		}
		cfg.Args = []string{"/bin/sh", "-c", labUpScript + labUpShell, "lab-up", exe, config}
		return c.runLabInteractive(cfg, f)
	})
}

// labUpScript brings the cluster up inside the lab and shows its status;
// labUpShell or labUpHold follows it.
const labUpScript = `set -u
exe=$1 config=$2
export PATH="$(dirname "$exe"):$PATH"
"$exe" up -d "$config" || exit $?
"$exe" status -c "$config" || exit $?
`

// labUpShell gives a person a shell next to the cluster; leaving it brings
// the cluster down.
const labUpShell = `echo "popvmm: cluster up in the lab; popvmm status, attach, ssh and msg work here. Leave the shell to bring it down."
sh -i
"$exe" down -c "$config"
`

// labUpHold keeps the cluster up, without a shell, until the lab is
// stopped.
const labUpHold = `echo "popvmm: cluster up in the lab, without a shell (standard input is not a terminal); Ctrl-C (SIGINT or SIGTERM to popvmm) stops the lab and the cluster with it"
while :; do sleep 3600; done
`

func (c *cli) labBuildCmd() *cobra.Command {
	var debs, dir string
	var check bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the lab image from fetched Debian packages (make lab does this)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			im := lab.Image{Dir: dir}
			if check {
				if err := im.Check(); err != nil {
					return &exitError{exitFailure, err}
				}
				return nil
			}
			rebuilt, err := im.Build(debs)
			if err != nil {
				return fmt.Errorf("lab image: %w", err)
			}
			if rebuilt {
				fmt.Fprintf(c.stdout, "==> lab image built in %s\n", dir)
			} else {
				fmt.Fprintf(c.stdout, "==> lab image is up to date (%s)\n", dir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&debs, "debs", "images/build/debs", "unpacked Debian packages (images/fetch.sh)")
	cmd.Flags().StringVar(&dir, "image", lab.DefaultImage().Dir, "where to write the lab image")
	cmd.Flags().BoolVar(&check, "check", false, "only say (exit status 0 or 1) whether the image is built and current")
	return cmd
}

func (c *cli) runLabInteractive(cfg lab.Config, f *labFlags) error {
	cfg.Interactive = true
	cfg.Stdin = os.Stdin
	if term.IsTerminal(int(os.Stdin.Fd())) {
		restore, err := c.rawTerminal(os.Stdin)
		if err != nil {
			return err
		}
		defer restore()
		// The guest's terminal speaks \n; the raw host terminal needs \r\n
		// from the guest's own line discipline, which it has (sane mode).
		// popvmm's own lines (progress, the lab's last words) get theirs
		// from rawTerminal.
		cfg.Progress = c.stderr
	}
	return c.runLab(cfg, f)
}

// rawTerminal puts the terminal in raw mode until restore, and until
// then ends every line popvmm writes to stdout and stderr with CR LF: a raw
// terminal does not return to the margin on a line feed.
func (c *cli) rawTerminal(in *os.File) (restore func(), err error) {
	fd := int(in.Fd())
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("raw mode for the terminal: %w", err)
	}
	stdout, stderr := c.stdout, c.stderr
	c.stdout, c.stderr = termfilter.CRLF(stdout), termfilter.CRLF(stderr)
	return func() {
		c.stdout, c.stderr = stdout, stderr
		term.Restore(fd, old)
	}, nil
}

// runLab runs cfg and turns its outcome into popvmm's exit status: the
// command's own, 125 for a lab failure, 128+N when stopped by signal N
// (130 for Ctrl-C, 143 for SIGTERM).
func (c *cli) runLab(cfg lab.Config, f *labFlags) error {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			cancel(signalCause{s.(syscall.Signal)})
		case <-ctx.Done():
		}
	}()
	if f.consoleLog != "" {
		// Written as the console arrives, so that a watcher (scripts/
		// test-kvm.sh) sees a lab host's fault report while it runs.
		log, err := os.OpenFile(f.consoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return usageErr("--console-log: %v", err)
		}
		defer log.Close()
		cfg.Console = log
	}
	res, err := lab.Run(ctx, cfg)
	if f.timing {
		t := res.Timing
		sec := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) }
		fmt.Fprintf(c.stderr, "lab: timing qemu=%s kernel=%s modules=%s mounts=%s command=%s poweroff=%s cpu=%s\n",
			sec(t.QEMU), sec(t.Kernel-t.QEMU), sec(t.Modules-t.Kernel), sec(t.Ready-t.Modules), sec(t.Done-t.Ready), sec(t.Exit-t.Done), sec(t.CPU))
	}
	var sc signalCause
	var le *lab.Error
	switch {
	case errors.As(err, &le):
		// Once the lab has booted, a failure is the lab host dying under
		// the command: its console's last lines are the only clue, so they
		// are shown whatever -v says.
		if le.Console != "" && (c.verbose || strings.Contains(le.Reason, "stopped")) {
			fmt.Fprintf(c.stderr, "lab host console (last lines):\n%s\n", le.Console)
		}
		return &exitError{lab.ExitLabFailure, le}
	case errors.Is(err, context.Canceled) && errors.As(context.Cause(ctx), &sc):
		return &exitError{128 + int(sc.sig), fmt.Errorf("lab: %v; the lab host was stopped", sc.sig)}
	case err != nil:
		return &exitError{lab.ExitLabFailure, err}
	}
	if res.ExitCode != 0 {
		return &exitError{res.ExitCode, nil}
	}
	return nil
}

// signalCause is why runLab's context was cancelled.
type signalCause struct{ sig syscall.Signal }

func (s signalCause) Error() string { return s.sig.String() }

func (c *cli) checkKVMCmd() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:   "check-kvm",
		Short: "Say whether this machine's /dev/kvm can run popvmm's kernels, and what to do if not",
		Long: `Exit status 0 when /dev/kvm opens and its backend runs guest user processes
(kvm_intel, kvm_amd); 1 otherwise, with the reason and the way out (loading a
module, enabling nested virtualisation, or popvmm lab).`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := kvmhost.Probe(kvmhost.SysHost{})
			if asJSON {
				problem := ""
				if s.Problem != nil {
					problem = s.Problem.Error()
				}
				enc := json.NewEncoder(c.stdout)
				enc.SetIndent("", "  ")
				enc.Encode(map[string]any{"backend": s.Backend, "usable": s.Usable, "userspace": s.Userspace, "problem": problem, "advice": s.Advice})
			} else if !quiet {
				switch {
				case s.Full():
					fmt.Fprintf(c.stdout, "KVM: usable (%s serves %s)\n", s.Backend, kvmhost.Device)
				default:
					fmt.Fprintf(c.stdout, "KVM: %v\n  what to do: %s\n", s.Problem, s.Advice)
				}
			}
			if !s.Full() {
				return &exitError{exitFailure, nil}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the verdict as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing; the exit status says")
	return cmd
}
