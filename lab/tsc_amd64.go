package lab

import (
	"errors"
	"time"
)

func rdtsc() uint64

// hostTSCkHz measures the rate of this machine's time-stamp counter. Under
// TCG the emulated CPU's RDTSC reads the host's counter, and the microvm
// machine has no HPET or ACPI PM timer to calibrate it against, so the lab
// kernel is told the rate (tsc_early_khz=). Each end of the interval is the
// (clock, counter) pair read with the least time between two clock reads,
// so a preemption while sampling costs accuracy on neither end.
func hostTSCkHz() (uint64, error) {
	type sample struct {
		t   time.Time
		tsc uint64
	}
	take := func() sample {
		best, bestGap := sample{}, time.Duration(1<<62)
		for range 50 {
			t0 := time.Now()
			c := rdtsc()
			t1 := time.Now()
			if gap := t1.Sub(t0); gap < bestGap {
				best, bestGap = sample{t0.Add(gap / 2), c}, gap
			}
		}
		return best
	}
	a := take()
	time.Sleep(100 * time.Millisecond) // the measuring interval, not a wait for an event
	b := take()
	dt := b.t.Sub(a.t)
	if b.tsc <= a.tsc || dt <= 0 {
		return 0, errors.New("the time-stamp counter did not advance")
	}
	khz := float64(b.tsc-a.tsc) / dt.Seconds() / 1000
	if khz < 100_000 || khz > 10_000_000 {
		return 0, errors.New("implausible time-stamp counter rate")
	}
	return uint64(khz + 0.5), nil
}
