package lab_test

import (
	"encoding/binary"
	"os"
	"testing"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/testenv"
)

// TestKVMTinyGuest is the lab's own proof of a working /dev/kvm: a VM with
// one 64 KiB memory slot and one vCPU in real mode runs
//
//	mov al, 0x42; out 0x10, al; hlt
//
// and must exit to userspace with KVM_EXIT_IO (port 0x10, one byte 0x42,
// out) and then KVM_EXIT_HLT (no in-kernel irqchip, so hlt exits).
func TestKVMTinyGuest(t *testing.T) {
	testenv.RequireKVM(t)
	dev, err := os.OpenFile(testenv.KVMDevice, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if v, err := kvm.GetAPIVersion(dev.Fd()); err != nil || v != 12 {
		t.Fatalf("KVM_GET_API_VERSION = %d, %v; want 12", v, err)
	}
	vmfd, err := kvm.CreateVM(dev.Fd())
	if err != nil {
		t.Fatalf("KVM_CREATE_VM: %v", err)
	}
	defer unix.Close(int(vmfd))
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem[0x1000:], []byte{0xb0, 0x42, 0xe6, 0x10, 0xf4}) // mov al,0x42; out 0x10,al; hlt
	region := kvm.UserspaceMemoryRegion{Slot: 0, GuestPhysAddr: 0, MemorySize: 0x10000, UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if err := kvm.SetUserMemoryRegion(vmfd, &region); err != nil {
		t.Fatalf("KVM_SET_USER_MEMORY_REGION: %v", err)
	}
	cpufd, err := kvm.CreateVCPU(vmfd, 0)
	if err != nil {
		t.Fatalf("KVM_CREATE_VCPU: %v", err)
	}
	defer unix.Close(int(cpufd))
	size, err := kvm.GetVCPUMMmapSize(dev.Fd())
	if err != nil {
		t.Fatal(err)
	}
	run, err := unix.Mmap(int(cpufd), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap kvm_run: %v", err)
	}
	defer unix.Munmap(run)
	sregs, err := kvm.GetSregs(cpufd)
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := kvm.SetSregs(cpufd, sregs); err != nil {
		t.Fatal(err)
	}
	if err := kvm.SetRegs(cpufd, &kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	// struct kvm_run (include/uapi/linux/kvm.h): exit_reason at 8; the io
	// exit's direction, size, port, count, data_offset at 32.
	exit := func() uint32 { return binary.LittleEndian.Uint32(run[8:]) }
	if err := kvm.Run(cpufd); err != nil {
		t.Fatalf("KVM_RUN: %v", err)
	}
	if r := exit(); r != uint32(kvm.EXITIO) {
		t.Fatalf("first exit reason %d, want KVM_EXIT_IO (%d)", r, kvm.EXITIO)
	}
	dir, sz, port, count := run[32], run[33], binary.LittleEndian.Uint16(run[34:]), binary.LittleEndian.Uint32(run[36:])
	off := binary.LittleEndian.Uint64(run[40:])
	if dir != 1 || sz != 1 || port != 0x10 || count != 1 || off >= uint64(len(run)) || run[off] != 0x42 {
		t.Fatalf("io exit: dir %d size %d port %#x count %d data %#x; want out, 1, 0x10, 1, 0x42", dir, sz, port, count, run[off%uint64(len(run))])
	}
	if err := kvm.Run(cpufd); err != nil {
		t.Fatalf("KVM_RUN: %v", err)
	}
	if r := exit(); r != uint32(kvm.EXITHLT) {
		t.Fatalf("second exit reason %d, want KVM_EXIT_HLT (%d)", r, kvm.EXITHLT)
	}
}
