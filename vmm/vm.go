package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/kvm"
	"golang.org/x/sys/unix"
)

// State is where a VM is in its life.
type State string

// States. A VM is created by New, running from Start until the guest
// powers off, crashes or the host stops it, then stopped or crashed for
// good (Status keeps the reason).
const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StateCrashed State = "crashed"
)

// kickSignal interrupts a vCPU thread's KVM_RUN. The Go runtime already
// handles SIGURG (its preemption signal) and tolerates spurious ones, and
// KVM_RUN returns EINTR rather than restarting.
const kickSignal = unix.SIGURG

// VM is one kernel running under KVM: guest memory, the in-kernel irqchip
// and PIT, one pinned OS thread per vCPU, and the port-I/O and MMIO buses
// devices are attached to. Create it with New, attach devices to PIO and
// MMIO (raising interrupts through IRQLine), then Start; Stop and Close
// end it. Its methods are safe for concurrent use.
type VM struct {
	cfg       Config
	log       *slog.Logger
	sys       *kvm.System
	cpuid     []kvm.CPUIDEntry
	ram       *guestRAM
	pio, mmio *bus.Bus
	stats     []*vcpuStats

	// kmu guards kvm, the current KVM VM, for interrupt injection from any
	// goroutine; it is replaced on a reboot and nil once closed.
	kmu sync.RWMutex
	kvm *kvm.VM

	mu        sync.Mutex
	state     State
	reason    string
	started   time.Time
	ended     time.Time
	resets    int
	m         *machine
	hostStop  bool
	closed    bool
	done      chan struct{}
	msiRoutes map[uint32]kvm.Route
	irqfds    map[[2]int]bool // {fd, gsi}
	ioevents  []kvm.IOEvent
	extra     extraSlots // AddMemory's slots (slots.go)
	onReset   []func()   // OnReset's hooks, in registration order
}

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

type outcome struct {
	action Action
	reason string
}

type vcpu struct {
	index int
	k     *kvm.VCPU
	st    *vcpuStats
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

// cpuidCache holds KVM_GET_SUPPORTED_CPUID, which cannot change while
// the process runs; every VM filters its own copy.
var cpuidCache struct {
	sync.Mutex
	entries []kvm.CPUIDEntry
}

func supportedCPUID(sys *kvm.System) ([]kvm.CPUIDEntry, error) {
	cpuidCache.Lock()
	defer cpuidCache.Unlock()
	if cpuidCache.entries == nil {
		e, err := sys.SupportedCPUID()
		if err != nil {
			return nil, err
		}
		cpuidCache.entries = e
	}
	return cpuidCache.entries, nil
}

// New creates a VM from cfg: checks cfg, opens /dev/kvm, allocates and
// maps guest memory, creates the KVM VM with its irqchip, PIT, memory
// slots and vCPUs, and loads the kernel. Nothing runs until Start. On
// error everything done so far is undone.
func New(cfg Config) (_ *VM, err error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("vm %q: %w", cfg.Name, err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("kernel", cfg.Name)
	v := &VM{cfg: cfg, log: log, state: StateCreated, done: make(chan struct{}),
		msiRoutes: map[uint32]kvm.Route{}, irqfds: map[[2]int]bool{}}
	v.pio, v.mmio = bus.New("pio", log), bus.New("mmio", log)
	defer func() {
		if err != nil {
			v.release()
			err = fmt.Errorf("vm %q: %w", cfg.Name, err)
		}
	}()
	for i, cpu := range cfg.CPUs {
		comm, full := ThreadName(cfg.Name, i)
		v.stats = append(v.stats, &vcpuStats{index: i, cpu: cpu, comm: comm, full: full})
	}
	t0 := time.Now()
	if v.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	if v.cpuid, err = supportedCPUID(v.sys); err != nil {
		return nil, err
	}
	t1 := time.Now()
	if v.ram, err = allocRAM(&v.cfg); err != nil {
		return nil, err
	}
	t2 := time.Now()
	if err := v.pio.Insert(&i8042{exit: v.exit}, "i8042", I8042Port, 1); err != nil {
		return nil, err
	}
	if err := v.pio.Insert(&pvpanic{exit: v.exit}, "pvpanic", PVPanicPort, 1); err != nil {
		return nil, err
	}
	if v.m, err = v.newMachine(); err != nil {
		return nil, err
	}
	log.Debug("created", "kvm_open_cpuid", t1.Sub(t0), "memory", t2.Sub(t1), "machine", time.Since(t2))
	return v, nil
}

// Name is the kernel's name.
func (v *VM) Name() string { return v.cfg.Name }

// PIO is the port-I/O bus; insert devices before Start.
func (v *VM) PIO() *bus.Bus { return v.pio }

// MMIO is the MMIO bus (addresses without RAM or an in-kernel device).
func (v *VM) MMIO() *bus.Bus { return v.mmio }

// Memory is guest-physical memory, for devices that do DMA.
func (v *VM) Memory() *guestmem.Memory { return v.ram.mem }

// Done is closed once the VM has stopped or crashed for good.
func (v *VM) Done() <-chan struct{} { return v.done }

// newMachine builds one boot's KVM VM: identity map and TSS, irqchip and
// PIT, memory slots, GSI routes and eventfds registered so far, the
// kernel and MP table in memory, and the vCPUs set up to run it.
func (v *VM) newMachine() (_ *machine, err error) {
	tVM := time.Now()
	kv, err := v.sys.CreateVM()
	if err != nil {
		return nil, err
	}
	m := &machine{vm: kv}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	if err := kv.SetIdentityMapAddr(identityMapAddr); err != nil {
		return nil, err
	}
	if err := kv.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if err := kv.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err := kv.CreatePIT2(); err != nil {
		return nil, err
	}
	if err := v.ram.slots(kv); err != nil {
		return nil, err
	}
	if err := v.extra.register(kv); err != nil {
		return nil, err
	}
	if len(v.msiRoutes) > 0 {
		if err := kv.SetGSIRouting(v.routes()); err != nil {
			return nil, err
		}
	}
	for k := range v.irqfds {
		if err := kv.IRQFD(k[0], uint32(k[1])); err != nil {
			return nil, err
		}
	}
	for _, e := range v.ioevents {
		if err := kv.IOEventFD(e); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	entry, err := v.load()
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	for i := range v.cfg.CPUs {
		k, err := kv.CreateVCPU(i)
		if err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", i, err)
		}
		m.vcpus = append(m.vcpus, &vcpu{index: i, k: k, st: v.stats[i]})
		if err := v.setupVCPU(k, i, entry); err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", i, err)
		}
	}
	v.kmu.Lock()
	v.kvm = kv
	v.kmu.Unlock()
	v.log.Debug("machine", "vm_irqchip_pit_slots", t0.Sub(tVM), "load", t1.Sub(t0), "vcpus", time.Since(t1))
	return m, nil
}

// load writes the kernel (or test binary) and the MP table into memory.
func (v *VM) load() (boot.Entry, error) {
	b, mem, l := v.cfg.Boot, v.ram.mem, v.cfg.Layout
	var e boot.Entry
	var err error
	switch b.Format {
	case FormatBzImage:
		e, err = boot.LoadBzImage(mem, l, b.Image, b.Cmdline, b.Initrd)
	case FormatPVH:
		e, err = boot.LoadPVH(mem, l, b.Image, b.Cmdline, b.Initrd)
	case FormatFlat:
		e, err = boot.LoadFlat(mem, l, b.Image)
	default:
		err = fmt.Errorf("boot format %v", b.Format)
	}
	if err != nil {
		return boot.Entry{}, err
	}
	if err := boot.WriteMPTable(mem, len(v.cfg.CPUs)); err != nil {
		return boot.Entry{}, err
	}
	return e, nil
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

// Start runs the vCPUs: each on its own OS thread, pinned to its host
// core and named. It returns once every thread is pinned (an error if one
// could not be, with none left running).
func (v *VM) Start() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != StateCreated || v.closed {
		return fmt.Errorf("vm %q: start in state %s", v.cfg.Name, v.state)
	}
	if err := v.startMachine(v.m); err != nil {
		return fmt.Errorf("vm %q: %w", v.cfg.Name, err)
	}
	v.state, v.started = StateRunning, time.Now()
	v.log.Info("running", "vcpus", len(v.cfg.CPUs), "cpus", v.cfg.CPUs)
	go v.watch(v.m)
	return nil
}

func (v *VM) startMachine(m *machine) error {
	m.gate = make(chan struct{})
	ready := make(chan error, len(m.vcpus))
	for _, c := range m.vcpus {
		m.wg.Add(1)
		go v.runVCPU(m, c, ready)
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

// runVCPU is a vCPU thread: locked to its OS thread for life (never
// unlocked, so the pinned and renamed thread exits with the goroutine and
// is not reused), pinned, named, then KVM_RUN and exit handling until the
// machine stops.
func (v *VM) runVCPU(m *machine, c *vcpu, ready chan<- error) {
	defer m.wg.Done()
	runtime.LockOSThread()
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
			m.finish(Crash, fmt.Sprintf("vCPU %d: KVM_RUN: %v", c.index, err))
			return
		}
		act, exit, err := HandleExit(run, v.pio, v.mmio)
		c.st.count(exit.Reason)
		switch act {
		case Continue, Halt:
		case Stop:
			m.finish(Stop, "guest powered off")
		case Reset:
			m.finish(Reset, "reset requested by the guest")
		case Crash:
			reason := fmt.Sprintf("vCPU %d: %s", c.index, exit.Detail)
			if err != nil {
				reason += ": " + err.Error()
			}
			m.finish(Crash, reason+c.snapshot())
		}
	}
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
func (m *machine) finish(a Action, reason string) {
	// outMu is held throughout: close takes it too, so a kick can never
	// write into a kvm_run page that a reboot has unmapped meanwhile (a
	// host Stop racing a guest reset).
	m.outMu.Lock()
	defer m.outMu.Unlock()
	if !m.outSet {
		m.outSet, m.outcome = true, outcome{a, reason}
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

// exit is how platform devices (i8042 reset, pvpanic) end the current boot.
func (v *VM) exit(a Action, reason string) {
	v.mu.Lock()
	m := v.m
	v.mu.Unlock()
	if m != nil {
		m.finish(a, reason)
	}
}

// watch waits for the running machine's vCPU threads to end, reboots on a
// reset when the restart policy says so, and otherwise records the final
// state.
func (v *VM) watch(m *machine) {
	for {
		m.wg.Wait()
		out := m.result()
		v.mu.Lock()
		if out.action == Reset && v.cfg.Restart == RestartAlways && !v.hostStop {
			v.mu.Unlock()
			v.log.Info("rebooting", "reason", out.reason)
			m2, err := v.reboot(m)
			v.mu.Lock()
			if err == nil && !v.hostStop {
				v.m, v.resets = m2, v.resets+1
				if err = v.startMachine(m2); err == nil {
					v.mu.Unlock()
					m = m2
					continue
				}
			}
			if m2 != nil {
				v.m = m2
			}
			if err != nil {
				out = outcome{Crash, fmt.Sprintf("%s; reboot failed: %v", out.reason, err)}
			} else {
				out = outcome{Stop, "stopped by the host"}
			}
		}
		if out.action == Reset && v.hostStop {
			// The host's stop came while the guest was resetting.
			out = outcome{Stop, "stopped by the host"}
		}
		v.state, v.reason, v.ended = StateStopped, out.reason, time.Now()
		switch out.action {
		case Crash:
			v.state = StateCrashed
		case Reset:
			v.state = StateCrashed
			v.reason = out.reason + " (restart policy: never)"
		}
		if v.state == StateCrashed {
			v.log.Warn("crashed", "reason", v.reason)
		} else {
			v.log.Info("stopped", "reason", v.reason)
		}
		close(v.done)
		v.mu.Unlock()
		return
	}
}

// OnReset registers f to run at every reboot inside the VM (a guest reset
// under restart policy always), as a platform reset of the devices. Hooks
// run in registration order on the goroutine that reboots, after every
// vCPU thread of the ended boot has stopped and while that boot's KVM VM
// still exists (a hook may lower interrupt lines and remove eventfds and
// memory slots it added), before guest RAM is cleared and the next boot's
// KVM VM is built: a device must have stopped touching guest memory when
// its hook returns. A hook must not call Stop, Crash or Close.
func (v *VM) OnReset(f func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.onReset = append(v.onReset, f)
}

// runResetHooks runs OnReset's hooks in order.
func (v *VM) runResetHooks() {
	v.mu.Lock()
	hooks := v.onReset
	v.mu.Unlock()
	for _, f := range hooks {
		f()
	}
}

// reboot replaces machine old (its threads have ended) by a fresh one
// with the devices reset (OnReset), RAM cleared and the kernel loaded
// again.
func (v *VM) reboot(old *machine) (*machine, error) {
	v.runResetHooks()
	v.kmu.Lock()
	v.kvm = nil
	err := old.close()
	v.kmu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := v.ram.clear(); err != nil {
		return nil, err
	}
	return v.newMachine()
}

// Stop stops the VM: every vCPU is kicked out of KVM_RUN and its thread
// ends; state becomes stopped (or crashed, if the guest crashed first). It
// returns when the vCPU threads are gone. Calling it again is harmless.
func (v *VM) Stop() { v.end(Stop, "stopped by the host") }

// Crash ends the VM as crashed with reason, for a failure seen from
// outside it (a kernel panic line on its console, a device back-end that
// died). Like Stop it returns when the vCPU threads are gone; on a VM
// that has already ended it does nothing.
func (v *VM) Crash(reason string) { v.end(Crash, reason) }

func (v *VM) end(a Action, reason string) {
	v.mu.Lock()
	switch v.state {
	case StateCreated:
		v.state, v.reason, v.ended = StateStopped, "stopped before it started", time.Now()
		if a == Crash {
			v.state, v.reason = StateCrashed, reason
		}
		close(v.done)
		v.mu.Unlock()
		return
	case StateRunning:
		v.hostStop = true
		m := v.m
		v.mu.Unlock()
		m.finish(a, reason)
		<-v.done
		return
	}
	v.mu.Unlock()
}

// Close stops the VM and releases everything it holds: vCPU and VM fds,
// kvm_run pages, guest memory and its memfd, /dev/kvm. Interrupt lines
// handed out become no-ops. Calling it again is harmless.
func (v *VM) Close() error {
	v.Stop()
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	v.mu.Unlock()
	return v.release()
}

// release frees what New allocated (also when New fails half-way).
func (v *VM) release() error {
	var errs []error
	v.kmu.Lock()
	v.kvm = nil
	if v.m != nil {
		errs = append(errs, v.m.close())
		v.m = nil
	}
	v.kmu.Unlock()
	if v.ram != nil {
		errs = append(errs, v.ram.close())
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
	}
	return errors.Join(errs...)
}
