package vnet

import (
	"context"
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

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
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
	// rxRefillGrace is how long a frame that the posted receive buffers
	// cannot hold waits for the driver to post more (a refill under way)
	// before it is dropped and the buffers go back: a frame that fits no
	// posted buffers never holds the receive queue longer.
	rxRefillGrace = 20 * time.Millisecond

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
	log     *ratelog.Logger // the guest causes most of what is logged
	qsize   uint16
	offered uint64

	rxKick, txKick chan struct{} // one pending kick each

	mu  sync.Mutex  // activation lifecycle
	act *activation // nil: not running
	wg  sync.WaitGroup

	// rxBuf and txBuf hold one frame each (maxFrame, whatever the driver
	// negotiated); only the running activation's goroutines use them.
	rxBuf, txBuf []byte

	txFrames, txBytes, txDropped atomic.Uint64
	rxFrames, rxBytes, rxDropped atomic.Uint64
}

// activation is everything the device derives from what the driver
// negotiated and set up: the features, the queues (their sizes) and
// what is sized by them. Activate makes a new one at every DRIVER_OK and
// Reset drops it, so nothing of one driver's choices outlives a reset into
// the next (a driver may bring the device up again with other queue sizes
// or features: virtio 1.2, 4.1.4.3).
type activation struct {
	h        virtio.Host
	rx, tx   *virtio.Queue
	features uint64
	mrg      bool // VIRTIO_NET_F_MRG_RXBUF: a frame may take several chains
	offload  int  // the tap's TUNSETOFFLOAD flags for these features
	// rxChains holds the chains one receive takes: as many as the receive
	// queue can hold (each chain takes at least one descriptor).
	rxChains []virtio.Chain
	txChain  virtio.Chain
	// ctx ends when Reset stops the activation; stop is its Done.
	ctx    context.Context
	cancel context.CancelFunc
	stop   <-chan struct{}
}

func newActivation(h virtio.Host, features uint64, rx, tx *virtio.Queue) *activation {
	a := &activation{h: h, rx: rx, tx: tx, features: features, mrg: features&FeatureMrgRxbuf != 0,
		rxChains: make([]virtio.Chain, rx.Size)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.stop = a.ctx.Done()
	for _, m := range []struct {
		feature uint64
		flag    int
	}{{FeatureGuestCsum, tunFCsum}, {FeatureGuestTSO4, tunFTSO4}, {FeatureGuestTSO6, tunFTSO6}, {FeatureGuestECN, tunFTSOECN}, {FeatureGuestUFO, tunFUFO}} {
		if features&m.feature != 0 {
			a.offload |= m.flag
		}
	}
	if !a.mrg {
		a.rxChains = a.rxChains[:1] // one chain per frame
	}
	return a
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
	n := &Net{tap: cfg.Tap, raw: raw, log: ratelog.Default(cfg.Log), qsize: qs,
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

// Activate implements virtio.Device: it derives everything the device
// needs from the negotiated features and the queues as they are now (an
// activation), sets the tap's offloads to what the guest accepts and
// starts the receive and transmit goroutines.
func (n *Net) Activate(h virtio.Host, features uint64, qs []*virtio.Queue) error {
	if len(qs) != 2 || qs[rxQueue] == nil || qs[txQueue] == nil {
		return errors.New("virtio-net: the driver did not enable both queues")
	}
	a := newActivation(h, features, qs[rxQueue], qs[txQueue])
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.act != nil {
		return errors.New("virtio-net: activated twice without a reset")
	}
	if err := n.setOffload(a.offload); err != nil {
		a.cancel()
		return err
	}
	// A reset left deadlines in the past to stop the goroutines.
	if err := n.tap.SetDeadline(time.Time{}); err != nil {
		a.cancel()
		return fmt.Errorf("virtio-net: tap: %w", err)
	}
	n.act = a
	n.wg.Add(2)
	go n.rxLoop(a)
	go n.txLoop(a)
	n.log.Slog().Debug("virtio-net: running", "features", fmt.Sprintf("%#x", features), "offload", a.offload,
		"rx_queue", a.rx.Size, "tx_queue", a.tx.Size)
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
	if n.act == nil {
		return
	}
	n.act.cancel()
	n.tap.SetDeadline(time.Unix(1, 0))
	n.wg.Wait()
	n.act = nil
	if err := n.setOffload(0); err != nil {
		n.log.Warn("virtio-net: reset offloads", "err", err)
	}
}

// Close stops the device; the tap stays open (its owner closes it).
func (n *Net) Close() error {
	n.Reset()
	n.log.Flush()
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

// txLoop sends the transmit queue's frames to the tap: what the driver
// made available before DRIVER_OK first, then at every kick.
func (n *Net) txLoop(a *activation) {
	defer n.wg.Done()
	for n.txDrain(a) {
		select {
		case <-a.stop:
			return
		case <-n.txKick:
		}
	}
}

// txDrain sends what is available; false when the device must stop.
func (n *Net) txDrain(a *activation) bool {
	h, q, stop := a.h, a.tx, a.stop
	c := &a.txChain
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
			// type it does not know), or any while it is down: the
			// guest's loss, counted.
			n.txDropped.Add(1)
			n.log.Debug("virtio-net: tap refused a frame", "len", len(frame), "err", err, "dropped", n.txDropped.Load())
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
		if err := q.Mem.Read(b.Addr, n.txBuf[total:total+int(b.Len)]); err != nil {
			return nil, err
		}
		total += int(b.Len)
	}
	if total < HeaderLen {
		return nil, fmt.Errorf("frame of %d bytes, shorter than its %d-byte header", total, HeaderLen)
	}
	return n.txBuf[:total], nil
}

// rxLoop reads frames from the tap into the receive queue. A read error
// that passes (internal/retry: out of memory or buffers for a moment) is
// retried with back-off; any other ends receiving until the next reset.
func (n *Net) rxLoop(a *activation) {
	defer n.wg.Done()
	var b retry.Backoff
	for {
		m, err := n.tap.Read(n.rxBuf)
		if err != nil {
			if stopped(a.stop) || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if retry.Transient(err) {
				n.log.Warn("virtio-net: tap read failed; retrying", "err", err)
				if !retry.Sleep(a.ctx, b.Next()) {
					return
				}
				continue
			}
			n.log.Warn("virtio-net: tap read failed; receive stops until the driver resets the device", "err", err)
			return
		}
		b.Reset()
		if m < HeaderLen {
			n.rxDropped.Add(1)
			continue
		}
		if !n.receive(a, n.rxBuf[:m]) {
			return
		}
	}
}

// receive puts one frame (with its header) into receive buffers: one
// chain, or with VIRTIO_NET_F_MRG_RXBUF as many as it takes, published
// together. With no buffer posted it waits for the driver to post one
// (holding nothing). A frame that the posted buffers cannot hold is
// dropped, counted, and the buffers it took go back with nothing written:
// at once when they are every buffer the receive queue can hold (its
// descriptor table is used up) or the one chain a frame may take without
// merged buffers, else after rxRefillGrace without the driver posting
// more. It never waits holding buffers for longer.
func (n *Net) receive(a *activation, frame []byte) bool {
	h, q := a.h, a.rx
	chains, room, descs := 0, 0, 0
	var grace *time.Timer // runs while buffers too small are held
	graceOver := false
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	for room < len(frame) && chains < len(a.rxChains) && descs < int(q.Size) {
		c := &a.rxChains[chains]
		ok, err := q.PopInto(c)
		if err != nil {
			h.Fail(fmt.Errorf("virtio-net: receive queue: %w", err))
			return false
		}
		if !ok {
			if graceOver {
				break // the frame fits no posted buffers
			}
			var expired <-chan time.Time
			if chains > 0 {
				// Holding buffers too small for the frame, with no
				// more posted: wait a little for a refill, then drop.
				if grace == nil {
					grace = time.NewTimer(rxRefillGrace)
				}
				expired = grace.C
			}
			select {
			case <-a.stop:
				return false
			case <-n.rxKick:
			case <-expired:
				graceOver = true // one more look, then drop
			}
			continue
		}
		if len(c.Readable) != 0 {
			h.Fail(fmt.Errorf("virtio-net: receive chain %d: readable buffer", c.Head))
			return false
		}
		chains++
		descs += c.Descriptors()
		for _, b := range c.Writable {
			room += int(b.Len)
		}
	}
	fits := room >= len(frame)
	if fits {
		frame[10], frame[11] = byte(chains), byte(chains>>8) // num_buffers
	}
	rest := frame
	for i := range chains {
		c := &a.rxChains[i]
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
		n.log.Debug("virtio-net: frame larger than the posted receive buffers; dropped", "len", len(frame), "room", room,
			"chains", chains, "queue", q.Size, "dropped", n.rxDropped.Load())
	}
	return n.publish(h, q, rxQueue)
}
