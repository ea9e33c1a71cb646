package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
	"github.com/popvmm/popvmm/ipi/msg"
)

// maxRequest bounds one request line.
const maxRequest = 64 << 10

// Supervisor runs one cluster.
type Supervisor struct {
	cl  *cluster.Cluster
	log *slog.Logger
	// guestLog rate-limits the lines kernels and host peers cause as
	// often as they like (a reboot loop inside a VM, a peer checking in
	// under a kernel's name again and again): supervisor.log is never
	// rotated.
	guestLog *ratelog.Logger
	started  time.Time

	launcher Launcher // nil: no VMM here; kernels stay defined
	nested   bool     // guest kernels get the nested-backend flags
	noVMM    string   // why there is no launcher, for status and boot
	runRoot  string   // Options.RunRoot, for the commands it suggests

	mu       sync.Mutex
	runs     map[string]*kernelRun
	stop     context.CancelFunc
	win      *windowHost
	wn       *winnetHost     // nil: no window network
	ctx      context.Context // Run's, for kernels booted later
	watchers sync.WaitGroup
}

// New makes a supervisor for a checked cluster.
func New(cl *cluster.Cluster, log *slog.Logger) *Supervisor {
	s := &Supervisor{cl: cl, log: log.With("cluster", cl.Name), runs: map[string]*kernelRun{}}
	s.guestLog = ratelog.Default(s.log)
	for _, k := range cl.Kernels {
		s.runs[k.Name] = &kernelRun{k: k, state: StateDefined, since: time.Now()}
	}
	return s
}

// Options tune Run.
type Options struct {
	// Ready, if set, is called once the control socket accepts requests
	// and every `boot = "up"` kernel runs.
	Ready func(socket string)
	// Launcher boots kernels into VMs. Nil runs the cluster without VMs
	// (the window and control socket only), NoVMM saying why.
	Launcher Launcher
	NoVMM    string
	// Nested adds the kvm_pvm workaround flags to every command line.
	Nested bool
	// RunRoot is the run root whose registry records the cluster by name
	// while it is up (Register), so that -c NAME finds it wherever its run
	// directory is; empty records it nowhere.
	RunRoot string
}

// Run takes the cluster's run directory, serves the control socket and
// returns when ctx is cancelled or a client asks for `down`. Everything it
// set up is released before it returns.
func (s *Supervisor) Run(ctx context.Context, opt Options) error {
	rd, err := Lock(s.cl.RunDir)
	if err != nil {
		return err
	}
	defer rd.Release()
	defer s.guestLog.Flush() // the counts held back, once nothing logs through it
	unregister, err := s.register(opt.RunRoot, rd)
	if err != nil {
		return err
	}
	defer unregister() // before the lock goes
	ln, err := listenControl(rd)
	if err != nil {
		return err
	}
	defer ln.Close()

	if err := s.prepareBoot(rd.Path); err != nil {
		return err
	}
	win, err := s.startWindow(ctx, rd.Path)
	if err != nil {
		return fmt.Errorf("shared window: %w", err)
	}
	defer win.stop()
	wn, err := s.startWinnet() // winnet.go
	if err != nil {
		return fmt.Errorf("window network: %w", err)
	}
	defer wn.stop()
	s.mu.Lock()
	s.win, s.wn = win, wn
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.launcher, s.noVMM, s.nested = opt.Launcher, opt.NoVMM, opt.Nested
	stopNet, err := s.startNetwork() // the bridge (net.go); down after every VM
	if err != nil {
		return err
	}
	defer stopNet()
	s.mu.Lock()
	s.stop = cancel
	s.started = time.Now()
	s.ctx = ctx
	s.mu.Unlock()
	defer s.stopAll()

	s.log.Info("control socket ready", "socket", rd.Socket())
	if s.launcher == nil {
		s.log.Warn("no VMM: kernels stay defined", "why", s.noVMM)
	} else if err := s.bootAll(ctx); err != nil {
		return err
	}
	if opt.Ready != nil {
		opt.Ready(rd.Socket())
	}

	if err := s.acceptLoop(ctx, ln); err != nil {
		return err
	}
	s.log.Info("cluster down")
	return nil
}

// register records the cluster in the run root's registry (-c NAME finds
// it there) and returns what removes it. A name another live cluster
// holds is refused; a registry this user cannot write is only a warning
// (-c FILE still works).
func (s *Supervisor) register(runRoot string, rd *RunDir) (unregister func(), err error) {
	s.runRoot = runRoot
	if runRoot == "" {
		return func() {}, nil
	}
	unregister, err = Register(runRoot, s.cl.Name, rd.Path)
	switch {
	case errors.Is(err, ErrNameTaken):
		return nil, err
	case err != nil:
		s.log.Warn("the cluster is not in the run root's registry: -c NAME will not find it", "err", err)
		return func() {}, nil
	}
	return unregister, nil
}

// listenControl listens on the run directory's control socket (0600),
// removing a stale one: the lock is ours, so a socket left is stale.
func listenControl(rd *RunDir) (*net.UnixListener, error) {
	if err := os.Remove(rd.Socket()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: rd.Socket(), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	if err := os.Chmod(rd.Socket(), 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// acceptLoop serves control connections, one goroutine each, until ctx
// ends; it returns once every connection's goroutine has. An accept that
// fails for a moment (out of file descriptors: a burst of clients, the
// VMs' eventfds) waits and tries again: it must not end Run, whose
// cleanup stops every kernel.
func (s *Supervisor) acceptLoop(ctx context.Context, ln *net.UnixListener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	acceptLog := ratelog.Default(s.log)
	defer acceptLog.Flush()
	for {
		conn, err := retry.Accept(ctx, ln.AcceptUnix, acceptLog, "control socket")
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept control connection: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(ctx, conn)
		}()
	}
}

// prepareBoot makes what every kernel's boot needs besides its image: the
// cluster's SSH key pair (RUNDIR/ssh) and each kernel's initramfs overlay
// (RUNDIR/NAME.overlay.cpio) carrying the public key and cluster facts,
// and with a window network the kernels' own key pair (guest.PeerKeyFiles).
func (s *Supervisor) prepareBoot(runDir string) error {
	pub, err := guest.EnsureKey(filepath.Join(runDir, "ssh"), guest.ClusterKeyComment(s.cl))
	if err != nil {
		return err
	}
	hostKeys, err := s.prepareHostKeys(runDir) // hostkeys.go
	if err != nil {
		return err
	}
	keys := guest.Keys{Authorized: pub, Host: hostKeys}
	// With a window network, the kernels ssh to each other (mpirun) with
	// a key pair of their own, which every kernel accepts too.
	if s.cl.Winnet.Enabled {
		if keys.Peer, err = guest.EnsurePeerKey(filepath.Join(runDir, "ssh"), s.cl); err != nil {
			return err
		}
	}
	for _, k := range s.cl.Kernels {
		ov, err := guest.KernelOverlay(s.cl, k, keys)
		if err != nil {
			return err
		}
		p := filepath.Join(runDir, k.Name+".overlay.cpio")
		if err := os.WriteFile(p, ov, 0o600); err != nil {
			return fmt.Errorf("overlay for %s: %w", k.Name, err)
		}
		s.log.Debug("initramfs overlay written", "kernel", k.Name, "path", p, "bytes", len(ov))
	}
	return nil
}

func (s *Supervisor) serve(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	r := bufio.NewReader(&limited{conn, maxRequest})
	line, err := r.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return
	}
	var req Request
	var resp Response
	if err := json.Unmarshal(line, &req); err != nil {
		resp = Response{Error: "malformed request: " + err.Error(), Code: CodeBadRequest}
	} else {
		resp = s.handle(req)
	}
	b, _ := json.Marshal(resp)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		s.log.Debug("control reply not delivered", "op", req.Op, "err", err)
	}
	if req.Op == OpDown && resp.OK {
		s.log.Info("down requested over the control socket")
		s.stop()
	}
}

// limited is an io.Reader that fails past n bytes, so a client cannot make
// the supervisor buffer without bound.
type limited struct {
	c net.Conn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

func (s *Supervisor) handle(req Request) Response {
	switch req.Op {
	case OpStatus:
		return Response{OK: true, Status: s.Status()}
	case OpDown:
		return Response{OK: true}
	case OpBoot:
		return s.boot(req.Name)
	case OpConsole:
		return s.consoleOf(req.Name)
	case OpWindow:
		return s.windowRequest(req)
	}
	return Response{Error: fmt.Sprintf("unknown op %q", req.Op), Code: CodeBadRequest}
}

func (s *Supervisor) boot(name string) Response {
	k := s.cl.Kernel(name)
	if k == nil {
		return Response{Error: fmt.Sprintf("cluster %q has no kernel %q (kernels: %s)", s.cl.Name, name, s.names()), Code: CodeNotFound}
	}
	s.mu.Lock()
	st := s.runs[name].state
	ctx := s.ctx
	s.mu.Unlock()
	if st != StateDefined && st != StateStopped && st != StateCrashed {
		return Response{Error: fmt.Sprintf("kernel %q is %s", name, st), Code: CodeState}
	}
	if s.launcher == nil {
		return Response{Error: fmt.Sprintf("cannot boot %q: %s", name, s.noVMM), Code: CodeNoKVM}
	}
	if err := s.startKernel(ctx, k); err != nil {
		return Response{Error: fmt.Sprintf("boot %q: %v", name, err), Code: CodeBootFailed}
	}
	return Response{OK: true}
}

// windowTimeout bounds a window request (ping, info).
const windowTimeout = 5 * time.Second

func (s *Supervisor) windowRequest(req Request) Response {
	s.mu.Lock()
	w := s.win
	s.mu.Unlock()
	if w == nil {
		return Response{Error: "the shared window is not up", Code: CodeState}
	}
	if req.Action == ActionStat {
		return Response{OK: true, Window: &WindowReply{Peer: w.node.ID(), Stat: &WindowStat{Socket: w.socket, Node: w.node.Stats(), Peers: w.node.Peers()}}}
	}
	peer, ok := s.peerByName(w, req.Name)
	if !ok {
		return Response{Error: fmt.Sprintf("no kernel or window peer named %q (kernels: %s)", req.Name, s.names()), Code: CodeNotFound}
	}
	ctx, cancel := context.WithTimeout(context.Background(), windowTimeout)
	defer cancel()
	switch req.Action {
	case ActionPing:
		rtt, err := w.caller.Ping(ctx, peer)
		if err != nil {
			return s.windowErr(req.Name, peer, err)
		}
		return Response{OK: true, Window: &WindowReply{Peer: peer, RTTns: rtt.Nanoseconds()}}
	case ActionInfo:
		info, err := w.caller.Info(ctx, peer)
		if err != nil {
			return s.windowErr(req.Name, peer, err)
		}
		return Response{OK: true, Window: &WindowReply{Peer: peer, Info: &info}}
	}
	return Response{Error: fmt.Sprintf("unknown msg action %q (ping, info, stat)", req.Action), Code: CodeBadRequest}
}

// peerByName finds the window peer for name: a kernel's name is its
// kernel's peer id, online or not (a host peer cannot answer for it); any
// other name is an online host peer that checked in under it.
func (s *Supervisor) peerByName(w *windowHost, name string) (int, bool) {
	if k := s.cl.Kernel(name); k != nil {
		return k.Index, true
	}
	return w.node.PeerByName(name)
}

func (s *Supervisor) windowErr(name string, peer int, err error) Response {
	if errors.Is(err, msg.ErrPeerOffline) {
		return Response{Error: fmt.Sprintf("%q (peer %d) is not on the window: no agent has checked in for it", name, peer), Code: CodeState}
	}
	return Response{Error: fmt.Sprintf("%q (peer %d): %v", name, peer, err)}
}

func (s *Supervisor) names() string {
	var n []string
	for _, k := range s.cl.Kernels {
		n = append(n, k.Name)
	}
	return strings.Join(n, ", ")
}

// Status reports the cluster and every kernel.
func (s *Supervisor) Status() *Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &Status{
		Cluster:    s.cl.Name,
		ConfigPath: s.cl.ConfigPath,
		RunDir:     s.cl.RunDir,
		PID:        os.Getpid(),
		Started:    s.started,
		VMM:        s.vmmText(),
		Bridge:     s.cl.Network.Bridge,
		Subnet:     s.cl.Network.Subnet.String(),
		HostIP:     s.cl.Network.Host.String(),
		WindowSize: s.cl.Window.Size,
	}
	if s.win != nil {
		st.Window = s.win.socket
	}
	st.Winnet = s.wn.status(s.cl)          // winnet.go
	st.Migrations = s.win.migrations(s.cl) // migrations.go
	for _, k := range s.cl.Kernels {
		st.Kernels = append(st.Kernels, KernelStatus{
			Name:       k.Name,
			PeerID:     k.Index,
			State:      s.runs[k.Name].state,
			Boot:       string(k.Boot),
			Flavour:    string(k.Flavour),
			CPUs:       k.CPUs,
			Memory:     k.Memory,
			Backing:    string(k.Backing),
			IP:         k.IP.String(),
			MAC:        k.MAC.String(),
			Tap:        TapName(s.cl, k),
			Kernel:     k.KernelPath,
			ConsoleLog: k.ConsoleLog,
		})
		r, ks := s.runs[k.Name], &st.Kernels[len(st.Kernels)-1]
		ks.Since, ks.Boots, ks.Exit = r.since, r.boots, r.exit
		if r.machine != nil {
			info := r.machine.Info()
			ks.Machine = &info
		}
		if r.console != nil {
			ks.PTY = r.console.PTY()
		}
	}
	st.readHost()
	return st
}

func (s *Supervisor) vmmText() string {
	if s.launcher == nil {
		return "none: " + s.noVMM
	}
	return "kvm"
}

// console answers OpConsole: the kernel's PTY and its recent output, for
// `popvmm attach`.
func (s *Supervisor) consoleOf(name string) Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runs[name]
	if !ok {
		return Response{Error: fmt.Sprintf("cluster %q has no kernel %q (kernels: %s)", s.cl.Name, name, s.names()), Code: CodeNotFound}
	}
	if r.console == nil {
		return Response{Error: fmt.Sprintf("kernel %q is %s: it has no console until it boots (`%s`)", name, r.state, Command(s.runRoot, "boot", "-c", s.cl.Name, name)), Code: CodeState}
	}
	return Response{OK: true, Console: &ConsoleReply{PTY: r.console.PTY(), Replay: r.console.Replay(), State: r.state}}
}
