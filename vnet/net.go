package vnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vmm/virtio"
)

// virtio-net feature bits (virtio 1.2, 5.1.3).
const (
	FeatureCsum      = 1 << 0
	FeatureGuestCsum = 1 << 1
	FeatureMAC       = 1 << 5
	FeatureGuestTSO4 = 1 << 7
	FeatureGuestTSO6 = 1 << 8
	FeatureGuestECN  = 1 << 9
	FeatureGuestUFO  = 1 << 10
	FeatureHostTSO4  = 1 << 11
	FeatureHostTSO6  = 1 << 12
	FeatureHostECN   = 1 << 13
	FeatureHostUFO   = 1 << 14
	FeatureMrgRxbuf  = 1 << 15
	FeatureStatus    = 1 << 16
)

// Tap offload flags for TUNSETOFFLOAD (linux/if_tun.h): what the tap may
// hand the reader (the guest) unsegmented or without a checksum.
const (
	tunFCsum   = 0x01
	tunFTSO4   = 0x02
	tunFTSO6   = 0x04
	tunFTSOECN = 0x08
	tunFUFO    = 0x10
)

const (
	// HeaderLen is struct virtio_net_hdr_v1 (num_buffers included): what
	// every frame carries in both directions with VIRTIO_F_VERSION_1, and
	// what the tap is set to (TUNSETVNETHDRSZ).
	HeaderLen = 12
	// maxFrame is the largest frame with its header: a 64 KiB GSO frame
	// plus the Ethernet and VLAN headers, and some room.
	maxFrame = HeaderLen + 65536 + 256

	rxQueue, txQueue = 0, 1
	// DefaultQueueSize is each queue's maximum size.
	DefaultQueueSize = 256
	// txBatch bounds the used elements published at once on tx, so the
	// guest reclaims buffers while a long burst is still being sent.
	txBatch = 64

	configLen = 12 // mac, status, max_virtqueue_pairs, mtu
	linkUp    = 1  // VIRTIO_NET_S_LINK_UP
)

// NetConfig configures a virtio-net device.
type NetConfig struct {
	// MAC is the device's address (cluster.toml's kernel MAC).
	MAC net.HardwareAddr
	// Tap is the backend: a tap opened with IFF_VNET_HDR in non-blocking
	// mode (Tap.File). The device sets its header size and offloads; it
	// does not close it.
	Tap *os.File
	// QueueSize is the largest size of each queue; 0: DefaultQueueSize.
	QueueSize uint16
	Log       *slog.Logger
}

// NetStats counts what a device moved and dropped.
type NetStats struct {
	TxFrames, TxBytes, TxDropped uint64
	RxFrames, RxBytes, RxDropped uint64
}

// Net is a virtio-net device (virtio 1.2, 5.1) on a tap: one receive and
// one transmit queue, each served by a goroutine of its own while the
// driver has the device running, so that vCPU threads only ever post a
// kick. Frames keep their virtio_net_hdr end to end: checksum and
// segmentation offloads pass between guest and tap untouched.
type Net struct {
	mac     [6]byte
	tap     *os.File
	raw     syscall.RawConn
	log     *slog.Logger
	qsize   uint16
	offered uint64

	rxKick, txKick chan struct{} // one pending kick each

	mu      sync.Mutex // activation lifecycle
	running bool
	stop    chan struct{}
	wg      sync.WaitGroup

	rxBuf, txBuf []byte
	rxChains     []virtio.Chain // the chains one merged receive takes
	txChain      virtio.Chain

	txFrames, txBytes, txDropped atomic.Uint64
	rxFrames, rxBytes, rxDropped atomic.Uint64
}

var _ virtio.Device = (*Net)(nil)

// NewNet makes the device and prepares its tap: 12-byte headers, no
// offloads until a driver negotiates them. Offloads the tap cannot take
// (UFO on kernels without it) are not offered.
func NewNet(cfg NetConfig) (*Net, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("virtio-net: MAC %q is not 6 bytes", cfg.MAC)
	}
	if cfg.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("virtio-net: MAC %s is a multicast address", cfg.MAC)
	}
	if cfg.Tap == nil {
		return nil, errors.New("virtio-net: no tap")
	}
	raw, err := cfg.Tap.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("virtio-net: tap: %w", err)
	}
	qs := cfg.QueueSize
	if qs == 0 {
		qs = DefaultQueueSize
	}
	if qs > virtio.MaxQueueSize || qs&(qs-1) != 0 {
		return nil, fmt.Errorf("virtio-net: queue size %d is not a power of two up to %d", qs, virtio.MaxQueueSize)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Net{tap: cfg.Tap, raw: raw, log: log, qsize: qs,
		rxKick: make(chan struct{}, 1), txKick: make(chan struct{}, 1),
		rxBuf: make([]byte, maxFrame), txBuf: make([]byte, maxFrame),
	}
	copy(n.mac[:], cfg.MAC)
	if err := n.ioctl("TUNSETVNETHDRSZ", func(fd int) error { return unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderLen) }); err != nil {
		return nil, err
	}
	n.offered = virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | FeatureMAC | FeatureStatus | FeatureMrgRxbuf |
		FeatureCsum | FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN
	if n.setOffload(tunFCsum|tunFTSO4|tunFTSO6|tunFTSOECN) == nil {
		n.offered |= FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN
		if n.setOffload(tunFCsum|tunFUFO) == nil {
			n.offered |= FeatureGuestUFO | FeatureHostUFO
		}
	} else if n.setOffload(tunFCsum) == nil {
		n.offered |= FeatureGuestCsum
	}
	if err := n.setOffload(0); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Net) ioctl(name string, f func(fd int) error) error {
	var ierr error
	if err := n.raw.Control(func(fd uintptr) { ierr = f(int(fd)) }); err != nil {
		return fmt.Errorf("virtio-net: tap: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("virtio-net: tap: %w", os.NewSyscallError(name, ierr))
	}
	return nil
}

func (n *Net) setOffload(flags int) error {
	return n.ioctl("TUNSETOFFLOAD", func(fd int) error { return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags) })
}

// DeviceID implements virtio.Device.
func (n *Net) DeviceID() uint16 { return 1 }

// Class implements virtio.Device: an Ethernet controller.
func (n *Net) Class() uint32 { return 0x020000 }

// Features implements virtio.Device.
func (n *Net) Features() uint64 { return n.offered }

// QueueMax implements virtio.Device: receive queue 0, transmit queue 1.
func (n *Net) QueueMax() []uint16 { return []uint16{n.qsize, n.qsize} }

// ConfigLen implements virtio.Device.
func (n *Net) ConfigLen() int { return configLen }

// ReadConfig implements virtio.Device: struct virtio_net_config.
func (n *Net) ReadConfig(off int, data []byte) {
	var b [configLen]byte
	copy(b[:], n.mac[:])
	b[6] = linkUp
	b[8] = 1                  // max_virtqueue_pairs
	b[10], b[11] = 0xdc, 0x05 // mtu 1500
	for i := range data {
		data[i] = 0
		if off+i < len(b) {
			data[i] = b[off+i]
		}
	}
}

// WriteConfig implements virtio.Device: the configuration is read-only
// (the MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR, not offered).
func (n *Net) WriteConfig(int, []byte) {}

// Stats returns the device's counters.
func (n *Net) Stats() NetStats {
	return NetStats{
		TxFrames: n.txFrames.Load(), TxBytes: n.txBytes.Load(), TxDropped: n.txDropped.Load(),
		RxFrames: n.rxFrames.Load(), RxBytes: n.rxBytes.Load(), RxDropped: n.rxDropped.Load(),
	}
}

// Activate implements virtio.Device: it sets the tap's offloads to what
// the guest accepts and starts the receive and transmit goroutines.
func (n *Net) Activate(h virtio.Host, features uint64, qs []*virtio.Queue) error {
	if len(qs) != 2 || qs[rxQueue] == nil || qs[txQueue] == nil {
		return errors.New("virtio-net: the driver did not enable both queues")
	}
	off := 0
	for _, m := range []struct {
		feature uint64
		flag    int
	}{{FeatureGuestCsum, tunFCsum}, {FeatureGuestTSO4, tunFTSO4}, {FeatureGuestTSO6, tunFTSO6}, {FeatureGuestECN, tunFTSOECN}, {FeatureGuestUFO, tunFUFO}} {
		if features&m.feature != 0 {
			off |= m.flag
		}
	}
	if err := n.setOffload(off); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return errors.New("virtio-net: activated twice without a reset")
	}
	// A reset left deadlines in the past to stop the goroutines.
	if err := n.tap.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("virtio-net: tap: %w", err)
	}
	n.running = true
	n.stop = make(chan struct{})
	mrg := features&FeatureMrgRxbuf != 0
	n.wg.Add(2)
	go n.rxLoop(h, qs[rxQueue], mrg, n.stop)
	go n.txLoop(h, qs[txQueue], n.stop)
	n.log.Debug("virtio-net: running", "features", fmt.Sprintf("%#x", features), "offload", off)
	return nil
}

// Notify implements virtio.Device: a kick wakes the queue's goroutine
// (rx: the driver added receive buffers; tx: frames to send).
func (n *Net) Notify(q int) {
	ch := n.txKick
	if q == rxQueue {
		ch = n.rxKick
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Reset implements virtio.Device: it stops both goroutines (a blocked tap
// read or write is cut short with a deadline) and waits for them.
func (n *Net) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	close(n.stop)
	n.tap.SetDeadline(time.Unix(1, 0))
	n.wg.Wait()
	n.running = false
	if err := n.setOffload(0); err != nil {
		n.log.Warn("virtio-net: reset offloads", "err", err)
	}
}

// Close stops the device; the tap stays open (its owner closes it).
func (n *Net) Close() error {
	n.Reset()
	return nil
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// txLoop sends the transmit queue's frames to the tap.
func (n *Net) txLoop(h virtio.Host, q *virtio.Queue, stop <-chan struct{}) {
	defer n.wg.Done()
	for {
		select {
		case <-stop:
			return
		case <-n.txKick:
		}
		if !n.txDrain(h, q, stop) {
			return
		}
	}
}

// txDrain sends what is available; false when the device must stop.
func (n *Net) txDrain(h virtio.Host, q *virtio.Queue, stop <-chan struct{}) bool {
	c := &n.txChain
	pending := 0
	for {
		ok, err := q.PopInto(c)
		if err != nil {
			h.Fail(fmt.Errorf("virtio-net: transmit queue: %w", err))
			return false
		}
		if !ok {
			break
		}
		frame, err := n.gather(q, c)
		if err != nil {
			h.Fail(fmt.Errorf("virtio-net: transmit chain %d: %w", c.Head, err))
			return false
		}
		if _, err := n.tap.Write(frame); err != nil {
			if stopped(stop) {
				return false
			}
			// The tap refuses a frame whose header it cannot take (a GSO
			// type it does not know): the guest's loss, counted.
			n.txDropped.Add(1)
			n.log.Debug("virtio-net: tap refused a frame", "len", len(frame), "err", err)
		} else {
			n.txFrames.Add(1)
			n.txBytes.Add(uint64(len(frame) - HeaderLen))
		}
		if err := q.AddUsed(c.Head, 0); err != nil {
			h.Fail(fmt.Errorf("virtio-net: transmit queue: %w", err))
			return false
		}
		if pending++; pending == txBatch {
			if !n.publish(h, q, txQueue) || stopped(stop) {
				return false
			}
			pending = 0
		}
	}
	return n.publish(h, q, txQueue)
}

func (n *Net) publish(h virtio.Host, q *virtio.Queue, queue int) bool {
	notify, err := q.PublishUsed()
	if err != nil {
		h.Fail(fmt.Errorf("virtio-net: queue %d: %w", queue, err))
		return false
	}
	if notify {
		h.Interrupt(queue)
	}
	return true
}

// gather copies a transmit chain (header and frame, readable buffers
// only) into txBuf.
func (n *Net) gather(q *virtio.Queue, c *virtio.Chain) ([]byte, error) {
	if len(c.Writable) != 0 {
		return nil, errors.New("writable buffer in a transmit chain")
	}
	total := 0
	for _, b := range c.Readable {
		if total+int(b.Len) > len(n.txBuf) {
			return nil, fmt.Errorf("frame of more than %d bytes", len(n.txBuf))
		}
		s, err := q.Mem.Slice(b.Addr, uint64(b.Len))
		if err != nil {
			return nil, err
		}
		total += copy(n.txBuf[total:], s)
	}
	if total < HeaderLen {
		return nil, fmt.Errorf("frame of %d bytes, shorter than its %d-byte header", total, HeaderLen)
	}
	return n.txBuf[:total], nil
}

// rxLoop reads frames from the tap into the receive queue.
func (n *Net) rxLoop(h virtio.Host, q *virtio.Queue, mrg bool, stop <-chan struct{}) {
	defer n.wg.Done()
	for {
		m, err := n.tap.Read(n.rxBuf)
		if err != nil {
			if !stopped(stop) && !errors.Is(err, os.ErrDeadlineExceeded) {
				n.log.Warn("virtio-net: tap read", "err", err)
			}
			return
		}
		if m < HeaderLen {
			n.rxDropped.Add(1)
			continue
		}
		if !n.receive(h, q, n.rxBuf[:m], mrg, stop) {
			return
		}
	}
}

// receive puts one frame (with its header) into receive buffers: one
// chain, or with VIRTIO_NET_F_MRG_RXBUF as many as it takes, published
// together. It waits for the driver to add buffers when there are none.
func (n *Net) receive(h virtio.Host, q *virtio.Queue, frame []byte, mrg bool, stop <-chan struct{}) bool {
	if n.rxChains == nil {
		n.rxChains = make([]virtio.Chain, q.Size)
	}
	chains, room := 0, 0
	for room < len(frame) {
		if chains == len(n.rxChains) {
			break // more chains than the queue holds: never fits
		}
		c := &n.rxChains[chains]
		ok, err := q.PopInto(c)
		if err != nil {
			h.Fail(fmt.Errorf("virtio-net: receive queue: %w", err))
			return false
		}
		if !ok {
			select {
			case <-stop:
				return false
			case <-n.rxKick:
			}
			continue
		}
		if len(c.Readable) != 0 {
			h.Fail(fmt.Errorf("virtio-net: receive chain %d: readable buffer", c.Head))
			return false
		}
		chains++
		for _, b := range c.Writable {
			room += int(b.Len)
		}
		if !mrg {
			break
		}
	}
	fits := room >= len(frame)
	if fits {
		frame[10], frame[11] = byte(chains), byte(chains>>8) // num_buffers
	}
	rest := frame
	for i := range chains {
		c := &n.rxChains[i]
		written := 0
		if fits {
			for _, b := range c.Writable {
				if len(rest) == 0 {
					break
				}
				k := min(int(b.Len), len(rest))
				if err := q.Mem.Write(b.Addr, rest[:k]); err != nil {
					h.Fail(fmt.Errorf("virtio-net: receive chain %d: %w", c.Head, err))
					return false
				}
				rest = rest[k:]
				written += k
			}
		}
		// A frame that does not fit goes back with nothing written:
		// the driver recycles the buffer, the frame is dropped.
		if err := q.AddUsed(c.Head, uint32(written)); err != nil {
			h.Fail(fmt.Errorf("virtio-net: receive queue: %w", err))
			return false
		}
	}
	if fits {
		n.rxFrames.Add(1)
		n.rxBytes.Add(uint64(len(frame) - HeaderLen))
	} else {
		n.rxDropped.Add(1)
		n.log.Debug("virtio-net: frame larger than the receive buffers", "len", len(frame), "room", room)
	}
	return n.publish(h, q, rxQueue)
}
