package lab

import (
	"errors"
	"fmt"
	"strings"

	"github.com/popvmm/popvmm/vmm/kvm"
)

// HoldReady is what HoldKVM's caller prints once the hold is in place
// (or failed, and the job should go on without it); the job script waits
// for this line before it runs the command.
const HoldReady = "ready"

// Hold is KVM state kept in the lab host for the whole job: a VM with an
// in-kernel irqchip and a VM without, each with one vCPU that never runs.
// The host kernel switches static keys when the first VM appears and the
// last one goes (preempt_notifier_key, in __schedule), when a vCPU's
// local APIC is created software-disabled and its guest enables it
// (apic_sw_disabled), and when a vCPU without an in-kernel APIC comes and
// goes (kvm_has_noapic_vcpu); each switch patches live kernel text with
// int3 and cross-CPU synchronisation (text_poke_bp). Under QEMU TCG with
// several emulated CPUs that patching now and then never completes: both
// CPUs loop on the int3 in __schedule with interrupts off, the console
// reports an RCU stall, and the lab host is wedged (a loop of the vmm
// package's KVM tests wedged four labs of four within 1-4 rounds without
// the hold, and three labs ran 45 rounds with it; docs/lab.md). With the hold taken before the job,
// those keys stay on and the job's VMs switch none of them. (Taking the
// other CPUs offline while the hold switches them was tried and dropped:
// after CPU 1 went offline and back, QEMU later left CPU 0 halted with
// its timer and IPI vectors pending in the APIC, never delivered.)
type Hold struct {
	sys   *kvm.System
	vms   []*kvm.VM
	vcpus []*kvm.VCPU
}

// HoldKVM takes the hold.
func HoldKVM() (_ *Hold, err error) {
	h := &Hold{}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	if h.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	for _, irqchip := range []bool{true, false} {
		vm, err := h.sys.CreateVM()
		if err != nil {
			return nil, err
		}
		h.vms = append(h.vms, vm)
		if irqchip {
			if err := vm.CreateIRQChip(); err != nil {
				return nil, err
			}
		}
		c, err := vm.CreateVCPU(0)
		if err != nil {
			return nil, err
		}
		h.vcpus = append(h.vcpus, c)
	}
	return h, nil
}

// Close releases the hold.
func (h *Hold) Close() error {
	var errs []error
	for _, c := range h.vcpus {
		errs = append(errs, c.Close())
	}
	for _, vm := range h.vms {
		errs = append(errs, vm.Close())
	}
	if h.sys != nil {
		errs = append(errs, h.sys.Close())
	}
	h.vcpus, h.vms, h.sys = nil, nil, nil
	return errors.Join(errs...)
}

// holdScript is the job script's prologue for holder, a command that
// takes the hold and prints HoldReady (popvmm lab hold-kvm): it runs in
// the background, its output in $TMPDIR (the lab's /tmp), and the command
// waits for its ready line, its exit, or 60 s.
func holdScript(holder []string) string {
	if len(holder) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(`popvmm_hold_log="${TMPDIR:-/tmp}/popvmm-lab-hold.log"` + "\n")
	b.WriteString("(" + shellWords(holder) + `) >"$popvmm_hold_log" 2>&1 </dev/null &` + "\n")
	b.WriteString("popvmm_hold=$! popvmm_i=0\n")
	fmt.Fprintf(&b, `while [ $popvmm_i -lt 600 ] && kill -0 $popvmm_hold 2>/dev/null && ! grep -qx %s "$popvmm_hold_log"; do sleep 0.1; popvmm_i=$((popvmm_i + 1)); done`+"\n", HoldReady)
	b.WriteString("unset popvmm_hold popvmm_hold_log popvmm_i\n")
	return b.String()
}
