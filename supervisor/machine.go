package supervisor

import (
	"context"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/vtty"
)

// Machine is one kernel's running VM as the supervisor drives it. A
// *machine.Machine implements it (through the launcher in launcher.go);
// tests use fakes.
type Machine interface {
	// Done is closed when the VM has ended on its own or by Stop.
	Done() <-chan struct{}
	// Exit says how it ended; valid once Done is closed.
	Exit() machine.Exit
	// Stop kicks every vCPU out of KVM_RUN and releases the VM's fds,
	// mappings and threads. It returns when that is done; safe to call twice.
	Stop() error
	// Info is the VM's live detail for status.
	Info() machine.Info
}

// Boot is what a kernel boots with besides its config: the initramfs
// (base image followed by the per-kernel overlay) and the composed command
// line.
type Boot struct {
	Initrd  []byte
	Cmdline string
	// Window is the cluster's shared window for the VM's window device;
	// nil: none.
	Window *machine.Window
	// Winnet is the cluster's window network for the VM's window network
	// device; nil: none.
	Winnet *machine.Winnet
	// OnReset, when set, runs at each reboot inside the VM (restart
	// policy "always"), after the VM's devices were reset and before the
	// next boot starts.
	OnReset func()
}

// Launcher boots kernels into VMs. The console carries the kernel's serial
// port: the VM's UART writes to it and reads from it.
type Launcher interface {
	Launch(ctx context.Context, k *cluster.Kernel, boot Boot, console *vtty.Console) (Machine, error)
}
