package supervisor

import (
	"context"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/vtty"
)

// Machine is one kernel's running VM as the supervisor drives it. The VMM
// (package vmm, through the launcher in vm.go) implements it; tests use a
// fake.
type Machine interface {
	// Done is closed when the VM has ended on its own or by Stop.
	Done() <-chan struct{}
	// Exit says how it ended; valid once Done is closed.
	Exit() MachineExit
	// Stop kicks every vCPU out of KVM_RUN and releases the VM's fds,
	// mappings and threads. It returns when that is done; safe to call twice.
	Stop() error
	// Info is the VM's live detail for status.
	Info() MachineInfo
}

// ExitKind classifies how a VM ended.
type ExitKind string

// Exit kinds.
const (
	ExitStopped  ExitKind = "stopped"  // Stop was called
	ExitPoweroff ExitKind = "poweroff" // the guest powered off
	ExitReset    ExitKind = "reset"    // the guest asked for a reset (reboot)
	ExitCrash    ExitKind = "crash"    // triple fault, emulation or entry failure, guest panic
)

// MachineExit is how a VM ended, with the detail a person needs.
type MachineExit struct {
	Kind   ExitKind `json:"kind"`
	Reason string   `json:"reason,omitempty"`
}

// MachineInfo is a VM's live detail.
type MachineInfo struct {
	VCPUs []VCPUInfo          `json:"vcpus"`
	Exits map[string]uint64   `json:"exits,omitempty"` // userspace exits by reason
	Extra map[string]string   `json:"extra,omitempty"` // anything else worth showing
	Since time.Time           `json:"since"`
	RSS   uint64              `json:"vmm_rss,omitempty"`
	Devs  map[string][]string `json:"devices,omitempty"`
}

// VCPUInfo is one vCPU thread.
type VCPUInfo struct {
	Index    int    `json:"index"`
	TID      int    `json:"tid"`
	Name     string `json:"name"`
	Affinity []int  `json:"affinity"`
}

// Boot is what a kernel boots with besides its config: the initramfs
// (base image followed by the per-kernel overlay) and the composed command
// line.
type Boot struct {
	Initrd  []byte
	Cmdline string
	// Window is the cluster's shared window for the VM's window device
	// (windowdev.go); nil: none.
	Window *WindowAttach
	// OnReset, when set, runs at each reboot inside the VM (restart
	// policy "always"), after the VM's devices were reset and before the
	// next boot starts (vmm.VM.OnReset).
	OnReset func()
}

// Launcher boots kernels into VMs. The console carries the kernel's serial
// port: the VM's UART writes to it and reads from it.
type Launcher interface {
	Launch(ctx context.Context, k *cluster.Kernel, boot Boot, console *vtty.Console) (Machine, error)
}
