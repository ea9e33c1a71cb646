package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
// package's KVM tests wedged it within 1-4 rounds without the hold, and
// ran 40 rounds with it; docs/lab.md). With the hold taken before the job,
// those keys stay on and the job's VMs switch none of them. The hold is
// taken with every CPU but CPU 0 offline, so that its own switches have
// no other CPU to synchronise with.
type Hold struct {
	sys   *kvm.System
	vms   []*kvm.VM
	vcpus []*kvm.VCPU
}

// HoldKVM takes the hold; sysfs is the root of /sys/devices/system/cpu
// (SysCPU). The CPUs it took offline are online again when it returns,
// also on error.
func HoldKVM(sysfs string) (_ *Hold, err error) {
	restore, err := offlineOthers(sysfs)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rerr := restore(); rerr != nil && err == nil {
			err = rerr
		}
	}()
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

// SysCPU is where Linux lists the CPUs and their online switches.
const SysCPU = "/sys/devices/system/cpu"

// offlineOthers takes every online CPU but CPU 0 offline and returns the
// function that brings them back.
func offlineOthers(sysfs string) (func() error, error) {
	files, err := filepath.Glob(filepath.Join(sysfs, "cpu[0-9]*", "online"))
	if err != nil {
		return nil, err
	}
	var off []string
	restore := func() error {
		var errs []error
		for _, f := range off {
			if err := os.WriteFile(f, []byte("1"), 0); err != nil {
				errs = append(errs, fmt.Errorf("bring %s back online: %w", filepath.Base(filepath.Dir(f)), err))
			}
		}
		return errors.Join(errs...)
	}
	for _, f := range files {
		if filepath.Base(filepath.Dir(f)) == "cpu0" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			continue
		}
		if err := os.WriteFile(f, []byte("0"), 0); err != nil {
			return nil, errors.Join(fmt.Errorf("take %s offline: %w", filepath.Base(filepath.Dir(f)), err), restore())
		}
		off = append(off, f)
	}
	return restore, nil
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
	b.WriteString("(")
	for i, a := range holder {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(shellQuote(a))
	}
	b.WriteString(`) >"${TMPDIR:-/tmp}/popvmm-lab-hold.log" 2>&1 </dev/null &` + "\n")
	b.WriteString("popvmm_hold=$! popvmm_i=0\n")
	fmt.Fprintf(&b, `while [ $popvmm_i -lt 600 ] && kill -0 $popvmm_hold 2>/dev/null && ! grep -qx %s "${TMPDIR:-/tmp}/popvmm-lab-hold.log"; do sleep 0.1; popvmm_i=$((popvmm_i + 1)); done`+"\n", HoldReady)
	b.WriteString("unset popvmm_hold popvmm_i\n")
	return b.String()
}
