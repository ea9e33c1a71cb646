// Command popagent is popvmm's guest agent: it joins the cluster's shared
// window as its kernel's node and serves ping, info, the inter-kernel TTY
// (a shell over the window) and process migration (package ipi/agent). It
// also lets this kernel's users open a shell of another kernel over the
// window:
//
//	popagent [-window SOCKET] [-name NAME]   run the agent
//	popagent tty NAME                        shell of kernel NAME (Ctrl-] detaches)
//
// In a guest it finds the window device (PCI 1af4:1110) in sysfs, maps its
// BAR2 and takes doorbells through uio_pci_generic. On a host, or on a
// machine where guest userspace cannot run, it joins through popvmm's
// ivshmem server instead (-window RUNDIR/ivshmem.sock).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
)

// defaultLocal is the agent's local socket, for `popagent tty`.
const defaultLocal = "/run/popagent.sock"

func main() {
	fs := flag.NewFlagSet("popagent", flag.ExitOnError)
	window := fs.String("window", "", "join through this ivshmem server socket (host mode)")
	name := fs.String("name", "", "the kernel this agent speaks for (default: hostname)")
	proc := fs.String("proc", "/proc", "where to read kernel facts from")
	local := fs.String("local", defaultLocal, "local socket for `popagent tty`")
	args := os.Args[1:]
	ttyMode := len(args) > 0 && args[0] == "tty"
	if ttyMode {
		args = args[1:]
	}
	fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if ttyMode {
		if fs.NArg() != 1 {
			fmt.Fprintln(os.Stderr, "usage: popagent tty NAME")
			os.Exit(2)
		}
		err = ttyClient(*local, fs.Arg(0), os.Stdin, os.Stdout)
	} else {
		if *name == "" {
			*name, _ = os.Hostname()
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		err = run(ctx, agentConfig{window: *window, name: *name, proc: *proc, local: *local}, log)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "popagent: %v\n", err)
		os.Exit(1)
	}
}

type agentConfig struct {
	window, name, proc, local string
}

// run joins the window (through the server in host mode, the device in a
// guest) and serves until ctx ends.
func run(ctx context.Context, cfg agentConfig, log *slog.Logger) error {
	var ttys *agent.TTYClient
	w, err := joinWindow(ctx, cfg, func(node *msg.Node) {
		agent.Serve(node, cfg.name, cfg.proc)
		agent.ServeTTY(node, "/bin/sh")
		ttys = agent.NewTTYClient(node)
		if cfg.window == "" { // a kernel's agent: its process trees can migrate (docs/migration.md)
			agent.ServeMigrate(node, agent.MigrateConfig{Name: cfg.name, Proc: cfg.proc, Upper: "/run/popvmm/rw/upper", Log: log})
		}
	}, log)
	if err != nil {
		return err
	}
	defer w.close()
	node, id := w.node, w.id

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.local != "" {
		os.Remove(cfg.local)
		ln, err := net.Listen("unix", cfg.local)
		if err != nil {
			return fmt.Errorf("local socket: %w", err)
		}
		os.Chmod(cfg.local, 0o600)
		context.AfterFunc(ctx, func() { ln.Close() })
		go serveLocal(ctx, ln, node, ttys, log)
	}
	log.Info("popagent on the window", "name", cfg.name, "peer", id)
	fmt.Printf("popagent %s: peer %d\n", cfg.name, id)
	return w.run(ctx)
}

// window is the agent's node on the window: run runs it until ctx ends,
// close leaves the window.
type window struct {
	node  *msg.Node
	id    int
	run   func(context.Context) error
	close func()
}

// joinWindow joins as a host peer through the ivshmem server at
// cfg.window, or else through the window device of this guest, and has
// serve register the node's services before it runs.
func joinWindow(ctx context.Context, cfg agentConfig, serve func(*msg.Node), log *slog.Logger) (window, error) {
	if cfg.window != "" {
		hp, err := ipi.JoinHostPeer(ctx, ipi.HostPeerConfig{Socket: cfg.window, Name: cfg.name, Serve: serve})
		if err != nil {
			return window{}, err
		}
		run := func(ctx context.Context) error {
			select {
			case <-ctx.Done():
			case <-hp.Done():
			}
			return hp.Err()
		}
		return window{node: hp.Node, id: hp.Client.ID, run: run, close: func() { hp.Close() }}, nil
	}
	dir, err := ipi.FindDevice("")
	if err != nil {
		return window{}, fmt.Errorf("%w (or use -window SOCKET on a host)", err)
	}
	dev, err := ipi.OpenGuestDevice(dir)
	if err != nil {
		return window{}, err
	}
	closeDev := func() {
		if dev.NoIRQ {
			log.Warn("the window device had no usable interrupt; the agent polled it every millisecond")
		}
		dev.Close()
	}
	node, err := msg.Join(dev.Mem, dev.ID(), cfg.name, dev, msg.Options{})
	if err != nil {
		closeDev()
		return window{}, err
	}
	serve(node)
	return window{node: node, id: dev.ID(), run: node.Run, close: closeDev}, nil
}

// serveLocal answers `popagent tty NAME` from this kernel's users: one line
// "tty NAME", the answer "ok" or "error: ...", then the shell's bytes.
//
// A transient accept error (out of file descriptors, an aborted
// connection) is retried with back-off (internal/retry), so a burst of
// clients cannot end the service; it ends with ctx or the listener.
func serveLocal(ctx context.Context, ln net.Listener, node *msg.Node, ttys *agent.TTYClient, log *slog.Logger) {
	acceptLog := ratelog.Default(log)
	defer acceptLog.Flush()
	for {
		conn, err := retry.Accept(ctx, ln.Accept, acceptLog, "popagent local socket")
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			r := bufio.NewReaderSize(conn, 4096)
			b, err := r.ReadSlice('\n') // a longer request line is refused
			if err != nil {
				return
			}
			line := string(b)
			name, ok := strings.CutPrefix(strings.TrimSpace(line), "tty ")
			if !ok {
				fmt.Fprintf(conn, "error: unknown request %q\n", strings.TrimSpace(line))
				return
			}
			peer, found := node.PeerByName(name)
			if !found {
				fmt.Fprintf(conn, "error: no kernel named %q is on the window\n", name)
				return
			}
			fmt.Fprintln(conn, "ok")
			if err := ttys.Open(ctx, peer, r, conn); err != nil {
				log.Warn("tty session", "to", name, "err", err)
			}
		}()
	}
}

// ttyClient asks the local agent for a shell of kernel name and bridges the
// terminal to it.
func ttyClient(local, name string, stdin *os.File, stdout io.Writer) error {
	conn, err := net.Dial("unix", local)
	if err != nil {
		return fmt.Errorf("is popagent running? %w", err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "tty %s\n", name)
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "ok" {
		return errors.New(strings.TrimPrefix(strings.TrimSpace(line), "error: "))
	}
	if term.IsTerminal(int(stdin.Fd())) {
		old, err := term.MakeRaw(int(stdin.Fd()))
		if err != nil {
			return err
		}
		defer term.Restore(int(stdin.Fd()), old)
	}
	go func() {
		in := &agent.DetachReader{R: stdin}
		buf := make([]byte, 1024)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				conn.Write(buf[:n])
			}
			if errors.Is(err, agent.ErrDetached) {
				conn.Close()
				return
			}
			if err != nil {
				conn.(*net.UnixConn).CloseWrite()
				return
			}
		}
	}()
	io.Copy(stdout, r)
	return nil
}
