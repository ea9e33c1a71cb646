package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/supervisor"
)

// migrateArgs is `popvmm migrate SOURCE:PID TARGET`'s positional part.
type migrateArgs struct {
	source string
	pid    int
	target string
}

// parseMigrateArgs reads SOURCE:PID and TARGET; any problem is a usage
// error.
func parseMigrateArgs(from, to string) (migrateArgs, error) {
	src, p, ok := strings.Cut(from, ":")
	if !ok || src == "" || p == "" {
		return migrateArgs{}, usageErr("%q is not SOURCE:PID (a kernel's name, a colon and a process id, e.g. primary:412)", from)
	}
	pid, err := strconv.Atoi(p)
	if err != nil || pid <= 0 {
		return migrateArgs{}, usageErr("%q in %q is not a process id", p, from)
	}
	if to == "" {
		return migrateArgs{}, usageErr("no TARGET kernel given")
	}
	if to == src {
		return migrateArgs{}, usageErr("the process is in %s already: name another kernel as TARGET", src)
	}
	return migrateArgs{source: src, pid: pid, target: to}, nil
}

func (c *cli) migrateCmd() *cobra.Command {
	var asJSON, dropTCP bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "migrate SOURCE:PID TARGET",
		Short: "Move a process tree from one kernel to another through the shared window (CRIU)",
		Long: "Checkpoint the process tree rooted at PID in kernel SOURCE, carry it to kernel TARGET through the\n" +
			"shared window and restore it there; on any failure it resumes on SOURCE (docs/migration.md).",
		Args: exactArgs("SOURCE:PID", "TARGET"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := parseMigrateArgs(args[0], args[1])
			if err != nil {
				return err
			}
			if timeout <= 0 {
				return usageErr("--timeout %v: want a positive duration", timeout)
			}
			st, err := c.status(cmd)
			if err != nil {
				return err
			}
			return c.migrate(cmd.Context(), st, a, agent.MigrateRequest{PID: a.pid, DropTCP: dropTCP, TimeoutMS: timeout.Milliseconds()}, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVar(&dropTCP, "drop-tcp", false, "migrate a tree holding established TCP connections: they are closed on the target")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long the migration may take once the tree is frozen; past it, the tree resumes on SOURCE")
	c.targetFlag(cmd)
	return cmd
}

// migrateKernels finds the kernels a migration names: an unknown one is a
// usage error, one not running a failure.
func (c *cli) migrateKernels(st *supervisor.Status, names ...string) ([]*supervisor.KernelStatus, error) {
	var ks []*supervisor.KernelStatus
	for _, name := range names {
		k := st.Kernel(name)
		if k == nil {
			var all []string
			for _, k := range st.Kernels {
				all = append(all, k.Name)
			}
			return nil, usageErr("cluster %q has no kernel %q (kernels: %s)", st.Cluster, name, strings.Join(all, ", "))
		}
		ks = append(ks, k)
	}
	for _, k := range ks {
		if k.State != supervisor.StateRunning {
			return nil, &exitError{exitFailure, fmt.Errorf("kernel %q is %s, not running: nothing was touched", k.Name, k.State)}
		}
	}
	return ks, nil
}

// migrate joins the window as a host peer of its own and asks the source
// kernel's agent to migrate; the agents do the rest.
func (c *cli) migrate(ctx context.Context, st *supervisor.Status, a migrateArgs, req agent.MigrateRequest, asJSON bool) error {
	ks, err := c.migrateKernels(st, a.source, a.target)
	if err != nil {
		return err
	}
	src, dst := ks[0], ks[1]
	if st.Window == "" {
		return fmt.Errorf("cluster %q has no shared window", st.Cluster)
	}
	var names []string
	for _, k := range st.Kernels {
		names = append(names, k.Name)
	}
	// The node runs until hp.Close (or ctx ends): ctx is the command's.
	hp, err := ipi.JoinHostPeer(ctx, ipi.HostPeerConfig{Socket: st.Window, Name: "migrate-" + strconv.Itoa(os.Getpid()), Reserved: names})
	if err != nil {
		return err
	}
	defer hp.Close()
	for _, k := range []*supervisor.KernelStatus{src, dst} {
		if err := waitOnline(ctx, hp.Node, k.PeerID); err != nil {
			return &exitError{exitFailure, fmt.Errorf("kernel %s's agent is not on the window (is its root the Debian image, with popagent running?): nothing was touched", k.Name)}
		}
	}
	req.Target, req.TargetName = dst.PeerID, dst.Name
	// The agent gives up at req's timeout; the answer comes soon after.
	wctx, cancel := context.WithTimeout(ctx, time.Duration(req.TimeoutMS)*time.Millisecond+time.Minute)
	defer cancel()
	res, err := agent.MigrateFrom(wctx, hp.Node, src.PeerID, req)
	if err != nil {
		return fmt.Errorf("migrate %s:%d to %s: %w", a.source, a.pid, a.target, err)
	}
	res.Source, res.Target = src.Name, dst.Name
	if asJSON {
		if err := writeJSON(c.stdout, res); err != nil {
			return err
		}
	}
	if err := res.Err(); err != nil {
		return &exitError{exitFailure, fmt.Errorf("migrate %s:%d to %s: %w", a.source, a.pid, a.target, err)}
	}
	if !asJSON {
		fmt.Fprintln(c.stdout, migrateSummary(res))
	}
	return nil
}

// waitOnline waits a little for a peer the node has just joined beside.
func waitOnline(ctx context.Context, n *msg.Node, peer int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for n.PeerState(peer) != msg.StateOnline {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// migrateSummary is the one line a successful migration prints.
func migrateSummary(r *agent.MigrateResult) string {
	s := func(ns int64) string { return fmt.Sprintf("%.2f s", time.Duration(ns).Seconds()) }
	rate := ""
	if r.TransferNS > 0 {
		rate = fmt.Sprintf(" at %.0f MiB/s", float64(r.Bytes)/float64(memmap.MiB)/time.Duration(r.TransferNS).Seconds())
	}
	line := fmt.Sprintf("migrated %s:%d to %s: pid %d there now; frozen %s (dump %s, transfer %s of %.1f MiB%s, restore %s)",
		r.Source, r.PID, r.Target, r.NewPID, s(r.FrozenNS), s(r.DumpNS), s(r.TransferNS), float64(r.Bytes)/float64(memmap.MiB), rate, s(r.RestoreNS))
	if len(r.Carried) > 0 {
		line += "; carried " + strings.Join(r.Carried, ", ")
	}
	return line
}
