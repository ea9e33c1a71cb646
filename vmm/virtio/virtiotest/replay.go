package virtiotest

import (
	"encoding/binary"
)

// Register-access programs, for fuzzing a device the way Cloud
// Hypervisor fuzzes its devices: a list of recorded accesses replayed
// against the transport, then a guest-memory image.
//
// A program is a little-endian uint16 count n, n records of RecordLen
// bytes, and the rest an image copied to guest memory at 0 before the
// records run. A record is op (byte: op%5 is OpConfigRead, OpConfigWrite,
// OpBARRead, OpBARWrite or OpKick), size (byte: 1<<(size%4) bytes), offset
// (uint16: into configuration space modulo 256, into BAR0 modulo its size,
// or the queue to kick) and value (uint32, zero-extended for 8 bytes).
const (
	OpConfigRead = iota
	OpConfigWrite
	OpBARRead
	OpBARWrite
	OpKick

	RecordLen = 8
)

// Record encodes one record.
func Record(op, size byte, off uint16, val uint32) []byte {
	b := []byte{op, size}
	b = binary.LittleEndian.AppendUint16(b, off)
	return binary.LittleEndian.AppendUint32(b, val)
}

// Program assembles records and a memory image into a program.
func Program(records [][]byte, image []byte) []byte {
	p := binary.LittleEndian.AppendUint16(nil, uint16(len(records)))
	for _, r := range records {
		p = append(p, r...)
	}
	return append(p, image...)
}

// Replay runs a program against the driver's transport. It never fails:
// whatever the program does, the transport and device must survive it.
func Replay(d *Driver, prog []byte, barSize uint64) {
	if len(prog) < 2 {
		return
	}
	n := int(binary.LittleEndian.Uint16(prog))
	prog = prog[2:]
	recs := prog[:min(len(prog), n*RecordLen)]
	copy(d.RAM, prog[len(recs):])
	buf := make([]byte, 8)
	for ; len(recs) >= RecordLen; recs = recs[RecordLen:] {
		op, size := recs[0]%5, 1<<(recs[1]%4)
		off := binary.LittleEndian.Uint16(recs[2:])
		val := uint64(binary.LittleEndian.Uint32(recs[4:]))
		data := buf[:size]
		binary.LittleEndian.PutUint64(buf, val)
		switch op {
		case OpConfigRead, OpConfigWrite:
			reg := int(off) % 256
			if size > 4 {
				size = 4
			}
			d.Ports.Write(0, binary.LittleEndian.AppendUint32(nil, 1<<31|uint32(d.Dev)<<11|uint32(reg&0xfc)))
			port := 4 + uint64(reg&3)
			if port+uint64(size) > 8 {
				size = int(8 - port)
			}
			if op == OpConfigRead {
				d.Ports.Read(port, buf[:size])
			} else {
				d.Ports.Write(port, buf[:size])
			}
		case OpBARRead:
			d.P.Read(uint64(off)%barSize, data)
		case OpBARWrite:
			d.P.Write(uint64(off)%barSize, data)
		case OpKick:
			d.P.Kick(int(off))
		}
	}
}

// SetupProgram is the records of a well-behaved driver: reset,
// negotiation of features, MSI-X on with vector 0 for configuration and
// 1+i for queue i, each queue i of nq at QueueBase(i) (size 16:
// descriptors, available ring at +0x100, used ring at +0x200), DRIVER_OK,
// then a kick of every queue. A fuzzer mutates from here.
func SetupProgram(msixCap int, features uint64, nq int) [][]byte {
	w := func(off uint16, size byte, v uint32) []byte { return Record(OpBARWrite, size, off, v) }
	r := [][]byte{
		w(0x14, 0, 0), w(0x14, 0, 1), w(0x14, 0, 3),
		w(0x08, 2, 0), w(0x0c, 2, uint32(features)),
		w(0x08, 2, 1), w(0x0c, 2, uint32(features>>32)),
		w(0x14, 0, 11),
		Record(OpConfigWrite, 1, uint16(msixCap+2), 0x8000),
		w(0x10, 1, 0),
	}
	for v := range nq + 1 {
		base := uint16(0x4000 + 16*v)
		r = append(r, w(base, 2, 0xfee00000), w(base+8, 2, uint32(0x40+v)), w(base+12, 2, 0))
	}
	for i := range nq {
		at := uint32(QueueBase(i))
		r = append(r, w(0x16, 1, uint32(i)), w(0x18, 1, 16), w(0x1a, 1, uint32(1+i)),
			w(0x20, 2, at), w(0x24, 2, 0), w(0x28, 2, at+0x100), w(0x2c, 2, 0), w(0x30, 2, at+0x200), w(0x34, 2, 0),
			w(0x1c, 1, 1))
	}
	r = append(r, w(0x14, 0, 15))
	for i := range nq {
		r = append(r, Record(OpKick, 0, uint16(i), 0))
	}
	return r
}

// QueueBase is where SetupProgram puts queue i's rings; buffers of a
// program's image go from 0x800 up (queues 0 and 1 end there).
func QueueBase(i int) uint64 { return 0x400 * uint64(i) }

// Chain writes, into a program image, a chain of descriptors 0.. of
// queue q of SetupProgram with the given flags (DescNext added) and
// lengths, buffer i at buf+0x100*i, and makes it available (index 1).
func Chain(image []byte, q int, buf uint64, flags []uint16, lens []uint32) {
	base := QueueBase(q)
	for i := range flags {
		d := image[base+16*uint64(i):]
		binary.LittleEndian.PutUint64(d, buf+0x100*uint64(i))
		binary.LittleEndian.PutUint32(d[8:], lens[i])
		f := flags[i]
		if i+1 < len(flags) {
			f |= 1 // VIRTQ_DESC_F_NEXT
		}
		binary.LittleEndian.PutUint16(d[12:], f)
		binary.LittleEndian.PutUint16(d[14:], uint16(i+1))
	}
	binary.LittleEndian.PutUint16(image[base+0x100+2:], 1)
}
