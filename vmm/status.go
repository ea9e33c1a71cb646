package vmm

import (
	"time"
)

// Ending is how a VM ended.
type Ending string

// Endings. A guest reset under RestartAlways is a reboot, not an ending.
const (
	EndingNone     Ending = ""          // created or running
	EndingHostStop Ending = "host-stop" // Stop or Close from the host (also before Start)
	EndingPowerOff Ending = "poweroff"  // the guest powered off (state stopped)
	EndingReset    Ending = "reset"     // the guest reset under RestartNever (state crashed)
	// EndingCrash: a triple fault, an entry failure, a KVM_RUN error, a
	// guest-reported crash (pvpanic, KVM_SYSTEM_EVENT_CRASH), a reboot
	// that failed, or Crash from the host (state crashed).
	EndingCrash Ending = "crash"
)

// Status is what the supervisor shows of a VM.
type Status struct {
	Name   string `json:"name"`
	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"` // why it stopped or crashed, for people
	// Ending is how the VM ended, for code to act on (never parse
	// Reason): empty while created or running.
	Ending Ending `json:"ending,omitempty"`
	// Started is when Start ran (zero before); Uptime runs until the VM
	// stops or crashes.
	Started time.Time     `json:"started"`
	Uptime  time.Duration `json:"uptime"`
	Resets  int           `json:"resets"` // reboots done under RestartAlways
	Memory  uint64        `json:"memory"` // guest RAM bytes
	VCPUs   []VCPUStatus  `json:"vcpus"`
	// Exits counts vCPU exits to userspace by reason (ExitName), all
	// vCPUs together; "intr" counts kicks and signals.
	Exits map[string]uint64 `json:"exits"`
}

// VCPUStatus is one vCPU's thread.
type VCPUStatus struct {
	Index  int    `json:"index"`
	Thread string `json:"thread"` // popvmm/<kernel>/vcpu<N>
	Comm   string `json:"comm"`   // the 15-byte name the host kernel shows
	TID    int    `json:"tid"`    // 0 when not running
	// HostCPU is the core the config pins it to; Affinity is what the
	// thread's affinity mask actually holds (read back while it runs).
	HostCPU  int               `json:"host_cpu"`
	Affinity []int             `json:"affinity,omitempty"`
	Exits    map[string]uint64 `json:"exits"`
}

// Status reports the VM's state, threads and counters.
func (v *VM) Status() Status {
	v.mu.Lock()
	s := Status{Name: v.cfg.Name, State: v.state, Reason: v.reason, Ending: v.ending, Started: v.started,
		Resets: v.resets, Memory: ramBytes(v.cfg.Layout), Exits: map[string]uint64{}}
	switch {
	case v.started.IsZero():
	case v.ended.IsZero():
		s.Uptime = time.Since(v.started)
	default:
		s.Uptime = v.ended.Sub(v.started)
	}
	v.mu.Unlock()
	for _, st := range v.stats {
		vs := VCPUStatus{Index: st.index, Thread: st.full, Comm: st.comm, TID: int(st.tid.Load()),
			HostCPU: st.cpu, Exits: map[string]uint64{}}
		if vs.TID != 0 {
			vs.Affinity, _ = threadAffinity(vs.TID)
		}
		for r := range st.exits {
			if n := st.exits[r].Load(); n > 0 {
				vs.Exits[ExitName(uint32(r))] += n
				s.Exits[ExitName(uint32(r))] += n
			}
		}
		s.VCPUs = append(s.VCPUs, vs)
	}
	return s
}
