package machine

import (
	"fmt"
	"time"

	"github.com/popvmm/popvmm/vmm"
)

// ExitKind classifies how a VM ended.
type ExitKind string

// Exit kinds. A reboot inside the VM is not an end: with restart policy
// "always" the VM resets its platform and boots again in place (vmm), and
// with "never" it ends as a crash.
const (
	ExitStopped  ExitKind = "stopped"  // Stop was called
	ExitPoweroff ExitKind = "poweroff" // the guest powered off
	ExitCrash    ExitKind = "crash"    // triple fault, emulation or entry failure, guest panic
)

// Exit is how a VM ended, with the detail a person needs.
type Exit struct {
	Kind   ExitKind `json:"kind"`
	Reason string   `json:"reason,omitempty"`
}

// Info is a VM's live detail, as `popvmm status --json` shows it under
// "machine".
type Info struct {
	VCPUs []VCPUInfo        `json:"vcpus"`
	Exits map[string]uint64 `json:"exits,omitempty"` // userspace exits by reason
	Extra map[string]string `json:"extra,omitempty"` // anything else worth showing
	Since time.Time         `json:"since"`
	RSS   uint64            `json:"vmm_rss,omitempty"`
	// Devs is every attached device's status lines, by device name
	// ("net0", "window").
	Devs map[string][]string `json:"devices,omitempty"`
}

// VCPUInfo is one vCPU thread: its thread id, name and the host cores
// its affinity allows (read back from the kernel).
type VCPUInfo struct {
	Index    int    `json:"index"`
	TID      int    `json:"tid"`
	Name     string `json:"name"`
	Affinity []int  `json:"affinity"`
}

// Exit says how the VM ended; valid once Done is closed.
func (m *Machine) Exit() Exit {
	st := m.vm.Status()
	m.mu.Lock()
	pm := m.panicMsg
	m.mu.Unlock()
	if pm != "" {
		return Exit{Kind: ExitCrash, Reason: "guest panic: " + pm}
	}
	return Exit{Kind: exitKind(st), Reason: st.Reason}
}

// exitKind is how the supervisor sees a VM's ending: a reset under
// restart "never" is a crash (the kernel did not mean to stop).
func exitKind(st vmm.Status) ExitKind {
	switch {
	case st.Ending == vmm.EndingHostStop:
		return ExitStopped
	case st.Ending == vmm.EndingPowerOff:
		return ExitPoweroff
	case st.State == vmm.StateCrashed, st.Ending == vmm.EndingCrash, st.Ending == vmm.EndingReset:
		return ExitCrash
	}
	return ExitPoweroff
}

// Info is the VM's live detail for status.
func (m *Machine) Info() Info {
	st := m.vm.Status()
	info := Info{Exits: st.Exits, Since: st.Started, Extra: map[string]string{"uptime": st.Uptime.Round(1e6).String()}}
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
	if len(m.devices) > 0 {
		info.Devs = map[string][]string{}
		for _, d := range m.devices {
			info.Devs[d.name()] = d.info()
		}
	}
	for _, c := range st.VCPUs {
		info.VCPUs = append(info.VCPUs, VCPUInfo{Index: c.Index, TID: c.TID, Name: c.Thread, Affinity: c.Affinity})
	}
	return info
}
