package msg_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
	"github.com/popvmm/popvmm/ipi/msg"
)

// Benchmarks of the window, each beside its reference in the same run:
//   one-way latency of 64-byte messages (p50/p99 from ping-pong round
//   trips / 2): polled, doorbell-woken; Unix socket and pipe ping-pong.
//   message rate (64 B, one direction): window vs Unix socket.
//   bulk MB/s (64 KiB messages): window vs memcpy vs Unix socket.
// See docs/benchmarks.md for numbers.

const small = 64

func reportLatency(b *testing.B, rtts []time.Duration) {
	slices.Sort(rtts)
	p := func(q float64) float64 { return float64(rtts[int(q*float64(len(rtts)-1))]) / 2 }
	b.ReportMetric(p(0.50), "ns-oneway-p50")
	b.ReportMetric(p(0.99), "ns-oneway-p99")
}

// pair joins two nodes on a fresh window with in-process doorbells.
func pair(b *testing.B, opt msg.Options) (*msg.Node, *msg.Node) {
	mem := make([]byte, 8<<20)
	if _, err := msg.Format(mem, 2); err != nil {
		b.Fatal(err)
	}
	bells := newBells(2)
	x, _ := msg.Join(mem, 0, "a", bell{bells, 0}, opt)
	y, _ := msg.Join(mem, 1, "b", bell{bells, 1}, opt)
	return x, y
}

func sendRetry(n *msg.Node, to int, p []byte) {
	for errors.Is(n.Send(to, 1, p), msg.ErrRingFull) {
		runtime.Gosched()
	}
}

// BenchmarkLatencyPolled: both sides poll the window in their own
// goroutine; no doorbells.
func BenchmarkLatencyPolled(b *testing.B) {
	a, e := pair(b, msg.Options{Poll: true})
	payload := make([]byte, small)
	got := false
	a.Register(1, func(int, []byte) { got = true })
	e.Register(1, func(from int, p []byte) { sendRetry(e, from, p) })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread()
		for ctx.Err() == nil {
			e.Poll(64)
		}
	})
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		got = false
		sendRetry(a, 1, payload)
		for !got {
			a.Poll(64)
		}
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	reportLatency(b, rtts)
}

// BenchmarkLatencyDoorbell: both sides run their receive loop and sleep on
// real eventfds between messages (Linger off: every message is
// doorbell-woken).
func BenchmarkLatencyDoorbell(b *testing.B) { doorbellLatency(b, msg.Options{Linger: -1}) }

// BenchmarkLatencyLinger: the same with the default options: after a
// message the receiver keeps polling briefly, so a conversation's replies
// rarely need a doorbell.
func BenchmarkLatencyLinger(b *testing.B) { doorbellLatency(b, msg.Options{}) }

func doorbellLatency(b *testing.B, opt msg.Options) {
	// The production doorbell: host peers of an ivshmem server, ringing
	// each other's eventfds (ipi.Bell).
	sock, _ := ipitest.Serve(b, 8<<20, 2, ipi.ServerConfig{Vectors: 1, MaxPeers: 2})
	ca, err := ipi.Dial(context.Background(), sock, 1)
	if err != nil {
		b.Fatal(err)
	}
	ce, err := ipi.Dial(context.Background(), sock, 1)
	if err != nil {
		b.Fatal(err)
	}
	for len(ca.Peers()) == 0 { // ce's announcement reaches ca asynchronously
		runtime.Gosched()
	}
	a, _ := msg.Join(ca.Mem, ca.ID, "a", ipi.Bell{C: ca}, opt)
	e, _ := msg.Join(ce.Mem, ce.ID, "b", ipi.Bell{C: ce}, opt)
	defer func() { ca.Close(); ce.Close() }()
	reply := make(chan struct{}, 1)
	a.Register(1, func(int, []byte) { reply <- struct{}{} })
	e.Register(1, func(from int, p []byte) { sendRetry(e, from, p) })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	wg.Go(func() { e.Run(ctx) })
	payload := make([]byte, small)
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		sendRetry(a, e.ID(), payload)
		<-reply
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	reportLatency(b, rtts)
	s := a.Stats()
	b.ReportMetric(float64(s.DoorbellsRung)/float64(s.Sent), "doorbells/msg")
}

// BenchmarkLatencyUnixSocket and BenchmarkLatencyPipe: the same ping-pong
// with blocking read/write system calls on locked threads.
func BenchmarkLatencyUnixSocket(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	syscallPingPong(b, fds[0], fds[0], fds[1], fds[1])
}

func BenchmarkLatencyPipe(b *testing.B) {
	var p1, p2 [2]int
	unix.Pipe2(p1[:], unix.O_CLOEXEC)
	unix.Pipe2(p2[:], unix.O_CLOEXEC)
	// client writes p1[1], reads p2[0]; echo reads p1[0], writes p2[1]
	syscallPingPong(b, p1[1], p2[0], p1[0], p2[1])
}

func syscallPingPong(b *testing.B, cw, cr, er, ew int) {
	defer func() {
		for _, fd := range []int{cw, cr, er, ew} {
			unix.Close(fd)
		}
	}()
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, small)
		for {
			if !readFull(er, buf) {
				return
			}
			if _, err := unix.Write(ew, buf); err != nil {
				return
			}
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, small)
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		unix.Write(cw, buf)
		readFull(cr, buf)
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, rtts)
	unix.Close(cw) // the echo side sees EOF
}

func readFull(fd int, buf []byte) bool {
	for got := 0; got < len(buf); {
		n, err := unix.Read(fd, buf[got:])
		if n <= 0 || err != nil {
			return false
		}
		got += n
	}
	return true
}

// BenchmarkRateWindow: 64-byte messages one way, the receiver polling.
func BenchmarkRateWindow(b *testing.B) {
	rate(b, small)
}

// BenchmarkBulkWindow: 64 KiB messages one way (chunked over slots).
func BenchmarkBulkWindow(b *testing.B) {
	rate(b, 64<<10)
}

func rate(b *testing.B, size int) {
	a, e := pair(b, msg.Options{Poll: true, MaxMessage: 64 << 10})
	var n int
	var mu sync.Mutex
	e.Register(1, func(int, []byte) { n++ })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread()
		for ctx.Err() == nil {
			mu.Lock()
			e.Poll(256)
			mu.Unlock()
		}
	})
	payload := bytes.Repeat([]byte{0xab}, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for b.Loop() {
		sendRetry(a, 1, payload)
	}
	for {
		mu.Lock()
		done := n
		mu.Unlock()
		if done >= b.N {
			break
		}
		runtime.Gosched()
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRateUnixSocket and BenchmarkBulkUnixSocket: the same one-way
// stream over a Unix socket pair, the reader draining on its own thread.
func BenchmarkRateUnixSocket(b *testing.B) { socketRate(b, small) }
func BenchmarkBulkUnixSocket(b *testing.B) { socketRate(b, 64<<10) }

func socketRate(b *testing.B, size int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, size)
		n := 0
		for {
			k, err := unix.Read(fds[1], buf)
			if k <= 0 || err != nil {
				done <- n
				return
			}
			n++
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	payload := bytes.Repeat([]byte{0xab}, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for b.Loop() {
		if _, err := unix.Write(fds[0], payload); err != nil {
			b.Fatal(err)
		}
	}
	unix.Close(fds[0])
	<-done
	b.StopTimer()
	unix.Close(fds[1])
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkBulkMemcpy: copying 64 KiB, the floor for bulk transfer.
func BenchmarkBulkMemcpy(b *testing.B) {
	src := bytes.Repeat([]byte{0xab}, 64<<10)
	dst := make([]byte, 64<<10)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		copy(dst, src)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkLatencyAtomicFloor is the machine's floor for polled latency:
// two threads bouncing one atomic word (one cache line), timed the same way.
func BenchmarkLatencyAtomicFloor(b *testing.B) {
	var word atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread()
		for ctx.Err() == nil {
			if v := word.Load(); v&1 == 1 {
				word.Store(v + 1)
			}
		}
	})
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		v := word.Add(1) // odd: the other side's turn
		for word.Load() == v {
		}
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	reportLatency(b, rtts)
}
