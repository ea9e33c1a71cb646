// Package kvmhost says whether this machine's /dev/kvm can run popvmm's
// kernels, which KVM backend serves it (kvm_intel, kvm_amd, or the
// paravirtual nested kvm_pvm), and, when it cannot, why and what to do. It
// reads /dev/kvm, /sys/module and /proc/cpuinfo through a Host so every
// verdict is tested without the hardware.
package kvmhost

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// Backends: the module that serves /dev/kvm.
const (
	Intel = "kvm_intel" // hardware VMX
	AMD   = "kvm_amd"   // hardware SVM (also the lab's, on an emulated CPU)
	PVM   = "kvm_pvm"   // paravirtual nested backend: no guest system calls
)

// Status is what Probe found.
type Status struct {
	Backend string // Intel, AMD, PVM, or "" when none is loaded
	// Usable: /dev/kvm opens and answers API version 12.
	Usable bool
	// Userspace: guest user processes can make system calls (false on PVM),
	// so init, ssh and the agent work.
	Userspace bool
	Problem   error  // why not Usable (or not Userspace), nil when both hold
	Advice    string // what to do about Problem
}

// Full reports whether real kernels with their userspace can run here.
func (s Status) Full() bool { return s.Usable && s.Userspace }

// Host is what Probe reads; SysHost reads the machine.
type Host interface {
	OpenKVM() (apiVersion int, err error) // open Device, KVM_GET_API_VERSION
	Module(name string) bool              // /sys/module/NAME exists
	CPUFlags() []string                   // the flags line of /proc/cpuinfo
}

// SysHost is this machine.
type SysHost struct{}

// OpenKVM opens /dev/kvm and asks its API version.
func (SysHost) OpenKVM() (int, error) {
	fd, err := unix.Open(Device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &fs.PathError{Op: "open", Path: Device, Err: err}
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, 0xAE00) // KVM_GET_API_VERSION, _IO(KVMIO, 0x00)
	if err != nil {
		return 0, os.NewSyscallError("KVM_GET_API_VERSION", err)
	}
	return v, nil
}

// Module reports whether a kernel module (or built-in with parameters) is present.
func (SysHost) Module(name string) bool {
	_, err := os.Stat("/sys/module/" + name)
	return err == nil
}

// CPUFlags are the first processor's flags.
func (SysHost) CPUFlags() []string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			return strings.Fields(v)
		}
	}
	return nil
}

// LabAdvice is the way out on any machine.
const LabAdvice = "`popvmm lab up CONFIG` runs the cluster in the lab, an emulated KVM host (slower, works anywhere)"

// Probe decides the Status of h.
func Probe(h Host) Status {
	var s Status
	for _, m := range []string{Intel, AMD, PVM} {
		if h.Module(m) {
			s.Backend = m
			break
		}
	}
	v, err := h.OpenKVM()
	if err == nil && v != 12 {
		err = fmt.Errorf("%s answers KVM API version %d, want 12", Device, v)
	}
	if err == nil {
		s.Usable = true
		s.Userspace = s.Backend != PVM
		if !s.Userspace {
			s.Problem = errors.New("the host's KVM is the kvm_pvm nested backend: guest kernels boot (with workaround flags), but their user processes cannot make system calls, so init, ssh and the agent fail")
			s.Advice = LabAdvice
		}
		return s
	}
	hasHW := false
	for _, f := range h.CPUFlags() {
		if f == "vmx" || f == "svm" {
			hasHW = true
		}
	}
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		s.Problem = fmt.Errorf("%s: permission denied", Device)
		s.Advice = "run as root or join the group owning " + Device + " (usually kvm)"
	case errors.Is(err, syscall.ENOENT) && !hasHW:
		s.Problem = fmt.Errorf("%s is missing and this CPU offers no hardware virtualisation (no vmx or svm in /proc/cpuinfo; if this machine is itself a VM, nested virtualisation is off)", Device)
		s.Advice = "enable nested virtualisation in the hypervisor running this machine, or use " + LabAdvice
	case errors.Is(err, syscall.ENOENT) && s.Backend == "":
		s.Problem = fmt.Errorf("%s is missing: no KVM module is loaded", Device)
		s.Advice = "load it (modprobe kvm_intel or modprobe kvm_amd), or use " + LabAdvice
	case errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.ENOENT):
		which := "no KVM module"
		if s.Backend != "" {
			which = s.Backend + ", loaded but not serving it (see dmesg)"
		}
		s.Problem = fmt.Errorf("%s cannot be opened: %v; %s", Device, errors.Unwrap(err), which)
		s.Advice = "check `dmesg | grep -i kvm` (virtualisation disabled in the firmware?), or use " + LabAdvice
	default:
		s.Problem = err
		s.Advice = LabAdvice
	}
	return s
}
