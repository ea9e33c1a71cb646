package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/kvmhost"
	"github.com/popvmm/popvmm/internal/termfilter"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vtty"
)

// version is set with -ldflags "-X main.version=..." by the Makefile.
var version = ""

// cli holds what every command shares.
type cli struct {
	stdout, stderr io.Writer
	runRoot        string
	target         string // -c: cluster name or config file
	verbose        bool
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	c := &cli{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "popvmm",
		Short:         "Run several Linux kernels side by side, each on its own host cores",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErr("unknown command %q (see popvmm --help)", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.Help()
			return usageErr("no command given")
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErr("%v (see %s --help)", err, cmd.CommandPath())
	})
	root.PersistentFlags().StringVar(&c.runRoot, "run-root", cluster.DefaultRunRoot(), "directory holding one run directory per cluster ($POPVMM_RUN_ROOT)")
	root.PersistentFlags().BoolVarP(&c.verbose, "verbose", "v", false, "log debug detail")
	root.AddCommand(c.validateCmd(), c.upCmd(), c.statusCmd(), c.downCmd(), c.bootCmd(),
		c.attachCmd(), c.logsCmd(), c.sshCmd(), c.msgCmd(), c.migrateCmd(), c.labCmd(), c.checkKVMCmd(), c.versionCmd(), c.diskCmd())
	return root
}

// exactArgs is cobra.ExactArgs with a usage exit status and named arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usageErr("%s wants %s, got %d argument(s) (see --help)", cmd.CommandPath(), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

func (c *cli) logger() *slog.Logger {
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: level}))
}

func (c *cli) targetFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&c.target, "cluster", "c", "", "cluster name, or its cluster.toml (default: the only cluster up)")
}

// load reads and checks a config; any problem is a usage error (status 2)
// listing every field at fault. Warnings go to stderr.
func (c *cli) load(path string) (*cluster.Cluster, error) {
	f, err := cluster.Load(path)
	if err != nil {
		if errors.Is(err, cluster.ErrParse) || errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return nil, &exitError{exitUsage, err}
		}
		return nil, err
	}
	f.RunRoot = c.runRoot
	cl, err := cluster.Check(f, cluster.SysHost{})
	if err == nil {
		err = guest.CheckInitramfs(cl) // the initrd as booted, with its overlay
	}
	if err != nil {
		return nil, configErr(path, err)
	}
	for _, w := range cl.Warnings {
		fmt.Fprintf(c.stderr, "warning: %s\n", w)
	}
	return cl, nil
}

func configErr(path string, err error) error {
	fes := cluster.FieldErrors(err)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem%s:", path, len(fes), map[bool]string{true: "", false: "s"}[len(fes) == 1])
	for _, fe := range fes {
		fmt.Fprintf(&b, "\n  %v", fe)
	}
	return &exitError{exitUsage, errors.New(b.String())}
}

func (c *cli) validateCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a cluster.toml and print the resolved plan",
		Args:  exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.load(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, cl)
			}
			nested := guest.NestedBackend()
			return cl.WritePlan(c.stdout, func(k *cluster.Kernel) string {
				return guest.Cmdline(cl, k, nested, nil)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	return cmd
}

func (c *cli) upCmd() *cobra.Command {
	var detach, noKernels bool
	var notifyFD int
	cmd := &cobra.Command{
		Use:   "up FILE",
		Short: "Bring a cluster up (foreground; -d to detach)",
		Args:  exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var notify *supervisor.Notifier
			if notifyFD > 0 {
				notify = supervisor.NewNotifier(notifyFD)
			}
			err := c.up(cmd.Context(), args[0], detach, noKernels, notify)
			notify.Notify(err) // no-op once ready was sent
			return err
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run the supervisor in the background and return once it is up")
	cmd.Flags().BoolVar(&noKernels, "no-kernels", false, "bring up the shared window and control socket only; kernels stay defined (host peers, tests)")
	cmd.Flags().IntVar(&notifyFD, "notify-fd", 0, "internal: report readiness on this fd")
	cmd.Flags().MarkHidden("notify-fd")
	return cmd
}

func (c *cli) up(ctx context.Context, path string, detach, noKernels bool, notify *supervisor.Notifier) error {
	cl, err := c.load(path)
	if err != nil {
		return err
	}
	// The check and the start are one step for other `up`s under this run
	// root: the lock is held from the check until this cluster's supervisor
	// answers (opt.Ready) or has failed. A detaching `up` checks without it
	// for an early answer; its supervisor (this function again, in the
	// child) checks again under it.
	unlock := func() {}
	if !detach {
		if unlock, err = supervisor.LockUp(ctx, c.runRoot, func() {
			fmt.Fprintf(c.stderr, "popvmm: waiting for another `popvmm up` under %s to finish starting\n", c.runRoot)
		}); err != nil {
			return err
		}
		defer unlock()
	}
	if err := supervisor.Conflicts(ctx, c.runRoot, cl); err != nil {
		return configErr(path, err)
	}
	// Fail before anything is set up when this host cannot run the kernels.
	opt := supervisor.Options{NoVMM: "the cluster was brought up with --no-kernels", RunRoot: c.runRoot}
	if !noKernels {
		kv := kvmhost.Probe(kvmhost.SysHost{})
		if !kv.Full() {
			return &exitError{exitNoKVM, fmt.Errorf("cannot run kernels on this machine: %v\n  what to do: %s", kv.Problem, kv.Advice)}
		}
		if opt.Launcher, err = supervisor.NewVMLauncher(c.logger()); err != nil {
			return &exitError{exitNoKVM, err}
		}
	}
	if detach {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		args := []string{"up", "--run-root", c.runRoot, fmt.Sprintf("--notify-fd=%d", supervisor.NotifyFD), cl.ConfigPath}
		if c.verbose {
			args = append(args, "-v")
		}
		if noKernels {
			args = append(args, "--no-kernels")
		}
		pid, err := supervisor.Detach(exe, args, cl.RunDir)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "cluster %s is up: supervisor pid %d, log %s/%s\n", cl.Name, pid, cl.RunDir, supervisor.LogName)
		fmt.Fprintf(c.stdout, "`%s` shows it, `%s` stops it\n", c.suggest("status", "-c", cl.Name), c.suggest("down", "-c", cl.Name))
		return nil
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	sup := supervisor.New(cl, c.logger())
	opt.Ready = func(sock string) {
		unlock()
		fmt.Fprintf(c.stdout, "cluster %s is up; control socket %s\n", cl.Name, sock)
		fmt.Fprintf(c.stdout, "Ctrl-C or `%s` stops it\n", c.suggest("down", "-c", cl.Name))
		notify.Notify(nil)
	}
	err = sup.Run(ctx, opt)
	var ae *supervisor.AlreadyUpError
	if errors.As(err, &ae) {
		return fmt.Errorf("cluster %q is already up (supervisor pid %d, run directory %s); stop it first with `%s`",
			cl.Name, ae.PID, ae.RunDir, c.suggest("down", "-c", cl.Name))
	}
	if errors.Is(err, supervisor.ErrNameTaken) {
		return fmt.Errorf("%w; `%s` shows it", err, c.suggest("status", "-c", cl.Name))
	}
	return err
}

// suggest is a popvmm command line to print for the user: it works as
// printed (with this command's --run-root when it is not the default).
func (c *cli) suggest(args ...string) string { return supervisor.Command(c.runRoot, args...) }

// client finds the supervisor the command addresses.
func (c *cli) client(ctx context.Context) (supervisor.Client, error) {
	t := c.target
	if strings.HasSuffix(t, ".toml") || strings.ContainsRune(t, '/') {
		f, err := cluster.Load(t)
		if err != nil {
			return supervisor.Client{}, &exitError{exitUsage, err}
		}
		f.RunRoot = c.runRoot
		return supervisor.Client{Socket: f.RunDir() + string(filepath.Separator) + supervisor.SocketName}, nil
	}
	return supervisor.Find(ctx, c.runRoot, t)
}

// callTimeout bounds a command's exchange with a supervisor.
const callTimeout = 30 * time.Second

// withCluster runs f, within callTimeout, with the client of the cluster the
// command addresses.
func (c *cli) withCluster(cmd *cobra.Command, f func(ctx context.Context, cl supervisor.Client) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	cl, err := c.client(ctx)
	if err != nil {
		return err
	}
	return f(ctx, cl)
}

// status asks the addressed cluster's supervisor for its status.
func (c *cli) status(cmd *cobra.Command) (*supervisor.Status, error) {
	var st *supervisor.Status
	err := c.withCluster(cmd, func(ctx context.Context, cl supervisor.Client) (err error) {
		st, err = cl.Status(ctx)
		return err
	})
	return st, err
}

// withKernel runs f with the addressed cluster's status and that of its
// kernel name; an unknown name is a usage error listing the kernels.
func (c *cli) withKernel(cmd *cobra.Command, name string, f func(st *supervisor.Status, k *supervisor.KernelStatus) error) error {
	st, err := c.status(cmd)
	if err != nil {
		return err
	}
	k := st.Kernel(name)
	if k == nil {
		var names []string
		for _, k := range st.Kernels {
			names = append(names, k.Name)
		}
		return usageErr("cluster %q has no kernel %q (kernels: %s)", st.Cluster, name, strings.Join(names, ", "))
	}
	return f(st, k)
}

func (c *cli) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster and every kernel's state, cores, memory and addresses",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := c.status(cmd)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, st)
			}
			return supervisor.WriteStatus(c.stdout, st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.targetFlag(cmd)
	return cmd
}

func (c *cli) downCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop every kernel of the cluster and release everything it holds",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withCluster(cmd, func(ctx context.Context, cl supervisor.Client) error {
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				if err := cl.Down(ctx); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "cluster %s is down\n", st.Cluster)
				return nil
			})
		},
	}
	c.targetFlag(cmd)
	return cmd
}

func (c *cli) bootCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "boot NAME",
		Short: "Boot a manual (secondary) kernel into the running cluster",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withCluster(cmd, func(ctx context.Context, cl supervisor.Client) error {
				if _, err := cl.Call(ctx, supervisor.Request{Op: supervisor.OpBoot, Name: args[0]}); err != nil {
					return opExit(err)
				}
				fmt.Fprintf(c.stdout, "kernel %s is booting\n", args[0])
				return nil
			})
		},
	}
	c.targetFlag(cmd)
	return cmd
}

// opExit maps a supervisor's refusal to an exit status.
func opExit(err error) error {
	var oe *supervisor.OpError
	if errors.As(err, &oe) {
		switch oe.Code {
		case supervisor.CodeNoKVM:
			return &exitError{exitNoKVM, err}
		case supervisor.CodeNotFound, supervisor.CodeBadRequest:
			return &exitError{exitUsage, err}
		}
	}
	return err
}

func (c *cli) attachCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attach NAME",
		Short: "Attach the terminal to a kernel's serial console (Ctrl-] detaches)",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.attach(cmd.Context(), cl, args[0], os.Stdin)
		},
	}
	c.targetFlag(cmd)
	return cmd
}

func (c *cli) logsCmd() *cobra.Command {
	var follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a kernel's console log (-f follows it)",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withKernel(cmd, args[0], func(_ *supervisor.Status, k *supervisor.KernelStatus) error {
				if _, err := os.Stat(k.ConsoleLog); errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("no console output yet from %q (%s): it is %s", k.Name, k.ConsoleLog, k.State)
				}
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				out := c.stdout
				if !raw && isTerminal(out) {
					// The guest's queries (ESC [ 6 n…) would make the
					// terminal type its answers into the user's shell.
					out = termfilter.New(out)
				}
				return vtty.CopyLog(ctx, k.ConsoleLog, out, follow)
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	cmd.Flags().BoolVar(&raw, "raw", false, "copy the log byte for byte, control sequences included (to a terminal, only colours pass without it)")
	c.targetFlag(cmd)
	return cmd
}

func (c *cli) sshCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh NAME [COMMAND...]",
		Short: "Run ssh to a kernel with the cluster's key",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usageErr("%s wants NAME [COMMAND...]", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withKernel(cmd, args[0], func(st *supervisor.Status, k *supervisor.KernelStatus) error {
				if k.State != supervisor.StateRunning && k.State != supervisor.StateBooting {
					return &exitError{exitFailure, fmt.Errorf("kernel %q is %s; `%s` starts it", k.Name, k.State, c.suggest("boot", "-c", st.Cluster, k.Name))}
				}
				ssh, err := exec.LookPath("ssh")
				if err != nil {
					return fmt.Errorf("popvmm ssh runs the system ssh client, and there is none: %w (apt-get install openssh-client)", err)
				}
				// `popvmm ssh NAME -- CMD` means what `popvmm ssh NAME CMD` does,
				// as with `popvmm lab run -- CMD`.
				remote := args[1:]
				if len(remote) > 0 && remote[0] == "--" {
					remote = remote[1:]
				}
				argv := append([]string{ssh}, supervisor.SSHArgs(st, k, remote)...)
				return syscall.Exec(ssh, argv, os.Environ())
			})
		},
	}
	cmd.Flags().SetInterspersed(false)
	c.targetFlag(cmd)
	return cmd
}

func (c *cli) msgCmd() *cobra.Command {
	var asJSON bool
	call := func(cmd *cobra.Command, req supervisor.Request) (*supervisor.WindowReply, error) {
		var out *supervisor.WindowReply
		err := c.withCluster(cmd, func(ctx context.Context, cl supervisor.Client) error {
			resp, err := cl.Call(ctx, req)
			if err != nil {
				return opExit(err)
			}
			if resp.Window == nil {
				return errors.New("msg reply without a body")
			}
			out = resp.Window
			return nil
		})
		return out, err
	}
	root := &cobra.Command{
		Use:   "msg",
		Short: "Talk to kernels over the shared window (ping, info, stat, tty)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.Help()
			return usageErr("msg wants a subcommand: ping, info, stat, tty")
		},
	}
	ping := &cobra.Command{
		Use:   "ping NAME",
		Short: "Round trip to a kernel's agent over the window",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := call(cmd, supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionPing, Name: args[0]})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s (peer %d): reply in %v\n", args[0], r.Peer, time.Duration(r.RTTns))
			return nil
		},
	}
	info := &cobra.Command{
		Use:   "info NAME",
		Short: "A kernel's release, uptime, load and memory, from its agent",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := call(cmd, supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionInfo, Name: args[0]})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, r.Info)
			}
			i := r.Info // the guest's words: no control sequences reach the terminal
			fmt.Fprintf(c.stdout, "%s (peer %d): Linux %s, up %s, load %.2f %.2f %.2f, memory %s available of %s\n",
				termfilter.String(i.Name), r.Peer, termfilter.String(i.Release), (time.Duration(i.Uptime) * time.Second).Round(time.Second), i.Load[0], i.Load[1], i.Load[2],
				memmap.FormatSize(i.MemAvailable&^(memmap.MiB-1)), memmap.FormatSize(i.MemTotal&^(memmap.MiB-1)))
			return nil
		},
	}
	info.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	stat := &cobra.Command{
		Use:   "stat",
		Short: "The window's peer table and popvmm's message counters",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := call(cmd, supervisor.Request{Op: supervisor.OpWindow, Action: supervisor.ActionStat})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, r.Stat)
			}
			// Peer names are what each peer wrote in its section.
			return supervisor.WriteWindowStat(termfilter.New(c.stdout), r.Stat)
		},
	}
	stat.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	tty := &cobra.Command{
		Use:   "tty NAME",
		Short: "A shell of a kernel over the window (inter-kernel TTY)",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := c.status(cmd)
			if err != nil {
				return err
			}
			return c.tty(cmd.Context(), st, args[0], os.Stdin)
		},
	}
	for _, sub := range []*cobra.Command{ping, info, stat, tty} {
		c.targetFlag(sub)
		root.AddCommand(sub)
	}
	return root
}

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print popvmm's version",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(c.stdout, "popvmm %s\n", versionString())
			return nil
		},
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return defaultStr(v, "unknown")
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if v == "" {
		v = bi.Main.Version
	}
	if rev != "" {
		v += fmt.Sprintf(" (%.12s%s)", rev, dirty)
	}
	return fmt.Sprintf("%s %s", v, bi.GoVersion)
}

func defaultStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
