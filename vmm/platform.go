package vmm

import "github.com/popvmm/popvmm/vmm/bus"

// The platform's own ports, which a PC has on its chipset and popvmm
// keeps in the VM: the keyboard controller's reset line and pvpanic.
const (
	// I8042Port is the i8042 command/status port; writing 0xFE pulses the
	// CPU reset line (Linux's "kbd" reboot method).
	I8042Port = 0x64
	// PVPanicPort is QEMU's pvpanic ISA port: a guest writes bit 0 when it
	// panics.
	PVPanicPort = 0x505
)

// i8042 is the reset half of a PS/2 controller: command 0xFE requests a
// reset, everything else is ignored. Its status reads i8042Status: the
// input buffer is empty (a reboot's kb_wait goes straight to the 0xFE
// write) and the output buffer always full, which Linux's i8042_flush
// (drivers/input/serio/i8042.c) takes for "No controller found" at once.
// A status of 0 made the driver time out on each controller command
// instead: about 2 s of every boot ("Can't read CTR").
type i8042 struct{ exit func(Ending, string) }

// i8042Status is OBF (bit 0) set, IBF (bit 1) clear.
const i8042Status = 0x01

var _ bus.Device = (*i8042)(nil)

func (d *i8042) Read(_ uint64, data []byte) {
	clear(data)
	if len(data) > 0 {
		data[0] = i8042Status
	}
}

func (d *i8042) Write(_ uint64, data []byte) {
	if len(data) == 1 && data[0] == 0xfe {
		d.exit(EndingReset, "reset requested by the guest (i8042 reset line)")
	}
}

// pvpanic reports features panicked|crash-loaded and turns a panicked
// write into a crash.
type pvpanic struct{ exit func(Ending, string) }

var _ bus.Device = (*pvpanic)(nil)

const pvpanicPanicked, pvpanicCrashLoaded = 1, 2

func (d *pvpanic) Read(_ uint64, data []byte) {
	clear(data)
	data[0] = pvpanicPanicked | pvpanicCrashLoaded
}

func (d *pvpanic) Write(_ uint64, data []byte) {
	if data[0]&pvpanicPanicked != 0 {
		d.exit(EndingCrash, "guest panic (pvpanic)")
	}
}
