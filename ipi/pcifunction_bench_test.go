package ipi_test

import (
	"testing"

	"github.com/popvmm/popvmm/ipi"
)

// BenchmarkSoftwareDoorbell is a Doorbell write that reaches popvmm (no
// ioeventfd matched): decode, look the bell up, write its eventfd. It is
// the cost of a doorbell exit's device part; the ioeventfd path has none.
func BenchmarkSoftwareDoorbell(b *testing.B) {
	bells := newBells(b, 2, 0, 1)
	v := newVM(b, bells, 0, 1<<20, nil)
	val := le(uint64(ipi.DoorbellValue(1, 0)), 4)
	b.ReportAllocs()
	for b.Loop() {
		v.dev.Write(ipi.RegDoorbell, val)
	}
	eventfdCount(bells.KernelFd(1, 0))
	if st := v.dev.Stats(); st.SoftDoorbells < uint64(b.N) {
		b.Fatalf("stats %+v after %d writes", st, b.N)
	}
}

// BenchmarkSoftwareDoorbellParallel: vCPU threads of several VMs ringing at
// once share nothing but the bells' snapshot.
func BenchmarkSoftwareDoorbellParallel(b *testing.B) {
	bells := newBells(b, 2, 0, 1)
	v := newVM(b, bells, 0, 1<<20, nil)
	val := le(uint64(ipi.DoorbellValue(1, 0)), 4)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			v.dev.Write(ipi.RegDoorbell, val)
		}
	})
	eventfdCount(bells.KernelFd(1, 0))
}

// BenchmarkBadDoorbell: a guest hammering Doorbell with a bell that does
// not exist costs a lookup and a counter, no system call.
func BenchmarkBadDoorbell(b *testing.B) {
	bells := newBells(b, 2, 0, 1)
	v := newVM(b, bells, 0, 1<<20, nil)
	val := le(uint64(ipi.DoorbellValue(9, 0)), 4)
	b.ReportAllocs()
	for b.Loop() {
		v.dev.Write(ipi.RegDoorbell, val)
	}
}

// BenchmarkIntrStatusRead is the INTx handler's acknowledgement.
func BenchmarkIntrStatusRead(b *testing.B) {
	bells := newBells(b, 2, 0, 1)
	v := newVM(b, bells, 0, 1<<20, nil)
	buf := make([]byte, 4)
	b.ReportAllocs()
	for b.Loop() {
		v.dev.Read(ipi.RegIntrStatus, buf)
	}
}
