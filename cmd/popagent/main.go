// Command popagent is popvmm's guest agent: it joins the cluster's shared
// window as its kernel's node and serves ping, info and the inter-kernel TTY
// (a shell over the window; package ipi/agent).
//
// In a guest it finds the window device (PCI 1af4:1110) in sysfs, maps its
// BAR2 and takes doorbells through uio_pci_generic. On a host, or on a
// machine where guest userspace cannot run, it joins through popvmm's
// ivshmem server instead:
//
//	popagent -window RUNDIR/ivshmem.sock -name primary
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
)

func main() {
	window := flag.String("window", "", "join through this ivshmem server socket (host mode)")
	name := flag.String("name", "", "the kernel this agent speaks for (default: hostname)")
	proc := flag.String("proc", "/proc", "where to read kernel facts from")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *window, *name, *proc, log); err != nil {
		fmt.Fprintf(os.Stderr, "popagent: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, window, name, proc string, log *slog.Logger) error {
	if window == "" {
		return runGuest(ctx, name, proc, log)
	}
	c, err := ipi.Dial(ctx, window, 1)
	if err != nil {
		return err
	}
	defer c.Close()
	node, err := msg.Join(c.Mem, c.ID, name, ipi.Bell{C: c}, msg.Options{})
	if err != nil {
		return err
	}
	agent.Serve(node, name, proc)
	agent.ServeTTY(node, "/bin/sh")
	log.Info("popagent on the window", "name", name, "peer", c.ID, "socket", window)
	fmt.Printf("popagent %s: peer %d\n", name, c.ID)
	return node.Run(ctx)
}

// runGuest joins through the window device inside a guest kernel.
func runGuest(ctx context.Context, name, proc string, log *slog.Logger) error {
	dir, err := ipi.FindDevice("")
	if err != nil {
		return fmt.Errorf("%w (or use -window SOCKET on a host)", err)
	}
	dev, err := ipi.OpenGuestDevice(dir)
	if err != nil {
		return err
	}
	defer dev.Close()
	node, err := msg.Join(dev.Mem, dev.ID(), name, dev, msg.Options{})
	if err != nil {
		return err
	}
	agent.Serve(node, name, proc)
	agent.ServeTTY(node, "/bin/sh")
	log.Info("popagent on the window", "name", name, "peer", dev.ID(), "device", dir)
	err = node.Run(ctx)
	if dev.NoIRQ {
		log.Warn("the window device had no usable interrupt; the agent polled it every millisecond")
	}
	return err
}
