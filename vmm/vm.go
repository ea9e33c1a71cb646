package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/kvm"
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

// VM is one kernel running under KVM: guest memory, the in-kernel irqchip
// and PIT, one pinned OS thread per vCPU, and the port-I/O and MMIO buses
// devices are attached to. Create it with New, attach devices to PIO and
// MMIO (raising interrupts through IRQLine), then Start; Stop and Close
// end it. Its methods are safe for concurrent use.
type VM struct {
	cfg Config
	log *slog.Logger
	// guestLog takes the lines a guest can repeat at will, one per
	// reboot (a reboot loop under RestartAlways): at most
	// ratelog.DefaultBurst a minute each, the rest counted, because the
	// supervisor's log is never rotated.
	guestLog  *ratelog.Logger
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
	ending    Ending
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
		// KVM emulates the LAPIC's TSC-deadline mode wherever it has
		// KVM_CAP_TSC_DEADLINE_TIMER, but before Linux 6.14 does not
		// say so in its supported CPUID (api.rst, KVM_GET_SUPPORTED_CPUID).
		if n, err := sys.Extension(kvm.CapTSCDeadline); err == nil && n > 0 {
			AddTSCDeadline(e)
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
	log, guestLog := vmLogs(cfg)
	v := &VM{cfg: cfg, log: log, guestLog: guestLog, state: StateCreated, done: make(chan struct{}),
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
	v.guestLog.Debug("machine", "vm_irqchip_pit_slots", t0.Sub(tVM), "load", t1.Sub(t0), "vcpus", time.Since(t1))
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

// Start runs the vCPUs: each on its own OS thread (never the process's
// main thread), pinned to its host core and named. It returns once every thread is pinned (an error if one
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

// exit is how platform devices (i8042 reset, pvpanic) end the current boot.
func (v *VM) exit(e Ending, reason string) {
	v.mu.Lock()
	m := v.m
	v.mu.Unlock()
	if m != nil {
		m.finish(e, reason)
	}
}

// watch waits for the running machine's vCPU threads to end, reboots on a
// reset when the restart policy says so, and otherwise records the final
// state.
func (v *VM) watch(m *machine) {
	defer v.guestLog.Flush() // the count of held-back lines, once this VM has ended
	for {
		m.wg.Wait()
		out := m.result()
		v.mu.Lock()
		if out.ending == EndingReset && v.cfg.Restart == RestartAlways && !v.hostStop {
			v.mu.Unlock()
			v.logReboot(out.reason)
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
				out = outcome{EndingCrash, fmt.Sprintf("%s; reboot failed: %v", out.reason, err)}
			} else {
				out = outcome{EndingHostStop, hostStopReason}
			}
		}
		if out.ending == EndingReset && v.hostStop {
			// The host's stop came while the guest was resetting.
			out = outcome{EndingHostStop, hostStopReason}
		}
		v.state, v.reason, v.ending, v.ended = StateStopped, out.reason, out.ending, time.Now()
		switch out.ending {
		case EndingCrash:
			v.state = StateCrashed
		case EndingReset:
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

// vmLogs are a VM's loggers: cfg.Log (nil: discard) with the kernel's
// name, and a rate-limited one over it for what the guest can repeat.
func vmLogs(cfg Config) (*slog.Logger, *ratelog.Logger) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("kernel", cfg.Name)
	return log, ratelog.Default(log)
}

// logReboot logs a guest's reset that the VM reboots: rate-limited, as a
// guest rebooting in a loop would otherwise write a line per reboot to
// the supervisor's log for as long as it runs.
func (v *VM) logReboot(reason string) {
	v.guestLog.Info("rebooting", "reason", reason)
}

// hostStopReason is Status.Reason after Stop (Status.Ending says
// EndingHostStop; read that, not this text).
const hostStopReason = "stopped by the host"

// Stop stops the VM: every vCPU is kicked out of KVM_RUN and its thread
// ends; state becomes stopped (or crashed, if the guest crashed first). It
// returns when the vCPU threads are gone. Calling it again is harmless.
func (v *VM) Stop() { v.end(EndingHostStop, hostStopReason) }

// Crash ends the VM as crashed with reason, for a failure seen from
// outside it (a kernel panic line on its console, a device back-end that
// died). Like Stop it returns when the vCPU threads are gone; on a VM
// that has already ended it does nothing.
func (v *VM) Crash(reason string) { v.end(EndingCrash, reason) }

// end ends the VM from the host with e (EndingHostStop or EndingCrash);
// a guest's own ending that came first wins.
func (v *VM) end(e Ending, reason string) {
	v.mu.Lock()
	switch v.state {
	case StateCreated:
		v.state, v.reason, v.ending, v.ended = StateStopped, "stopped before it started", EndingHostStop, time.Now()
		if e == EndingCrash {
			v.state, v.reason, v.ending = StateCrashed, reason, EndingCrash
		}
		close(v.done)
		v.mu.Unlock()
		return
	case StateRunning:
		v.hostStop = true
		m := v.m
		v.mu.Unlock()
		m.finish(e, reason)
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
