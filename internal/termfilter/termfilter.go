// Package termfilter holds writers for a person's terminal.
//
// Filter makes a byte stream that a guest controls safe to copy to the
// terminal: it keeps text, line layout and colours (SGR, ESC [ … m), and
// drops every other control sequence and control character, above all
// those a terminal answers (the cursor position report ESC [ 6 n, device
// attributes ESC [ c, ESC Z, DECRQSS, OSC colour queries, ENQ), whose
// answers would be typed into the person's shell. It follows ECMA-48's
// parser states, so a sequence split across writes is recognised as one;
// its memory is bounded whatever the input.
//
// CRLFWriter ends popvmm's own lines with CR LF while the terminal is raw.
package termfilter

import (
	"io"
	"strings"
	"unicode/utf8"
)

// maxStr bounds a control string: past it the filter takes what follows
// as text again (filtered as text), so an unended string cannot hide the
// rest of a log.
const maxStr = 4096

// maxCSI bounds a control sequence the filter holds while deciding whether
// it is a colour: a longer one is dropped whole.
const maxCSI = 64

// state is where the filter stands in ECMA-48's grammar.
type state uint8

const (
	ground   state = iota
	escape         // after ESC
	escInter       // ESC, intermediates (0x20-0x2F): waiting for the final byte
	csi            // ESC [: parameters, intermediates, final byte
	str            // a control string (OSC, DCS, SOS, PM, APC): until ST or BEL
	strEsc         // ESC inside a control string: ST if '\' follows
)

// Filter is an io.Writer that passes what a terminal may safely show to
// the writer under it.
type Filter struct {
	w    io.Writer
	st   state
	seq  []byte // the CSI being read, from its ESC
	drop bool   // the CSI being read is not a colour (or too long)
	utf  []byte // an incomplete UTF-8 sequence
	strN int    // bytes of the control string dropped so far
	out  []byte
}

// New returns a Filter writing to w.
func New(w io.Writer) *Filter {
	return &Filter{w: w, seq: make([]byte, 0, maxCSI)}
}

// Write filters p and writes the result; it reports len(p) unless the
// underlying writer fails.
func (f *Filter) Write(p []byte) (int, error) {
	f.out = f.out[:0]
	for _, b := range p {
		f.step(b)
	}
	if len(f.out) == 0 {
		return len(p), nil
	}
	if _, err := f.w.Write(f.out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// String filters s whole, as one stream: for a value a guest reported
// (its name, its kernel release) that popvmm prints.
func String(s string) string {
	var b strings.Builder
	New(&b).Write([]byte(s))
	return b.String()
}

// step feeds one byte through the parser.
func (f *Filter) step(b byte) {
	// CAN and SUB cancel any sequence; ESC starts a new one from
	// anywhere but a control string (where it may start ST).
	switch {
	case b == 0x18 || b == 0x1a:
		f.st, f.utf = ground, f.utf[:0]
		return
	case b == 0x1b && f.st != str && f.st != strEsc:
		f.utf = f.utf[:0]
		f.st, f.seq, f.drop = escape, append(f.seq[:0], b), false
		return
	}
	switch f.st {
	case ground:
		f.text(b)
	case escape:
		switch {
		case b == '[':
			f.st, f.seq = csi, append(f.seq, b)
		case b == ']' || b == 'P' || b == 'X' || b == '^' || b == '_':
			f.st, f.strN = str, 0 // OSC, DCS, SOS, PM, APC
		case b >= 0x20 && b <= 0x2f:
			f.st = escInter
		case b >= 0x30 && b <= 0x7e:
			f.st = ground // a two-byte escape (ESC c, ESC Z, ESC 7…): dropped
		default:
			// A C0 control inside a sequence: terminals execute it;
			// dropped here, the sequence goes on.
		}
	case escInter:
		if b >= 0x30 && b <= 0x7e {
			f.st = ground
		}
	case csi:
		switch {
		case b >= 0x40 && b <= 0x7e: // final byte
			if !f.drop && b == 'm' {
				f.out = append(append(f.out, f.seq...), b)
			}
			f.st = ground
		case b >= 0x20 && b <= 0x3f:
			// Only digits, ';' and ':' make a colour's parameters; a
			// private marker (<=>?) or an intermediate makes it
			// something else.
			if (b < '0' || b > ';') || len(f.seq) >= maxCSI-1 {
				f.drop = true
			} else {
				f.seq = append(f.seq, b)
			}
		case b < 0x20:
			// executed by terminals inside a sequence; dropped here
		default: // DEL or a byte from 0x80: not a sequence after all
			f.st = ground
		}
	case str:
		if f.strN++; f.strN > maxStr {
			f.st = ground
			f.text(b)
			return
		}
		switch b {
		case 0x07: // BEL ends OSC in xterm's dialect
			f.st = ground
		case 0x1b:
			f.st = strEsc
		}
	case strEsc:
		switch b {
		case '\\':
			f.st = ground // ST
		case 0x1b:
		default:
			f.st = str
		}
	}
}

// text passes one byte of text: printable ASCII, tab, line feed, carriage
// return, backspace, and valid UTF-8 other than C1 controls.
func (f *Filter) text(b byte) {
	if len(f.utf) == 0 {
		switch {
		case b >= 0x20 && b < 0x7f, b == '\t', b == '\n', b == '\r', b == '\b':
			f.out = append(f.out, b)
			return
		case b < 0x80: // another C0 control or DEL
			return
		case !utf8.RuneStart(b):
			return // a stray continuation byte (or C1 as a raw byte)
		}
	}
	f.utf = append(f.utf, b)
	if !utf8.FullRune(f.utf) {
		return
	}
	r, n := utf8.DecodeRune(f.utf)
	switch {
	case r == utf8.RuneError && n <= 1:
		// Invalid: drop the first byte, and start again from the
		// next one, which may begin a valid character.
		rest := append([]byte(nil), f.utf[1:]...)
		f.utf = f.utf[:0]
		for _, c := range rest {
			f.text(c)
		}
		return
	case r >= 0x80 && r <= 0x9f: // C1 controls (CSI is U+009B)
	default:
		f.out = append(f.out, f.utf[:n]...)
	}
	rest := append([]byte(nil), f.utf[n:]...)
	f.utf = f.utf[:0]
	for _, c := range rest {
		f.text(c)
	}
}
