// Package machine builds one kernel's KVM VM from its resolved plan and
// runs it: RAM and the boot image (package vmm), COM1's 16550 wired to the
// kernel's console (vtty), the PCI host (pci.go) with its MSI-X routes
// (irq.go), then one attach function per device kind — virtio-net on the
// cluster's bridge (net.go), the shared window's device (window.go), the
// window network's device (winnet.go), the kernel's virtio-blk disks
// (blk.go) — and it answers the VM's status. What is cluster-wide (the bridge, the
// window) is handed in by the supervisor, which drives the result through
// Machine's four methods and never sees package vmm.
package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vnet"
	"github.com/popvmm/popvmm/vtty"
)

// COM1, where every kernel's serial console is: ports 0x3f8-0x3ff, ISA
// IRQ 4 (the MP table routes it through the in-kernel IOAPIC).
const (
	com1Port = 0x3f8
	com1IRQ  = 4
)

// Config is what Build needs: the kernel's resolved plan and what it boots
// with, its console, and the cluster-wide pieces its devices join.
type Config struct {
	Kernel *cluster.Kernel
	// Initrd is the initramfs (base image followed by the per-kernel
	// overlay); Cmdline the composed kernel command line.
	Initrd  []byte
	Cmdline string
	// Console carries COM1: the UART writes the guest's output to it and
	// reads the user's input from it. It outlives the machine.
	Console *vtty.Console
	// Network is the cluster's bridge; nil: the kernel gets no NIC.
	Network *Network
	// Window is the cluster's shared window; nil: no window device.
	Window *Window
	// Winnet is the cluster's window network; nil: no window network
	// device.
	Winnet *Winnet
	// OnReset, when set, runs at each reboot inside the VM (restart
	// policy "always"), after the VM's devices were reset and before the
	// next boot starts (vmm.VM.OnReset).
	OnReset func()
	Log     *slog.Logger
}

// Network is the cluster's host network as a kernel's NIC joins it: its
// tap (named from the cluster and the kernel's index, linkname.Tap) goes
// on Bridge.
type Network struct {
	Cluster string
	Bridge  *vnet.Bridge
}

// Window is what a kernel's VM needs of the cluster's shared window to get
// its window device: the doorbells, the supervisor's mapping of the window
// memfd (every VM maps it as BAR2's memory slots) and the geometry the
// protection slots follow. It outlives every VM.
type Window struct {
	Bells    *ipi.Doorbells
	Mem      []byte
	MaxPeers int
	Protect  bool
}

// device is one attached device as the machine drives it after attach.
type device interface {
	// name is its key in status ("net0", "window").
	name() string
	// info is its status lines.
	info() []string
	// stop ends its goroutines that touch guest memory: called once the
	// vCPUs stopped, before the VM closes; what it registered with the
	// PCI host is released by the host's Close after that.
	stop() error
}

// attachers are the device kinds, in the order they get their PCI device
// numbers (the window device first among its peers' INTx routes: the MP
// table routes INTA# of the first devices only): each gives b's VM the
// devices of its kind the kernel's plan has (none: nil, nil). A new device
// kind is a file with its attach function, listed here.
var attachers = []func(b *builder) ([]device, error){
	one(attachNIC),
	one(attachWindow),
	one(attachWinnet), // winnet.go
	attachDisks,
}

// one adapts an attach function for a kind a VM has at most one of.
func one(attach func(*builder) (device, error)) func(*builder) ([]device, error) {
	return func(b *builder) ([]device, error) {
		d, err := attach(b)
		if err != nil || d == nil {
			return nil, err
		}
		return []device{d}, nil
	}
}

// builder is what an attach function works with: the VM being built, its
// PCI host, and the configuration.
type builder struct {
	cfg Config
	vm  *vmm.VM
	pci *pciHost
	log *slog.Logger
}

// Machine is one kernel's running VM with its devices.
type Machine struct {
	vm      *vmm.VM
	pci     *pciHost
	devices []device
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	done    chan struct{}

	mu       sync.Mutex
	panicMsg string
	initAt   time.Time
	stopOnce sync.Once
	stopErr  error
}

// Build makes cfg.Kernel's VM — RAM, boot image, COM1, the PCI host, then
// every device kind its plan has — and starts its vCPUs; it returns once
// they run. A failure undoes everything it did.
func Build(cfg Config) (*Machine, error) {
	k := cfg.Kernel
	log := cfg.Log.With("kernel", k.Name)
	vc, err := vmConfig(k, cfg, log)
	if err != nil {
		return nil, err
	}
	v, err := vmm.New(vc)
	if err != nil {
		return nil, err
	}
	m := &Machine{vm: v, done: make(chan struct{})}
	uart := vtty.NewUART(&panicWatch{w: cfg.Console, onPanic: m.panicked, onInit: m.initReached}, v.IRQLine(com1IRQ))
	if err := v.PIO().Insert(uart, "com1", com1Port, 8); err != nil {
		v.Close()
		return nil, err
	}
	v.OnReset(uart.Reset) // a reboot in the VM finds COM1 as at power-on
	if m.pci, err = newPCIHost(v, k.Layout, log); err != nil {
		v.Close()
		return nil, err
	}
	b := &builder{cfg: cfg, vm: v, pci: m.pci, log: log}
	for _, attach := range attachers {
		ds, err := attach(b)
		if err != nil {
			m.release()
			return nil, err
		}
		m.devices = append(m.devices, ds...)
	}
	if cfg.OnReset != nil {
		v.OnReset(cfg.OnReset) // after the devices' own reset hooks
	}
	ictx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	if err := v.Start(); err != nil {
		cancel()
		m.release()
		return nil, err
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); cfg.Console.Input(ictx, uart.Receive) }()
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

// vmConfig is the vmm.Config for kernel k: its image as the file is now
// (it may have been rebuilt since validation), its format told by the
// parse validation and the loaders share (boot.ParseImage).
func vmConfig(k *cluster.Kernel, cfg Config, log *slog.Logger) (vmm.Config, error) {
	image, err := os.ReadFile(k.KernelPath)
	if err != nil {
		return vmm.Config{}, fmt.Errorf("kernel image: %w", err)
	}
	parsed, err := boot.ParseImageBytes(image)
	if err != nil {
		return vmm.Config{}, fmt.Errorf("kernel image %s: %w", k.KernelPath, err)
	}
	format := vmm.FormatBzImage
	if parsed.Format == boot.FormatPVH {
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
	return vmm.Config{
		Name: k.Name, Layout: k.Layout, CPUs: k.CPUs,
		HugePageSize: hugePage(k.Backing), NUMANode: k.NUMANode, Mlock: k.Mlock,
		Passthrough: pt, Restart: restart, Log: log,
		Boot:        vmm.Boot{Format: format, Image: image, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline},
		ConsoleTail: cfg.Console.Replay, // a crash report names the console's last line
	}, nil
}

func hugePage(b cluster.Backing) uint64 {
	if b == cluster.BackingMemfd {
		return 0
	}
	return b.PageSize()
}

// release stops the VM, then the devices (their goroutines touch guest
// memory), then closes the VM and releases what the devices registered
// with the PCI host.
func (m *Machine) release() error {
	m.vm.Stop()
	var errs []error
	for _, d := range m.devices {
		errs = append(errs, d.stop())
	}
	errs = append(errs, m.vm.Close())
	m.pci.Close()
	return errors.Join(errs...)
}

// Done is closed when the VM has ended on its own or by Stop.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Stop kicks every vCPU out of KVM_RUN and releases the VM's fds,
// mappings, threads and devices. It returns when that is done; safe to
// call twice.
func (m *Machine) Stop() error {
	m.stopOnce.Do(func() {
		m.stopErr = m.release()
		m.cancel()
		m.wg.Wait()
	})
	return m.stopErr
}

// panicked is called (once, off the vCPU thread) when the guest printed a
// kernel panic: the VM is stopped and counts as crashed with that line.
func (m *Machine) panicked(line string) {
	m.mu.Lock()
	m.panicMsg = line
	m.mu.Unlock()
	m.vm.Stop()
}

// initReached is called (once, off the vCPU thread) when the guest's
// /init announced itself on the console: the kernel has booted.
func (m *Machine) initReached() {
	m.mu.Lock()
	m.initAt = time.Now()
	m.mu.Unlock()
}
