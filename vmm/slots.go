package vmm

import (
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/kvm"
)

// extraSlots are memory slots added while the VM exists, over host memory
// the VM does not own (a shared window's mapping): AddMemory and
// RemoveMemory. They survive reboots (newMachine registers them again);
// the memory must stay mapped until they are removed or the VM is closed.
type extraSlots struct {
	mu    sync.Mutex
	byGPA map[uint64]extraSlot
}

type extraSlot struct {
	slot  uint32
	flags uint32
	mem   []byte
}

// AddMemory maps host memory mem (page-aligned, a multiple of the page
// size) at guest-physical gpa as a memory slot of its own; with readOnly
// the guest may read it but its writes exit to the MMIO bus
// (KVM_MEM_READONLY), where a device can refuse them. The caller keeps mem
// mapped until RemoveMemory or Close. It may run while the vCPUs do.
func (v *VM) AddMemory(gpa uint64, mem []byte, readOnly bool) error {
	n := uint64(len(mem))
	if n == 0 || n%memmap.PageSize != 0 || gpa%memmap.PageSize != 0 {
		return fmt.Errorf("vm %q: memory at %#x size %#x is not whole pages", v.cfg.Name, gpa, n)
	}
	if _, ok := memmap.End(gpa, n); !ok {
		return fmt.Errorf("vm %q: memory at %#x size %#x runs past 2^64", v.cfg.Name, gpa, n)
	}
	var flags uint32
	if readOnly {
		flags = kvm.MemReadOnly
	}
	return v.withKVM(func(kv *kvm.VM) error {
		x := &v.extra
		x.mu.Lock()
		defer x.mu.Unlock()
		if x.byGPA == nil {
			x.byGPA = map[uint64]extraSlot{}
		}
		if _, dup := x.byGPA[gpa]; dup {
			return fmt.Errorf("memory at %#x is mapped already", gpa)
		}
		s := extraSlot{slot: x.freeSlotLocked(uint32(len(v.ram.plan))), flags: flags, mem: mem}
		if err := kv.SetMemory(s.slot, flags, gpa, mem); err != nil {
			return err
		}
		x.byGPA[gpa] = s
		return nil
	})
}

// RemoveMemory deletes the slot AddMemory made at gpa.
func (v *VM) RemoveMemory(gpa uint64) error {
	return v.withKVM(func(kv *kvm.VM) error {
		x := &v.extra
		x.mu.Lock()
		defer x.mu.Unlock()
		s, ok := x.byGPA[gpa]
		if !ok {
			return fmt.Errorf("no memory added at %#x", gpa)
		}
		delete(x.byGPA, gpa)
		if err := kv.DeleteMemory(s.slot); err != nil {
			return fmt.Errorf("delete memory slot %d at %#x: %w", s.slot, gpa, err)
		}
		return nil
	})
}

// freeSlotLocked is the lowest slot number from first that no added slot
// uses (the RAM and passthrough slots are below first).
func (x *extraSlots) freeSlotLocked(first uint32) uint32 {
	used := map[uint32]bool{}
	for _, s := range x.byGPA {
		used[s.slot] = true
	}
	for used[first] {
		first++
	}
	return first
}

// register adds the slots to kv, a new boot's KVM VM.
func (x *extraSlots) register(kv *kvm.VM) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for gpa, s := range x.byGPA {
		if err := kv.SetMemory(s.slot, s.flags, gpa, s.mem); err != nil {
			return err
		}
	}
	return nil
}
