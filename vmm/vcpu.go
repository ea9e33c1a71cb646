package vmm

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/kvm"
	"golang.org/x/sys/unix"
)

// kickSignal interrupts a vCPU thread's KVM_RUN. The Go runtime already
// handles SIGURG (its preemption signal) and tolerates spurious ones, and
// KVM_RUN returns EINTR rather than restarting.
const kickSignal = unix.SIGURG

// machine is one boot's KVM objects: the KVM VM and its vCPUs. A reboot
// replaces it; guest memory and devices outlive it.
type machine struct {
	vm       *kvm.VM
	vcpus    []*vcpu
	stopping atomic.Bool
	gate     chan struct{}
	wg       sync.WaitGroup

	outMu   sync.Mutex
	outSet  bool
	outcome outcome
	closed  bool // vCPUs and VM closed (kvm_run pages unmapped); under outMu
}

// outcome is why a machine's vCPUs stopped: the first reason given wins.
type outcome struct {
	ending Ending
	reason string
}

type vcpu struct {
	index int
	k     *kvm.VCPU
	st    *vcpuStats
	// last is the vCPU's last exit that did not end the machine, for a
	// crash report; only its own thread touches it.
	last Exit
}

// vcpuStats is what status shows of one vCPU; it outlives reboots.
type vcpuStats struct {
	index      int
	cpu        int
	comm, full string
	tid        atomic.Int64
	exits      [maxExitReason + 1]atomic.Uint64
}

// maxExitReason bounds the per-reason exit counters; higher reasons are
// counted in the last one.
const maxExitReason = 63

func (s *vcpuStats) count(reason uint32) {
	s.exits[min(reason, maxExitReason)].Add(1)
}

// setupVCPU gives vCPU i its CPUID and LAPIC pins; the boot vCPU gets the
// entry registers, the others wait for INIT-SIPI from it.
func (v *VM) setupVCPU(k *kvm.VCPU, i int, entry boot.Entry) error {
	if err := k.SetCPUID(FilterCPUID(v.cpuid, i, len(v.cfg.CPUs))); err != nil {
		return err
	}
	l, err := k.LAPIC()
	if err != nil {
		return err
	}
	SetupLINT(l)
	if err := k.SetLAPIC(l); err != nil {
		return err
	}
	if i != 0 {
		return k.SetMPState(kvm.MPStateUninitialized)
	}
	s, err := k.Sregs()
	if err != nil {
		return err
	}
	var r kvm.Regs
	BootRegs(entry, s, &r)
	if err := k.SetSregs(s); err != nil {
		return err
	}
	return k.SetRegs(&r)
}

// startMachine starts one thread per vCPU of m (never the process's main
// thread: offMainThread) and returns once each is pinned and named, or
// with the errors of those that could not be, none left running.
func (v *VM) startMachine(m *machine) error {
	m.gate = make(chan struct{})
	ready := make(chan error, len(m.vcpus))
	for _, c := range m.vcpus {
		m.wg.Add(1)
		go offMainThread(func() { v.runVCPU(m, c, ready) })
	}
	var errs []error
	for range m.vcpus {
		if err := <-ready; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		m.stopping.Store(true)
		close(m.gate)
		m.wg.Wait()
		return errors.Join(errs...)
	}
	close(m.gate)
	return nil
}

// runVCPU is a vCPU thread. It runs under offMainThread, so its goroutine
// is locked to an OS thread other than the main one, for life (never
// unlocked, so the pinned and renamed thread exits with the goroutine and
// is not reused); it pins and names that thread, then runs KVM_RUN and
// exit handling until the machine stops.
func (v *VM) runVCPU(m *machine, c *vcpu, ready chan<- error) {
	defer m.wg.Done()
	err := pinThread(c.st.cpu)
	if err == nil {
		if err = setThreadName(c.st.comm); err != nil {
			err = fmt.Errorf("name thread %q: %w", c.st.comm, err)
		}
	}
	if err != nil {
		err = fmt.Errorf("vCPU %d: %w", c.index, err)
	}
	c.st.tid.Store(int64(unix.Gettid()))
	defer c.st.tid.Store(0)
	ready <- err
	<-m.gate
	if err != nil {
		return
	}
	run := c.k.RunData()
	for !m.stopping.Load() {
		if err := c.k.Run(); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				c.st.count(ExitIntr)
				continue
			}
			m.finish(EndingCrash, fmt.Sprintf("vCPU %d: KVM_RUN: %v", c.index, err))
			return
		}
		act, exit, err := HandleExit(run, v.pio, v.mmio)
		c.st.count(exit.Reason)
		switch act {
		case ActionContinue, ActionHalt:
			c.last = exit
		case ActionPowerOff:
			m.finish(EndingPowerOff, "guest powered off")
		case ActionReset:
			m.finish(EndingReset, "reset requested by the guest")
		case ActionCrash:
			m.finish(EndingCrash, v.crashReport(c, exit, err))
		}
	}
}

// crashReport is the reason of a crash seen by vCPU c: what ended it,
// then what is left to say where the guest was, since after a triple
// fault under AMD SVM KVM has already reset the vCPU:
//
//	vCPU 0: triple fault (RIP=... or "registers lost: ..."); events: ...;
//	last exit: io out 0x3f8 (1 byte); console: "[    0.52] MPTABLE: ..."
//
// the registers (snapshot), the exception, interrupt and NMI KVM still
// holds as injected or pending (KVM_GET_VCPU_EVENTS; empty after an SVM
// reset), the vCPU's last exit before the crash (its last port or MMIO
// access), and the console's last line (Config.ConsoleTail).
func (v *VM) crashReport(c *vcpu, exit Exit, err error) string {
	reason := fmt.Sprintf("vCPU %d: %s", c.index, exit.Detail)
	if err != nil {
		reason += ": " + err.Error()
	}
	reason += c.snapshot()
	if ev, err := c.k.Events(); err == nil {
		if s := eventsString(ev); s != "" {
			reason += "; events: " + s
		}
	}
	if c.last.Reason != 0 || c.last.Size != 0 {
		reason += "; last exit: " + c.last.String()
	}
	if v.cfg.ConsoleTail != nil {
		if line := lastLine(v.cfg.ConsoleTail()); line != "" {
			reason += fmt.Sprintf("; console: %q", line)
		}
	}
	return reason
}

// eventsString lists what e holds: "exception 14 (error 0x2) injected,
// interrupt 0x20 pending, nmi pending"; "" when nothing.
func eventsString(e *kvm.Events) string {
	var parts []string
	if e.E.Inject != 0 || e.E.Pending != 0 {
		s := fmt.Sprintf("exception %d", e.E.Nr)
		if e.E.HadErrorCode != 0 {
			s += fmt.Sprintf(" (error %#x)", e.E.ErrorCode)
		}
		if e.E.Inject != 0 {
			s += " injected"
		} else {
			s += " pending"
		}
		if e.ExceptionHasPayload != 0 {
			s += fmt.Sprintf(" payload %#x", e.ExceptionPayload)
		}
		parts = append(parts, s)
	}
	if e.I.Inject != 0 {
		parts = append(parts, fmt.Sprintf("interrupt %#x injected", e.I.Nr))
	}
	if e.N.Inject != 0 {
		parts = append(parts, "nmi injected")
	} else if e.N.Pending != 0 {
		parts = append(parts, "nmi pending")
	}
	if e.TripleFault != 0 {
		parts = append(parts, "triple fault pending")
	}
	return strings.Join(parts, ", ")
}

// lastLine is the last non-blank line of console output b, without
// control characters, at most 200 bytes (its end).
func lastLine(b []byte) string {
	lines := strings.Split(strings.ReplaceAll(string(b), "\r", "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, lines[i])
		if l = strings.TrimSpace(l); l != "" {
			if len(l) > 200 {
				l = l[len(l)-200:]
			}
			return l
		}
	}
	return ""
}

// snapshot is the vCPU's state at a crash, for the crash reason:
// " (RIP=... RSP=... CR0=... CR2=... CR3=... CR4=... EFER=...)", or ""
// when KVM_GET_REGS or KVM_GET_SREGS fails. After a triple fault on Intel
// (VMX) they are those of the instruction that faulted the third time; on
// AMD (SVM) KVM has already reset the vCPU (the VMCB is undefined after a
// shutdown intercept: arch/x86/kvm/svm/svm.c shutdown_interception), and
// the snapshot says so instead of showing the reset state.
func (c *vcpu) snapshot() string {
	r, err := c.k.Regs()
	if err != nil {
		return ""
	}
	s, err := c.k.Sregs()
	if err != nil {
		return ""
	}
	if r.RIP == 0xfff0 && s.CS.Selector == 0xf000 && s.CR0&1 == 0 {
		return " (registers lost: KVM reset the vCPU, as it does on AMD SVM)"
	}
	return fmt.Sprintf(" (RIP=%#x RSP=%#x RFLAGS=%#x CS=%#x CR0=%#x CR2=%#x CR3=%#x CR4=%#x EFER=%#x IDT=%#x/%d)",
		r.RIP, r.RSP, r.RFLAGS, s.CS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER, s.IDT.Base, s.IDT.Limit)
}

// finish records why the machine stops (the first reason wins) and kicks
// every vCPU out of KVM_RUN.
func (m *machine) finish(e Ending, reason string) {
	// outMu is held throughout: close takes it too, so a kick can never
	// write into a kvm_run page that a reboot has unmapped meanwhile (a
	// host Stop racing a guest reset).
	m.outMu.Lock()
	defer m.outMu.Unlock()
	if !m.outSet {
		m.outSet, m.outcome = true, outcome{e, reason}
	}
	m.stopping.Store(true)
	if m.closed {
		return
	}
	pid := os.Getpid()
	for _, c := range m.vcpus {
		c.k.SetImmediateExit(true)
		// A thread that has just exited may have its TID reused by another
		// thread of this process; it then gets a harmless SIGURG.
		if tid := c.st.tid.Load(); tid != 0 {
			unix.Tgkill(pid, int(tid), kickSignal)
		}
	}
}

func (m *machine) result() outcome {
	m.outMu.Lock()
	defer m.outMu.Unlock()
	return m.outcome
}

// close releases the machine's vCPUs and KVM VM; its threads have exited.
func (m *machine) close() error {
	m.outMu.Lock()
	defer m.outMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, c := range m.vcpus {
		errs = append(errs, c.k.Close())
	}
	m.vcpus = nil
	errs = append(errs, m.vm.Close())
	return errors.Join(errs...)
}
