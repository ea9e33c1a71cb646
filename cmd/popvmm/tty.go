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
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/supervisor"
)

// tty joins the cluster's window as its own host peer and opens a shell on
// the peer called name.
func (c *cli) tty(ctx context.Context, st *supervisor.Status, name string, stdin *os.File) error {
	if st.Window == "" {
		return fmt.Errorf("cluster %q has no shared window", st.Cluster)
	}
	client, err := ipi.Dial(ctx, st.Window, 1)
	if err != nil {
		return err
	}
	node, err := msg.Join(client.Mem, client.ID, "tty-"+strconv.Itoa(os.Getpid()), ipi.Bell{C: client}, msg.Options{})
	if err != nil {
		client.Close()
		return err
	}
	rctx, stopRun := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { node.Run(rctx); close(ran) }()
	defer func() { stopRun(); <-ran; client.Close() }()

	peer, ok := node.PeerByName(name)
	if !ok {
		if k := st.Kernel(name); k != nil {
			peer = k.PeerID
		} else {
			return usageErr("no kernel or window peer named %q", name)
		}
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
