package kvmhost_test

import (
	"io/fs"
	"strings"
	"syscall"
	"testing"

	"github.com/popvmm/popvmm/internal/kvmhost"
)

type fakeHost struct {
	version int
	err     error
	modules []string
	flags   []string
}

func (f fakeHost) OpenKVM() (int, error) {
	if f.err != nil {
		return 0, &fs.PathError{Op: "open", Path: kvmhost.Device, Err: f.err}
	}
	return f.version, nil
}

func (f fakeHost) Module(m string) bool {
	for _, x := range f.modules {
		if x == m {
			return true
		}
	}
	return false
}

func (f fakeHost) CPUFlags() []string { return f.flags }

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		host                  fakeHost
		backend               string
		usable, userspace     bool
		problemHas, adviceHas string
	}{
		{"hardware amd", fakeHost{version: 12, modules: []string{"kvm", "kvm_amd"}, flags: []string{"svm"}}, kvmhost.AMD, true, true, "", ""},
		{"hardware intel", fakeHost{version: 12, modules: []string{"kvm", "kvm_intel"}}, kvmhost.Intel, true, true, "", ""},
		{"pvm serving", fakeHost{version: 12, modules: []string{"kvm", "kvm_pvm"}}, kvmhost.PVM, true, false, "cannot make system calls", "popvmm lab up"},
		{"pvm not binding", fakeHost{err: syscall.ENODEV, modules: []string{"kvm", "kvm_pvm"}}, kvmhost.PVM, false, false, "kvm_pvm, loaded but not serving", "dmesg"},
		{"no module", fakeHost{err: syscall.ENOENT, flags: []string{"vmx"}}, "", false, false, "no KVM module is loaded", "modprobe kvm_intel"},
		{"no nesting", fakeHost{err: syscall.ENOENT}, "", false, false, "nested virtualisation is off", "enable nested virtualisation"},
		{"not permitted", fakeHost{err: syscall.EACCES, modules: []string{"kvm_intel"}}, kvmhost.Intel, false, false, "permission denied", "group"},
		{"old api", fakeHost{version: 11, modules: []string{"kvm_amd"}}, kvmhost.AMD, false, false, "API version 11", "lab"},
	} {
		s := kvmhost.Probe(tc.host)
		if s.Backend != tc.backend || s.Usable != tc.usable || s.Userspace != tc.userspace || s.Full() != (tc.usable && tc.userspace) {
			t.Errorf("%s: Probe = %+v; want backend %q usable %v userspace %v", tc.name, s, tc.backend, tc.usable, tc.userspace)
		}
		if (tc.problemHas == "") != (s.Problem == nil) || (s.Problem != nil && !strings.Contains(s.Problem.Error(), tc.problemHas)) {
			t.Errorf("%s: problem %v, want one containing %q", tc.name, s.Problem, tc.problemHas)
		}
		if !strings.Contains(s.Advice, tc.adviceHas) {
			t.Errorf("%s: advice %q, want one containing %q", tc.name, s.Advice, tc.adviceHas)
		}
	}
}
