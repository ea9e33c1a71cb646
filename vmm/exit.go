package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/popvmm/popvmm/vmm/bus"
)

// Offsets into struct kvm_run (include/uapi/linux/kvm.h, x86-64): the
// header, then the exit-specific union at 32.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32

	// KVM_EXIT_IO: direction u8, size u8, port u16, count u32, data_offset u64.
	ioDirection  = runUnion
	ioSize       = runUnion + 1
	ioPort       = runUnion + 2
	ioCount      = runUnion + 4
	ioDataOffset = runUnion + 8
	// KVM_EXIT_MMIO: phys_addr u64, data [8]u8, len u32, is_write u8.
	mmioAddr  = runUnion
	mmioData  = runUnion + 8
	mmioLen   = runUnion + 16
	mmioWrite = runUnion + 20
	// KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason u64, cpu u32.
	failReason = runUnion
	// KVM_EXIT_INTERNAL_ERROR: suberror u32, ndata u32, data [16]u64.
	internalSuberror = runUnion
	internalNData    = runUnion + 4
	internalData     = runUnion + 8
	// KVM_EXIT_SYSTEM_EVENT: type u32, ndata u32, data [16]u64.
	sysEventType = runUnion

	runHeaderSize = runUnion + 256
)

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24

	ioIn  = 0
	ioOut = 1

	systemEventShutdown = 1
	systemEventReset    = 2
	systemEventCrash    = 3
)

// ExitName names an exit reason for status and logs.
func ExitName(reason uint32) string {
	switch reason {
	case ExitUnknown:
		return "unknown"
	case ExitException:
		return "exception"
	case ExitIO:
		return "io"
	case ExitDebug:
		return "debug"
	case ExitHLT:
		return "hlt"
	case ExitMMIO:
		return "mmio"
	case ExitShutdown:
		return "shutdown"
	case ExitFailEntry:
		return "fail_entry"
	case ExitIntr:
		return "intr"
	case ExitInternalError:
		return "internal_error"
	case ExitSystemEvent:
		return "system_event"
	}
	return fmt.Sprintf("exit%d", reason)
}

// Action is what the vCPU loop does after an exit.
type Action int

// Actions.
const (
	ActionContinue Action = iota // run the vCPU again
	ActionHalt                   // the vCPU halted: wait for an interrupt (without in-kernel irqchip)
	ActionPowerOff               // the guest powered off
	ActionReset                  // the guest asked for a reset (restart policy decides)
	ActionCrash                  // triple fault, guest-reported crash, or entry failure: this kernel only
)

func (a Action) String() string {
	return [...]string{"continue", "halt", "poweroff", "reset", "crash"}[a]
}

// Exit is a decoded exit, for counters and error messages.
type Exit struct {
	Reason uint32
	Detail string // set for ActionCrash, e.g. the internal error's suberror and data
	// Addr is the port (ExitIO) or guest-physical address (ExitMMIO)
	// accessed, Size the access's bytes (times the count of a string
	// I/O) and Write its direction.
	Addr  uint64
	Size  int
	Write bool
}

// String describes the exit for a crash report: "io out 0x3f8 (1 byte)",
// "mmio read 0xfee00030 (4 bytes)", or the exit's name.
func (e Exit) String() string {
	var kind, dir string
	switch e.Reason {
	case ExitIO:
		kind, dir = "io", "in"
		if e.Write {
			dir = "out"
		}
	case ExitMMIO:
		kind, dir = "mmio", "read"
		if e.Write {
			dir = "write"
		}
	default:
		return ExitName(e.Reason)
	}
	unit := "bytes"
	if e.Size == 1 {
		unit = "byte"
	}
	return fmt.Sprintf("%s %s %#x (%d %s)", kind, dir, e.Addr, e.Size, unit)
}

// HandleExit decodes the exit in run (the vCPU's mmapped kvm_run) and
// performs it: port I/O and MMIO go to the buses (for reads the device's
// answer is written back into run, where KVM picks it up at the next
// KVM_RUN). It is a pure function of run and the buses, so every exit can
// be tested with a fabricated run page. Nothing in run is trusted as an
// offset without a bounds check.
func HandleExit(run []byte, pio, mmio *bus.Bus) (Action, Exit, error) {
	if len(run) < runHeaderSize {
		return ActionCrash, Exit{}, fmt.Errorf("kvm_run of %d bytes", len(run))
	}
	le := binary.LittleEndian
	reason := le.Uint32(run[runExitReason:])
	e := Exit{Reason: reason}
	switch reason {
	case ExitIO:
		size := int(run[ioSize])
		count := int(le.Uint32(run[ioCount:]))
		off := le.Uint64(run[ioDataOffset:])
		port := uint64(le.Uint16(run[ioPort:]))
		e.Addr, e.Size, e.Write = port, size*count, run[ioDirection] == ioOut
		if size != 1 && size != 2 && size != 4 {
			return ActionCrash, e, fmt.Errorf("port I/O of %d bytes", size)
		}
		n := uint64(size) * uint64(count)
		if off > uint64(len(run)) || n > uint64(len(run))-off {
			return ActionCrash, e, fmt.Errorf("port I/O data at %#x+%d outside kvm_run", off, n)
		}
		data := run[off : off+n]
		for i := range count {
			d := data[i*size : (i+1)*size]
			if run[ioDirection] == ioOut {
				pio.Write(port, d)
			} else {
				pio.Read(port, d)
			}
		}
		return ActionContinue, e, nil
	case ExitMMIO:
		l := int(le.Uint32(run[mmioLen:]))
		if l < 1 || l > 8 {
			return ActionCrash, e, fmt.Errorf("MMIO access of %d bytes", l)
		}
		addr := le.Uint64(run[mmioAddr:])
		e.Addr, e.Size, e.Write = addr, l, run[mmioWrite] != 0
		data := run[mmioData : mmioData+l]
		if run[mmioWrite] != 0 {
			mmio.Write(addr, data)
		} else {
			mmio.Read(addr, data)
		}
		return ActionContinue, e, nil
	case ExitHLT:
		return ActionHalt, e, nil
	case ExitIntr:
		return ActionContinue, e, nil // a signal kicked us out (EINTR-like): not an error
	case ExitShutdown:
		e.Detail = "triple fault"
		return ActionCrash, e, nil
	case ExitFailEntry:
		e.Detail = fmt.Sprintf("hardware entry failure %#x", le.Uint64(run[failReason:]))
		return ActionCrash, e, nil
	case ExitInternalError:
		nd := min(int(le.Uint32(run[internalNData:])), 16)
		e.Detail = fmt.Sprintf("internal error, suberror %d", le.Uint32(run[internalSuberror:]))
		for i := range nd {
			e.Detail += fmt.Sprintf(" %#x", le.Uint64(run[internalData+8*i:]))
		}
		return ActionCrash, e, nil
	case ExitSystemEvent:
		switch le.Uint32(run[sysEventType:]) {
		case systemEventShutdown:
			return ActionPowerOff, e, nil
		case systemEventReset:
			return ActionReset, e, nil
		case systemEventCrash:
			e.Detail = "guest reported a crash"
			return ActionCrash, e, nil
		}
		return ActionContinue, e, nil
	}
	e.Detail = "unexpected exit " + ExitName(reason)
	return ActionCrash, e, nil
}

// SetImmediateExit sets or clears kvm_run.immediate_exit: set, the next
// KVM_RUN returns at once with EINTR; how a stop request kicks a vCPU.
func SetImmediateExit(run []byte, on bool) {
	if on {
		run[runImmediateExit] = 1
	} else {
		run[runImmediateExit] = 0
	}
}
