package supervisor

import (
	"time"

	"github.com/popvmm/popvmm/ipi/agent"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/machine"
)

// The control protocol: a client connects to the control socket, writes one
// JSON Request on one line, and reads one JSON Response; then the supervisor
// closes the connection. docs/cli.md ("Control protocol") describes it.

// Ops a Request may carry.
const (
	OpStatus  = "status"  // the cluster's and every kernel's state
	OpDown    = "down"    // stop the cluster; the reply comes before the stop
	OpBoot    = "boot"    // boot a manual kernel (Name)
	OpWindow  = "msg"     // window messaging (`popvmm msg`): Action ping|info to Name, or stat
	OpConsole = "console" // a kernel's PTY and recent output (Name), for attach
)

// Actions of an OpWindow request.
const (
	ActionPing = "ping"
	ActionInfo = "info"
	ActionStat = "stat"
)

// Codes for a failed Response.
const (
	CodeBadRequest = "bad_request"
	CodeNotFound   = "not_found"
	CodeState      = "bad_state"   // the kernel's state does not allow the op
	CodeNoKVM      = "no_kvm"      // this supervisor runs no VMs (KVM unusable)
	CodeBootFailed = "boot_failed" // the kernel's VM did not start
)

// Request is one control request.
type Request struct {
	Op     string `json:"op"`
	Name   string `json:"name,omitempty"`
	Action string `json:"action,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK      bool          `json:"ok"`
	Error   string        `json:"error,omitempty"`
	Code    string        `json:"code,omitempty"`
	Status  *Status       `json:"status,omitempty"`
	Window  *WindowReply  `json:"msg,omitempty"`
	Console *ConsoleReply `json:"console,omitempty"`
}

// ConsoleReply answers OpConsole.
type ConsoleReply struct {
	PTY    string `json:"pty"`
	Replay []byte `json:"replay"`
	State  State  `json:"state"`
}

// WindowReply answers an OpWindow request.
type WindowReply struct {
	Peer  int         `json:"peer"`
	RTTns int64       `json:"rtt_ns,omitempty"`
	Info  *agent.Info `json:"info,omitempty"`
	Stat  *WindowStat `json:"stat,omitempty"`
}

// WindowStat is `popvmm msg stat`: popvmm's node counters and the peer
// table.
type WindowStat struct {
	Socket string         `json:"socket"`
	Node   msg.Stats      `json:"node"`
	Peers  []msg.PeerInfo `json:"peers"`
}

// Status is what `popvmm status` shows.
type Status struct {
	Cluster    string         `json:"cluster"`
	ConfigPath string         `json:"config_path"`
	RunDir     string         `json:"run_dir"`
	PID        int            `json:"pid"`
	Started    time.Time      `json:"started"`
	VMM        string         `json:"vmm"`
	Bridge     string         `json:"bridge"`
	Subnet     string         `json:"subnet"`
	HostIP     string         `json:"host_ip"`
	WindowSize uint64         `json:"window_size"`
	Window     string         `json:"window_socket"`
	Kernels    []KernelStatus `json:"kernels"`
	// Whether the bridge and the window's socket exist on the host now,
	// read from the host when the status is made; false: only planned.
	BridgeExists bool `json:"bridge_exists"`
	WindowExists bool `json:"window_exists"`
	// Winnet is the window network; nil: the cluster has none.
	Winnet *WinnetStatus `json:"winnet,omitempty"`
	// Migrations are the process migrations in flight (migrations.go).
	Migrations []MigrationStatus `json:"migrations,omitempty"`
}

// WinnetStatus is the window network (docs/winnet.md) in Status: its
// subnet and geometry, and every kernel's address and section of the
// window as the kernel last wrote it.
type WinnetStatus struct {
	Subnet  string         `json:"subnet"`
	Size    uint64         `json:"size"`
	MTU     int            `json:"mtu"`
	Ring    uint64         `json:"ring_bytes"`
	Kernels []WinnetKernel `json:"kernels"`
}

// WinnetKernel is one kernel on the window network: its win0 address,
// whether its driver is up, and what it counted per peer (frames, bytes,
// drops), peers without traffic left out.
type WinnetKernel struct {
	Name       string         `json:"name"`
	Address    string         `json:"address"`
	Up         bool           `json:"up"`
	Generation uint32         `json:"generation"`
	Heartbeat  uint64         `json:"heartbeat"`
	Peers      []WinnetCounts `json:"peers,omitempty"`
}

// WinnetCounts are a kernel's counters for one peer.
type WinnetCounts struct {
	Peer      string `json:"peer"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDrops   uint64 `json:"rx_drops"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDrops   uint64 `json:"tx_drops"`
}

// KernelStatus is one kernel's line in Status.
type KernelStatus struct {
	Name       string `json:"name"`
	PeerID     int    `json:"peer_id"`
	State      State  `json:"state"`
	Boot       string `json:"boot"`
	Flavour    string `json:"flavour"`
	CPUs       []int  `json:"cpus"`
	Memory     uint64 `json:"memory"`
	Backing    string `json:"backing"`
	IP         string `json:"ip"`
	MAC        string `json:"mac"`
	Tap        string `json:"tap"` // the host end of its NIC, on Status.Bridge
	Kernel     string `json:"kernel"`
	ConsoleLog string `json:"console_log"`
	// Run time: since when in State, how many boots, how the last run
	// ended, the running VM's detail, its console PTY.
	Since   time.Time     `json:"since"`
	Boots   int           `json:"boots"`
	Exit    *machine.Exit `json:"exit,omitempty"`
	Machine *machine.Info `json:"machine,omitempty"`
	PTY     string        `json:"pty,omitempty"`
	// TapExists: Tap is on the host now (read at status time); false while
	// the kernel has no NIC, Tap being only its planned name.
	TapExists bool `json:"tap_exists"`
}

// Kernel returns the named kernel's status, or nil.
func (s *Status) Kernel(name string) *KernelStatus {
	for i := range s.Kernels {
		if s.Kernels[i].Name == name {
			return &s.Kernels[i]
		}
	}
	return nil
}

// State is a kernel's lifecycle state: defined → booting → running →
// (stopped | crashed).
type State string

// Lifecycle states.
const (
	StateDefined State = "defined"
	StateBooting State = "booting"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StateCrashed State = "crashed"
)
