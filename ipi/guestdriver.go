package ipi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FindDevice returns the sysfs directory of the first window device under
// sysRoot ("" is /sys), e.g. /sys/bus/pci/devices/0000:00:03.0: a
// 1af4:1110 function with ivshmem's subsystem id (the window network's
// device has another, docs/winnet.md; a sysfs without the file counts as
// ivshmem's).
func FindDevice(sysRoot string) (string, error) {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	devs, err := filepath.Glob(filepath.Join(sysRoot, "bus/pci/devices/*"))
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		sub := hexFile(filepath.Join(d, "subsystem_device"))
		if hexFile(filepath.Join(d, "vendor")) == VendorID && hexFile(filepath.Join(d, "device")) == DeviceID && (sub == SubsystemID || sub == -1) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no shared-window device (PCI %04x:%04x) under %s", VendorID, DeviceID, sysRoot)
}

func hexFile(p string) int64 {
	b, err := os.ReadFile(p)
	if err != nil {
		return -1
	}
	var v int64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "0x%x", &v); err != nil {
		return -1
	}
	return v
}

// GuestDevice is the window device from inside a guest: BAR0 registers,
// BAR2 window, and the uio device for its interrupt.
type GuestDevice struct {
	Regs []byte // BAR0
	Mem  []byte // BAR2: the window
	uio  *os.File
	// config is the function's configuration space (sysfs): Wait unmasks
	// INTx there when the uio driver cannot (uio_pci_generic has no
	// irqcontrol: writing /dev/uioN fails with ENOSYS).
	config       *os.File
	configUnmask bool
	// NoIRQ is set when uio cannot enable the device's interrupt (no INTx
	// line routed, e.g. a device that only offers MSI-X): Wait then polls.
	NoIRQ bool
}

// noIRQPoll is how often Wait looks at the window when the device has no
// usable interrupt.
const noIRQPoll = time.Millisecond

// OpenGuestDevice maps the device found in dir (see FindDevice) and opens
// its uio node (uio_pci_generic must be bound to it).
func OpenGuestDevice(dir string) (*GuestDevice, error) {
	g := &GuestDevice{}
	var err error
	if g.Regs, err = mapResource(filepath.Join(dir, "resource0")); err != nil {
		return nil, err
	}
	if g.Mem, err = mapResource(filepath.Join(dir, "resource2")); err != nil {
		g.Close()
		return nil, err
	}
	uios, _ := filepath.Glob(filepath.Join(dir, "uio/uio*"))
	if len(uios) == 0 {
		g.Close()
		return nil, fmt.Errorf("%s has no uio device: bind uio_pci_generic to it", dir)
	}
	if g.uio, err = os.OpenFile("/dev/"+filepath.Base(uios[0]), os.O_RDWR, 0); err != nil {
		g.Close()
		return nil, err
	}
	if len(g.Regs) < RegDoorbell+4 {
		g.Close()
		return nil, fmt.Errorf("%s: BAR0 of %d bytes has no Doorbell register", dir, len(g.Regs))
	}
	g.config, _ = os.OpenFile(filepath.Join(dir, "config"), os.O_RDWR, 0) // nil: only uio can unmask
	// INTx mode: every source unmasked once and for all.
	binary.LittleEndian.PutUint32(g.Regs[RegIntrMask:], 0xffffffff)
	return g, nil
}

func mapResource(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return MapFd(int(f.Fd()), st.Size())
}

// ID is this peer's id (IVPosition).
func (g *GuestDevice) ID() int { return int(binary.LittleEndian.Uint32(g.Regs[RegIVPosition:])) }

// Ring interrupts vector 0 of peer through the Doorbell register.
func (g *GuestDevice) Ring(peer int) error {
	if len(g.Regs) < RegDoorbell+4 {
		return errors.New("BAR0 too small")
	}
	binary.LittleEndian.PutUint32(g.Regs[RegDoorbell:], DoorbellValue(peer, 0))
	return nil
}

// Wait blocks until the device interrupts or ctx ends: it re-enables the
// interrupt through uio (write 1), then waits for the uio event count.
//
// INTx (popvmm's window device, QEMU's ivshmem with msi=off) is level-
// triggered: a doorbell sets IntrStatus, and reading IntrStatus clears it
// and drops the line. uio_pci_generic masks the line (the command register's
// interrupt-disable bit) at every interrupt until the next Wait unmasks it,
// so a doorbell that comes between two Waits shows only in IntrStatus: Wait
// returns at once for it instead of clearing it and sleeping past it.
func (g *GuestDevice) Wait(ctx context.Context) error {
	if binary.LittleEndian.Uint32(g.Regs[RegIntrStatus:]) != 0 {
		return nil // a doorbell since the last wake-up
	}
	if g.NoIRQ {
		t := time.NewTimer(noIRQPoll)
		defer t.Stop()
		select {
		case <-t.C:
			return nil // a spurious wake-up: the caller re-checks its rings
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := g.unmask(); err != nil {
		if errors.Is(err, unix.EIO) {
			// uio has no interrupt for this device: poll instead.
			g.NoIRQ = true
			return nil
		}
		return fmt.Errorf("enable window interrupt: %w", err)
	}
	fd := int(g.uio.Fd())
	for ctx.Err() == nil {
		ms := 100
		if dl, ok := ctx.Deadline(); ok {
			ms = max(0, min(ms, int(time.Until(dl)/time.Millisecond)))
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			var count [4]byte
			_, err := unix.Read(fd, count[:])
			// Acknowledge the doorbell that interrupted: the next Wait
			// then sees only those that come after this wake-up.
			_ = binary.LittleEndian.Uint32(g.Regs[RegIntrStatus:])
			return err
		}
	}
	return ctx.Err()
}

// unmask re-enables the device's interrupt after uio_pci_generic masked
// it: through uio's irqcontrol (write 1) where the driver has one, else by
// clearing the command register's interrupt-disable bit in configuration
// space, as uio_pci_generic expects of its users.
func (g *GuestDevice) unmask() error {
	if !g.configUnmask {
		var one [4]byte
		binary.LittleEndian.PutUint32(one[:], 1)
		_, err := g.uio.Write(one[:])
		if err == nil || !errors.Is(err, unix.ENOSYS) || g.config == nil {
			return err
		}
		g.configUnmask = true
	}
	return unmaskINTx(g.config)
}

// commandIntxOff is the PCI command register's interrupt-disable bit.
const commandIntxOff = 1 << 10

// unmaskINTx clears the interrupt-disable bit of the command register
// (offset 4) in config, a function's configuration space.
func unmaskINTx(config io.ReaderAt) error {
	var b [2]byte
	if _, err := config.ReadAt(b[:], 4); err != nil {
		return fmt.Errorf("read command register: %w", err)
	}
	cmd := binary.LittleEndian.Uint16(b[:])
	if cmd&commandIntxOff == 0 {
		return nil
	}
	binary.LittleEndian.PutUint16(b[:], cmd&^commandIntxOff)
	w, ok := config.(io.WriterAt)
	if !ok {
		return errors.New("configuration space is read-only")
	}
	if _, err := w.WriteAt(b[:], 4); err != nil {
		return fmt.Errorf("write command register: %w", err)
	}
	return nil
}

// Close unmaps and closes everything.
func (g *GuestDevice) Close() error {
	if g.config != nil {
		g.config.Close()
	}
	if g.Regs != nil {
		Unmap(g.Regs)
	}
	if g.Mem != nil {
		Unmap(g.Mem)
	}
	if g.uio != nil {
		g.uio.Close()
	}
	return nil
}
