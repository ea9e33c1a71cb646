package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vtty"
)

// COM1, where every kernel's serial console is: ports 0x3f8-0x3ff, ISA
// IRQ 4 (the MP table routes it through the in-kernel IOAPIC).
const (
	com1Port = 0x3f8
	com1IRQ  = 4
)

// vmLauncher boots kernels as KVM VMs (package vmm) with their serial
// console on COM1. It is where the supervisor wires devices to a VM: vmm
// knows no device, the devices know no VM.
type vmLauncher struct {
	log *slog.Logger
	net netState // the cluster's bridge while it is up (net.go)
}

// NewVMLauncher is the launcher that boots kernels as KVM VMs.
func NewVMLauncher(log *slog.Logger) (Launcher, error) {
	return &vmLauncher{log: log}, nil
}

// Launch builds k's VM, attaches its UART to console, starts it, and
// returns once its vCPUs run. A failure undoes everything.
func (l *vmLauncher) Launch(ctx context.Context, k *cluster.Kernel, b Boot, console *vtty.Console) (Machine, error) {
	image, err := os.ReadFile(k.KernelPath)
	if err != nil {
		return nil, fmt.Errorf("kernel image: %w", err)
	}
	// The file as it is now decides (it may have been rebuilt since
	// validation): an ELF boots through its PVH note, anything else as a
	// bzImage, whose loader checks its header.
	format := vmm.FormatBzImage
	if strings.HasPrefix(string(image[:min(4, len(image))]), "\x7fELF") {
		format = vmm.FormatPVH
	}
	restart := vmm.RestartAlways
	if k.Restart == cluster.RestartNever {
		restart = vmm.RestartNever
	}
	var pt []vmm.Passthrough
	for _, p := range k.Passthrough {
		pt = append(pt, vmm.Passthrough{Path: p.Path, Offset: p.Offset, Size: p.Size, GPA: p.GuestAddress, ReadOnly: p.ReadOnly})
	}
	m := &vmMachine{done: make(chan struct{})}
	v, err := vmm.New(vmm.Config{
		Name: k.Name, Layout: k.Layout, CPUs: k.CPUs,
		HugePageSize: hugePage(k.Backing), NUMANode: k.NUMANode, Mlock: k.Mlock,
		Passthrough: pt, Restart: restart, Log: l.log,
		Boot: vmm.Boot{Format: format, Image: image, Initrd: b.Initrd, Cmdline: b.Cmdline},
	})
	if err != nil {
		return nil, err
	}
	m.vm = v
	uart := vtty.NewUART(&panicWatch{w: console, onPanic: m.panicked, onInit: m.initReached}, v.IRQLine(com1IRQ))
	if err := v.PIO().Insert(uart, "com1", com1Port, 8); err != nil {
		v.Close()
		return nil, err
	}
	v.OnReset(uart.Reset) // a reboot in the VM finds COM1 as at power-on
	if m.devs, err = l.attachDevices(v, k); err != nil {
		v.Close()
		return nil, err
	}
	if b.Window != nil {
		if m.devs.win, err = attachWindow(v, m.devs.pci, k, b.Window, l.log.With("kernel", k.Name)); err != nil {
			m.devs.stop(v)
			return nil, err
		}
	}
	if b.OnReset != nil {
		v.OnReset(b.OnReset) // after the devices' own reset hooks
	}
	ictx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	if err := v.Start(); err != nil {
		cancel()
		m.devs.stop(v)
		return nil, err
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); console.Input(ictx, uart.Receive) }()
	go func() {
		defer m.wg.Done()
		select {
		case <-v.Done():
		case <-ictx.Done():
		}
		close(m.done)
	}()
	return m, nil
}

func hugePage(b cluster.Backing) uint64 {
	if b == cluster.BackingMemfd {
		return 0
	}
	return b.PageSize()
}

// vmMachine is a running vmm.VM as a Machine.
type vmMachine struct {
	vm     *vmm.VM
	devs   *vmDevices // PCI and the NIC (net.go)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}

	mu       sync.Mutex
	panicMsg string
	initAt   time.Time
	stopOnce sync.Once
	stopErr  error
}

func (m *vmMachine) Done() <-chan struct{} { return m.done }

// panicked is called (once, off the vCPU thread) when the guest printed a
// kernel panic: the VM is stopped and counts as crashed with that line.
func (m *vmMachine) panicked(line string) {
	m.mu.Lock()
	m.panicMsg = line
	m.mu.Unlock()
	m.vm.Stop()
}

func (m *vmMachine) Exit() MachineExit {
	st := m.vm.Status()
	m.mu.Lock()
	pm := m.panicMsg
	m.mu.Unlock()
	switch {
	case pm != "":
		return MachineExit{Kind: ExitCrash, Reason: "guest panic: " + pm}
	case st.State == vmm.StateCrashed:
		return MachineExit{Kind: ExitCrash, Reason: st.Reason}
	case strings.Contains(st.Reason, "stopped by the host"):
		return MachineExit{Kind: ExitStopped, Reason: st.Reason}
	}
	return MachineExit{Kind: ExitPoweroff, Reason: st.Reason}
}

func (m *vmMachine) Stop() error {
	m.stopOnce.Do(func() {
		m.stopErr = m.devs.stop(m.vm) // stops and closes the VM
		m.cancel()
		m.wg.Wait()
	})
	return m.stopErr
}

// initReached is called (once, off the vCPU thread) when the guest's
// /init announced itself on the console: the kernel has booted.
func (m *vmMachine) initReached() {
	m.mu.Lock()
	m.initAt = time.Now()
	m.mu.Unlock()
}

func (m *vmMachine) Info() MachineInfo {
	st := m.vm.Status()
	info := MachineInfo{Exits: st.Exits, Since: st.Started, Extra: map[string]string{"uptime": st.Uptime.Round(1e6).String()}}
	m.mu.Lock()
	if !m.initAt.IsZero() && !st.Started.IsZero() {
		// How long the kernel took to reach its init ("popvmm-init:" on
		// the console); absent while it is still booting.
		info.Extra["init_after"] = m.initAt.Sub(st.Started).Round(1e6).String()
	}
	m.mu.Unlock()
	if st.Resets > 0 {
		info.Extra["resets"] = fmt.Sprint(st.Resets)
	}
	info.Devs = withWindowInfo(m.devs.info(), m.devs)
	for _, c := range st.VCPUs {
		info.VCPUs = append(info.VCPUs, VCPUInfo{Index: c.Index, TID: c.TID, Name: c.Thread, Affinity: c.Affinity})
	}
	return info
}

// panicMarker is what Linux prints when it panics (kernel/panic.c).
const panicMarker = "Kernel panic - not syncing"

// panicWatch passes console output through and spots a kernel panic line
// with O(1) work per byte, on the vCPU thread; the reaction runs on its own
// goroutine, once.
type panicWatch struct {
	w       *vtty.Console
	onPanic func(line string)
	onInit  func()
	init    int // bytes of initMarker matched so far; -1 once seen
	matched int // bytes of panicMarker matched so far
	line    []byte
	inLine  bool
	fired   bool
}

func (p *panicWatch) WriteByte(b byte) error {
	p.scan(b)
	return p.w.WriteByte(b)
}

func (p *panicWatch) Write(data []byte) (int, error) {
	for _, b := range data {
		p.scan(b)
	}
	return p.w.Write(data)
}

// initMarker is what popvmm's guest /init prints first (images/initramfs/init).
const initMarker = "popvmm-init: "

func (p *panicWatch) scan(b byte) {
	if p.init >= 0 && p.onInit != nil {
		p.init = step(initMarker, p.init, b)
		if p.init == len(initMarker) {
			p.init = -1
			go p.onInit()
		}
	}
	if p.fired {
		return
	}
	if p.inLine {
		if b == '\n' || b == '\r' || len(p.line) >= 200 {
			p.fired = true
			go p.onPanic(string(p.line))
			return
		}
		p.line = append(p.line, b)
		return
	}
	p.matched = step(panicMarker, p.matched, b)
	if p.matched == len(panicMarker) {
		p.inLine = true
		p.line = append(p.line[:0], panicMarker...)
	}
}

// step advances a match of marker by byte b from matched bytes, the way a
// console line is scanned (a restart only at the marker's first byte,
// enough for markers without a repeated prefix).
func step(marker string, matched int, b byte) int {
	switch {
	case b == marker[matched]:
		return matched + 1
	case b == marker[0]:
		return 1
	}
	return 0
}
