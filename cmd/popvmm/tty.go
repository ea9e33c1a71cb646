package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/term"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/supervisor"
)

// tty joins the cluster's window as its own host peer and opens a shell on
// the peer called name.
func (c *cli) tty(ctx context.Context, st *supervisor.Status, name string, stdin *os.File) error {
	if st.Window == "" {
		return fmt.Errorf("cluster %q has no shared window", st.Cluster)
	}
	// A kernel's name is its kernel's peer id: no host peer answers for it.
	var names []string
	for _, k := range st.Kernels {
		names = append(names, k.Name)
	}
	hp, err := ipi.JoinHostPeer(ctx, ipi.HostPeerConfig{Socket: st.Window, Name: "tty-" + strconv.Itoa(os.Getpid()), Reserved: names})
	if err != nil {
		return err
	}
	defer hp.Close()
	node := hp.Node
	var peer int
	if k := st.Kernel(name); k != nil {
		peer = k.PeerID
	} else if id, ok := node.PeerByName(name); ok {
		peer = id
	} else {
		return usageErr("no kernel or window peer named %q", name)
	}
	var in io.Reader = stdin
	if term.IsTerminal(int(stdin.Fd())) {
		old, err := term.MakeRaw(int(stdin.Fd()))
		if err != nil {
			return err
		}
		defer term.Restore(int(stdin.Fd()), old)
		fmt.Fprintf(c.stderr, "popvmm: shell of %s (peer %d) over the window; Ctrl-] detaches\r\n", name, peer)
		in = &agent.DetachReader{R: stdin}
	}
	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stop()
	if err := agent.TTY(sctx, node, peer, in, c.stdout); err != nil {
		return fmt.Errorf("tty %s: %w", name, err)
	}
	return nil
}

// attach connects the terminal to kernel name's serial console: its recent
// output first, then both directions through the console's PTY until
// Ctrl-] (or the console goes away). Any number of attaches may follow.
func (c *cli) attach(ctx context.Context, cl supervisor.Client, name string, stdin *os.File) error {
	resp, err := cl.Call(ctx, supervisor.Request{Op: supervisor.OpConsole, Name: name})
	if err != nil {
		return opExit(err)
	}
	con := resp.Console
	pty, err := os.OpenFile(con.PTY, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open %s's console: %w", name, err)
	}
	defer pty.Close()
	if _, err := term.MakeRaw(int(pty.Fd())); err != nil {
		return fmt.Errorf("console %s: %w", con.PTY, err)
	}
	var in io.Reader = stdin
	if term.IsTerminal(int(stdin.Fd())) {
		old, err := term.MakeRaw(int(stdin.Fd()))
		if err != nil {
			return err
		}
		defer term.Restore(int(stdin.Fd()), old)
		fmt.Fprintf(c.stderr, "popvmm: %s's console (%s); Ctrl-] detaches\r\n", name, con.State)
	}
	in = &agent.DetachReader{R: in}
	c.stdout.Write(con.Replay)
	done := make(chan error, 2)
	go func() { _, err := io.Copy(pty, in); done <- err }()
	go func() { _, err := io.Copy(c.stdout, pty); done <- err }()
	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	select {
	case <-done:
	case <-sctx.Done():
	}
	fmt.Fprintf(c.stderr, "\r\npopvmm: detached from %s\r\n", name)
	return nil
}
