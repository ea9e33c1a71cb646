package machine

import "github.com/popvmm/popvmm/vtty"

// panicMarker is what Linux prints when it panics (kernel/panic.c).
const panicMarker = "Kernel panic - not syncing"

// panicWatch passes console output through and spots a kernel panic line
// with O(1) work per byte, on the vCPU thread; the reaction runs on its own
// goroutine, once.
type panicWatch struct {
	w       *vtty.Console
	onPanic func(line string)
	onInit  func()
	init    int // bytes of initMarker matched so far; -1 once seen
	matched int // bytes of panicMarker matched so far
	line    []byte
	inLine  bool
	fired   bool
}

func (p *panicWatch) WriteByte(b byte) error {
	p.scan(b)
	return p.w.WriteByte(b)
}

func (p *panicWatch) Write(data []byte) (int, error) {
	for _, b := range data {
		p.scan(b)
	}
	return p.w.Write(data)
}

// initMarker is what popvmm's guest /init prints first (images/initramfs/init).
const initMarker = "popvmm-init: "

func (p *panicWatch) scan(b byte) {
	if p.init >= 0 && p.onInit != nil {
		p.init = step(initMarker, p.init, b)
		if p.init == len(initMarker) {
			p.init = -1
			go p.onInit()
		}
	}
	if p.fired {
		return
	}
	if p.inLine {
		if b == '\n' || b == '\r' || len(p.line) >= 200 {
			p.fired = true
			go p.onPanic(string(p.line))
			return
		}
		p.line = append(p.line, b)
		return
	}
	p.matched = step(panicMarker, p.matched, b)
	if p.matched == len(panicMarker) {
		p.inLine = true
		p.line = append(p.line[:0], panicMarker...)
	}
}

// step advances a match of marker by byte b from matched bytes, the way a
// console line is scanned (a restart only at the marker's first byte,
// enough for markers without a repeated prefix).
func step(marker string, matched int, b byte) int {
	switch {
	case b == marker[matched]:
		return matched + 1
	case b == marker[0]:
		return 1
	}
	return 0
}
