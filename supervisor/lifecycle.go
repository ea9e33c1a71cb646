package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/vtty"
)

// kernelRun is one kernel's run-time state: its console (kept across
// reboots, so the log and attach survive them) and its current machine.
type kernelRun struct {
	k       *cluster.Kernel
	state   State
	machine Machine
	console *vtty.Console
	exit    *machine.Exit // how the last run ended
	since   time.Time     // of the current state
	boots   int
	booted  chan struct{} // closed when a start attempt ends (running or failed)
	// winBoot is the current VM's run as the window's doorbells know it
	// (KernelStarted), while winUp.
	winBoot ipi.Boot
	winUp   bool
	// wnBoot is the same for the window network's doorbells, while wnUp.
	wnBoot ipi.Boot
	wnUp   bool
}

// errNoLauncher is boot's answer when the supervisor has no VMM.
var errNoLauncher = errors.New("this supervisor runs no VMM (KVM unusable here)")

// startKernel boots k: console, initramfs with its overlay, command line,
// launch. It returns once the VM runs (or failed to start); a goroutine
// then watches it until it ends.
func (s *Supervisor) startKernel(ctx context.Context, k *cluster.Kernel) error {
	s.mu.Lock()
	r := s.runs[k.Name]
	if s.launcher == nil {
		s.mu.Unlock()
		return errNoLauncher
	}
	if r.state == StateBooting || r.state == StateRunning {
		s.mu.Unlock()
		return fmt.Errorf("kernel %q is %s", k.Name, r.state)
	}
	r.setState(StateBooting)
	r.boots++
	s.mu.Unlock()

	m, err := s.launch(ctx, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		r.exit = &machine.Exit{Kind: machine.ExitCrash, Reason: "did not start: " + err.Error()}
		r.setState(StateCrashed)
		s.log.Error("kernel did not start", "kernel", k.Name, "err", err)
		return err
	}
	r.machine = m
	r.exit = nil
	r.setState(StateRunning)
	s.log.Info("kernel running", "kernel", k.Name, "cpus", k.CPUs, "boot", r.boots)
	s.watchers.Add(1)
	go s.watch(ctx, r, m)
	return nil
}

func (r *kernelRun) setState(st State) {
	r.state = st
	r.since = time.Now()
}

// launch opens the console (once per supervisor) and hands the kernel to
// the launcher.
func (s *Supervisor) launch(ctx context.Context, r *kernelRun) (Machine, error) {
	k := r.k
	if r.console == nil {
		c, err := vtty.OpenConsoleConfig(k.ConsoleLog, vtty.ConsoleConfig{LogMax: int64(k.ConsoleLogMax)})
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		r.console = c
	}
	initrd, err := os.ReadFile(k.InitrdPath)
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	overlay, err := os.ReadFile(filepath.Join(s.cl.RunDir, k.Name+".overlay.cpio"))
	if err != nil {
		return nil, fmt.Errorf("initramfs overlay: %w", err)
	}
	// The image, 0-3 NULs, the overlay: what validate sized
	// (guest.CheckInitramfs).
	boot := Boot{Initrd: guest.Initramfs(initrd, overlay), Cmdline: guest.Cmdline(s.cl, k, s.nested, s.log)}
	s.mu.Lock()
	w, wn := s.win, s.wn
	s.mu.Unlock()
	// The window network's doorbells, like the window's below, learn of
	// the VM before its vCPUs run.
	var wnb ipi.Boot
	if wn != nil {
		if wnb, err = wn.started(k.Index); err != nil {
			return nil, err
		}
		boot.Winnet = &wn.cfg
		boot.OnReset = func() { s.rebootedInVM(r, nil, wn) }
	}
	if w == nil {
		m, err := s.launcher.Launch(ctx, k, boot, r.console)
		s.launched(r, wn, wnb, err)
		return m, err
	}
	// The window's doorbells learn of the VM before its vCPUs run: its
	// eventfds are emptied and offered to the host peers again.
	wb, err := w.bells.KernelStarted(k.Index)
	if err != nil {
		s.launched(r, wn, wnb, err)
		return nil, err
	}
	boot.Window = w.attach()
	boot.OnReset = func() { s.rebootedInVM(r, w, wn) }
	m, err := s.launcher.Launch(ctx, k, boot, r.console)
	s.launched(r, wn, wnb, err)
	if err != nil {
		w.bells.KernelStopped(wb, w.node, true)
		return nil, err
	}
	s.mu.Lock()
	r.winBoot, r.winUp = wb, true
	s.mu.Unlock()
	return m, nil
}

// launched records the window network's boot of r's VM (err nil), or
// ends it (the VM did not start).
func (s *Supervisor) launched(r *kernelRun, wn *winnetHost, b ipi.Boot, err error) {
	if wn == nil {
		return
	}
	if err != nil {
		wn.stopped(b)
		return
	}
	s.mu.Lock()
	r.wnBoot, r.wnUp = b, true
	s.mu.Unlock()
}

// watch waits for m to end and moves the kernel to its next state:
// stopped for Stop and poweroff, crashed for a crash (the reason kept). A
// reboot inside the VM never ends it: the VM resets its platform and boots
// again in place (rebootedInVM), or ends as a crash under restart "never".
func (s *Supervisor) watch(ctx context.Context, r *kernelRun, m Machine) {
	defer s.watchers.Done()
	<-m.Done()
	m.Stop() // release what the VM held, whatever ended it
	ex := m.Exit()
	s.mu.Lock()
	if r.machine == m {
		r.machine = nil
	}
	r.exit = &ex
	switch ex.Kind {
	case machine.ExitCrash:
		r.setState(StateCrashed)
	default:
		r.setState(StateStopped)
	}
	s.mu.Unlock()
	s.peerGone(r, ex.Kind == machine.ExitCrash)
	switch {
	case ex.Kind == machine.ExitCrash:
		s.log.Error("kernel crashed; the others run on", "kernel", r.k.Name, "reason", ex.Reason, "console_log", r.k.ConsoleLog)
	default:
		s.log.Info("kernel stopped", "kernel", r.k.Name, "how", ex.Kind, "reason", ex.Reason)
	}
}

// rebootedInVM tells the window's doorbells that a kernel rebooted inside
// its VM (a reset with restart policy "always"): its incarnation ends, as
// peerGone does for a VM that ends, and a new one starts, as for a new VM,
// so its eventfds are emptied and the host peers see it leave and come
// back. A guest reboots as often as it likes: its lines go through
// guestLog.
func (s *Supervisor) rebootedInVM(r *kernelRun, w *windowHost, wn *winnetHost) {
	if wn != nil {
		s.mu.Lock()
		b, up := r.wnBoot, r.wnUp
		s.mu.Unlock()
		if up {
			wn.stopped(b)
		}
		nb, err := wn.started(r.k.Index)
		s.mu.Lock()
		r.wnBoot, r.wnUp = nb, err == nil
		s.mu.Unlock()
		if err != nil {
			s.guestLog.Error("window network: the rebooted kernel could not rejoin", "kernel", r.k.Name, "err", err)
		}
	}
	if w == nil {
		return
	}
	s.mu.Lock()
	wb, up := r.winBoot, r.winUp
	s.mu.Unlock()
	if up {
		w.bells.KernelStopped(wb, w.node, false)
	}
	nb, err := w.bells.KernelStarted(r.k.Index)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		r.winUp = false
		s.guestLog.Error("window: the rebooted kernel could not rejoin", "kernel", r.k.Name, "err", err)
		return
	}
	r.winBoot, r.winUp = nb, true
	s.guestLog.Info("kernel rebooted inside its VM; the window knows it as a new incarnation", "kernel", r.k.Name)
}

// peerGone tells the window at once that a kernel's VM is gone (its vCPUs
// are out of KVM_RUN for good), rather than after its heartbeat times out:
// the doorbells mark its incarnation crashed or offline in the peer table
// and tell the host peers it left (KernelStopped); the window network
// marks it down in its section.
func (s *Supervisor) peerGone(r *kernelRun, crashed bool) {
	s.mu.Lock()
	w, wb, up := s.win, r.winBoot, r.winUp
	wn, wnb, wnUp := s.wn, r.wnBoot, r.wnUp
	r.winUp, r.wnUp = false, false
	s.mu.Unlock()
	if w != nil && up {
		w.bells.KernelStopped(wb, w.node, crashed)
	}
	if wn != nil && wnUp {
		wn.stopped(wnb)
	}
}

// bootAll starts every `boot = "up"` kernel concurrently and waits for all
// of them to run or fail.
func (s *Supervisor) bootAll(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.cl.Kernels))
	for i, k := range s.cl.Kernels {
		if k.Boot != cluster.BootUp {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.startKernel(ctx, k); err != nil {
				errs[i] = fmt.Errorf("kernel %q: %w", k.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stopAll stops every machine concurrently, waits for the watchers, and
// closes the consoles.
func (s *Supervisor) stopAll() {
	s.mu.Lock()
	var ms []Machine
	for _, r := range s.runs {
		if r.machine != nil {
			ms = append(ms, r.machine)
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Stop(); err != nil {
				s.log.Error("stop VM", "err", err)
			}
		}()
	}
	wg.Wait()
	s.watchers.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.runs {
		if r.console != nil {
			r.console.Close()
			r.console = nil
		}
	}
}
