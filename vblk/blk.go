// Package vblk is the virtio-blk device (virtio 1.2, 5.2) on a raw disk
// image or block device: one request queue served by a dispatcher
// goroutine and a few I/O workers, so that a vCPU only ever posts a kick
// and no I/O runs on a vCPU thread. Every request is bounds-checked before
// it reaches the backend: a sector range past the end or a write to a
// read-only disk completes with VIRTIO_BLK_S_IOERR, an unknown request
// with VIRTIO_BLK_S_UNSUPP, and a chain without room for its header or
// status byte breaks the device (DEVICE_NEEDS_RESET). A host I/O error
// (EIO, ENOSPC) is an IOERR to the guest, counted, and the VM runs on.
// OpenDisk opens and locks the backing file (disk.go).
package vblk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/vmm/virtio"
)

// Feature bits (virtio 1.2, 5.2.3).
const (
	FeatureSegMax      = 1 << 2  // VIRTIO_BLK_F_SEG_MAX
	FeatureRO          = 1 << 5  // VIRTIO_BLK_F_RO
	FeatureBlkSize     = 1 << 6  // VIRTIO_BLK_F_BLK_SIZE
	FeatureFlush       = 1 << 9  // VIRTIO_BLK_F_FLUSH
	FeatureDiscard     = 1 << 13 // VIRTIO_BLK_F_DISCARD
	FeatureWriteZeroes = 1 << 14 // VIRTIO_BLK_F_WRITE_ZEROES
)

// Request types (struct virtio_blk_req's type, virtio 1.2, 5.2.6).
const (
	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeDiscard     = 11
	TypeWriteZeroes = 13
)

// Request status values, the last byte of every request.
const (
	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

const (
	// SectorSize is the unit of capacity and request sectors, whatever
	// the block size.
	SectorSize = 512
	// HeaderLen is struct virtio_blk_req's header: le32 type, le32
	// reserved, le64 sector.
	HeaderLen = 16
	// IDBytes is VIRTIO_BLK_ID_BYTES: the serial GET_ID returns.
	IDBytes = 20
	// segmentLen is struct virtio_blk_discard_write_zeroes: le64 sector,
	// le32 num_sectors, le32 flags (bit 0: unmap).
	segmentLen = 16
	// maxSegments bounds DISCARD and WRITE_ZEROES ranges per request.
	maxSegments = 32
	// maxRangeSectors bounds one DISCARD or WRITE_ZEROES range (1 GiB).
	maxRangeSectors = 1 << 21
	// configLen is struct virtio_blk_config up to write_zeroes_may_unmap
	// and its padding (virtio 1.2, 5.2.4).
	configLen = 0x3c
	// DefaultQueueSize is the queue's size unless Config says otherwise.
	DefaultQueueSize = 256
	// DefaultWorkers is how many requests run at once unless Config
	// says otherwise.
	DefaultWorkers = 4
)

// Config configures a virtio-blk device.
type Config struct {
	// Backend holds the disk's bytes; OpenDisk gives one for a file or
	// block device. Its size, in whole sectors, is the capacity.
	Backend Backend
	// ReadOnly offers VIRTIO_BLK_F_RO and refuses every write.
	ReadOnly bool
	// Serial is what GET_ID returns (up to 20 bytes).
	Serial string
	// QueueSize is the largest queue size (a power of two); 0:
	// DefaultQueueSize. Workers is how many requests run at once; 0:
	// DefaultWorkers.
	QueueSize uint16
	Workers   int
	Log       *slog.Logger
}

// Stats counts what a device did. Errors are requests that completed
// with IOERR because the host failed them (EIO, ENOSPC, ...); Refused
// those that a bounds or read-only check completed with IOERR or UNSUPP
// before they reached the backend.
type Stats struct {
	Reads, Writes, Flushes, Discards uint64
	ReadBytes, WriteBytes            uint64
	Errors, Refused                  uint64
}

// Block is a virtio-blk device.
type Block struct {
	cfg      Config
	sectors  uint64 // capacity
	offered  uint64
	qsize    uint16
	workers  int
	log      *slog.Logger
	warnings *ratelog.Logger // guest-caused lines, rate-limited

	kick chan struct{} // one pending kick

	mu      sync.Mutex // activation lifecycle
	running bool
	stop    chan struct{}
	wg      sync.WaitGroup

	reads, writes, flushes, discards atomic.Uint64
	readBytes, writeBytes            atomic.Uint64
	errs, refused                    atomic.Uint64
}

var _ virtio.Device = (*Block)(nil)

// New makes the device for cfg.Backend.
func New(cfg Config) (*Block, error) {
	if cfg.Backend == nil {
		return nil, errors.New("virtio-blk: no backend")
	}
	if len(cfg.Serial) > IDBytes {
		return nil, fmt.Errorf("virtio-blk: serial %q is over %d bytes", cfg.Serial, IDBytes)
	}
	size, err := cfg.Backend.Size()
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	qs := cfg.QueueSize
	if qs == 0 {
		qs = DefaultQueueSize
	}
	if qs&(qs-1) != 0 || qs < 4 || int(qs) > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-blk: queue size %d is not a power of two in 4-%d", qs, virtio.MaxQueueSize)
	}
	w := cfg.Workers
	if w <= 0 {
		w = DefaultWorkers
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Block{cfg: cfg, sectors: uint64(size) / SectorSize, qsize: qs, workers: w, log: log,
		warnings: ratelog.Default(log), kick: make(chan struct{}, 1)}
	b.offered = virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | FeatureSegMax | FeatureBlkSize | FeatureFlush
	if cfg.ReadOnly {
		b.offered |= FeatureRO
	} else {
		b.offered |= FeatureWriteZeroes
		if cfg.Backend.CanDiscard() {
			b.offered |= FeatureDiscard
		}
	}
	return b, nil
}

// DeviceID implements virtio.Device: 2, a block device.
func (b *Block) DeviceID() uint16 { return 2 }

// Class implements virtio.Device: mass storage (as QEMU's virtio-blk).
func (b *Block) Class() uint32 { return 0x010000 }

// Features implements virtio.Device.
func (b *Block) Features() uint64 { return b.offered }

// QueueMax implements virtio.Device: one request queue.
func (b *Block) QueueMax() []uint16 { return []uint16{b.qsize} }

// ConfigLen implements virtio.Device.
func (b *Block) ConfigLen() int { return configLen }

// ReadConfig implements virtio.Device: struct virtio_blk_config
// (virtio 1.2, 5.2.4), little-endian: capacity (0x00), seg_max (0x0c),
// blk_size (0x14), num_queues (0x22), the discard limits (0x24-0x2c) and
// the write-zeroes limits (0x30-0x38); geometry and topology read zero.
func (b *Block) ReadConfig(off int, data []byte) {
	var c [configLen]byte
	le := binary.LittleEndian
	le.PutUint64(c[0x00:], b.sectors)
	le.PutUint32(c[0x0c:], b.segMax())
	le.PutUint32(c[0x14:], SectorSize)
	le.PutUint16(c[0x22:], 1)
	le.PutUint32(c[0x24:], maxRangeSectors)
	le.PutUint32(c[0x28:], maxSegments)
	le.PutUint32(c[0x2c:], 1)
	le.PutUint32(c[0x30:], maxRangeSectors)
	le.PutUint32(c[0x34:], maxSegments)
	c[0x38] = 1 // write_zeroes_may_unmap
	for i := range data {
		data[i] = 0
		if off+i >= 0 && off+i < configLen {
			data[i] = c[off+i]
		}
	}
}

// segMax is the config's seg_max (virtio 1.2, 5.2.4): the most data
// buffers a request may have, besides its header and status. The queue
// takes a chain of up to its size in descriptors, or one indirect table
// of up to virtio.MaxIndirect (longer breaks the queue), and a driver
// may put every request of several buffers in an indirect table (Linux
// does), so the fewer of the two bounds it: queue size − 2 up to 1024,
// 1022 beyond.
func (b *Block) segMax() uint32 {
	return uint32(min(int(b.qsize), virtio.MaxIndirect)) - 2 // header and status take two descriptors
}

// WriteConfig implements virtio.Device: nothing is writable (no
// VIRTIO_BLK_F_CONFIG_WCE).
func (b *Block) WriteConfig(int, []byte) {}

// Stats returns the counters.
func (b *Block) Stats() Stats {
	return Stats{
		Reads: b.reads.Load(), Writes: b.writes.Load(), Flushes: b.flushes.Load(), Discards: b.discards.Load(),
		ReadBytes: b.readBytes.Load(), WriteBytes: b.writeBytes.Load(),
		Errors: b.errs.Load(), Refused: b.refused.Load(),
	}
}

// Activate implements virtio.Device: it starts the dispatcher and workers.
// Everything derived from the queue (its size) is taken from this
// activation's queue, never kept from an earlier one.
func (b *Block) Activate(h virtio.Host, features uint64, qs []*virtio.Queue) error {
	if len(qs) != 1 || qs[0] == nil {
		return errors.New("virtio-blk: the driver did not enable the request queue")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running {
		return errors.New("virtio-blk: activated twice without a reset")
	}
	b.running = true
	b.stop = make(chan struct{})
	s := &session{b: b, h: h, q: qs[0], stop: b.stop, work: make(chan virtio.Chain, b.workers)}
	b.wg.Add(1 + b.workers)
	go s.dispatch()
	for range b.workers {
		go s.work1()
	}
	b.log.Debug("virtio-blk: running", "features", fmt.Sprintf("%#x", features), "queue", qs[0].Size)
	return nil
}

// Notify implements virtio.Device: a kick wakes the dispatcher.
func (b *Block) Notify(int) {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Reset implements virtio.Device: it stops the dispatcher, lets the
// requests in flight finish (their data reaches the backend or the guest
// before Reset returns, so none is half done), and waits.
func (b *Block) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running {
		return
	}
	close(b.stop)
	b.wg.Wait()
	b.running = false
}

// Close stops the device and flushes the backend: what the guest was
// told is written is on stable storage. The backend stays open (its
// owner closes it).
func (b *Block) Close() error {
	b.Reset()
	b.warnings.Flush()
	if b.cfg.ReadOnly {
		return nil
	}
	if err := b.cfg.Backend.Flush(); err != nil {
		return fmt.Errorf("virtio-blk: flush at close: %w", err)
	}
	return nil
}
