package termfilter_test

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/popvmm/popvmm/internal/termfilter"
)

// filter runs in through a Filter in chunks of size chunk (0: one write).
func filter(in string, chunk int) string {
	var b bytes.Buffer
	f := termfilter.New(&b)
	if chunk == 0 {
		chunk = len(in) + 1
	}
	for len(in) > 0 {
		n := min(chunk, len(in))
		f.Write([]byte(in[:n]))
		in = in[n:]
	}
	return b.String()
}

var cases = []struct {
	name, in, want string
}{
	{"text and layout", "login: root\r\n\tok\b!\n", "login: root\r\n\tok\b!\n"},
	{"colours kept", "\x1b[1;31mred\x1b[0m \x1b[m\x1b[38:5:208mo", "\x1b[1;31mred\x1b[0m \x1b[m\x1b[38:5:208mo"},
	{"cursor position query", "a\x1b[6nb", "ab"},
	{"busybox's query", "\x1b7\x1b[r\x1b[999;999H\x1b[6n\x1b8# ", "# "},
	{"device attributes", "\x1b[c\x1b[0c\x1b[>c\x1b[=c\x1bZ", ""},
	{"status report, window ops", "\x1b[5n\x1b[18t\x1b[14t", ""},
	{"private modes and screen", "\x1b[?1049h\x1b[2J\x1b[H\x1b[?25l\x1b[?1m", ""},
	{"intermediates", "\x1b[0\"q\x1b[!p\x1b[1 m", ""},
	{"two-byte escapes", "\x1bc\x1b(0\x1b#8\x1b=x", "x"},
	{"OSC with BEL", "\x1b]0;title\x07after", "after"},
	{"OSC with ST", "\x1b]52;c;Zm9v\x1b\\after", "after"},
	{"OSC colour query", "\x1b]11;?\x07", ""},
	{"DCS request status", "\x1bP$qm\x1b\\x", "x"},
	{"APC PM SOS", "\x1b_a\x1b\\\x1b^b\x1b\\\x1bXc\x1b\\d", "d"},
	{"C0 controls", "\x05\x07\x0e\x0f\x00\x7fx", "x"},
	{"raw C1 CSI", "\x9b6n", "6n"},
	{"UTF-8 C1 CSI", "\u009b6n\u0090x", "6nx"},
	{"UTF-8 text", "héllo ✓ 🐧", "héllo ✓ 🐧"},
	{"invalid UTF-8", "\xffA\xe2\x82B\xc0\xafC", "ABC"},
	{"CAN cancels", "\x1b[6\x18n", "n"},
	{"ESC restarts", "\x1b[6\x1b[1mx", "\x1b[1mx"},
	{"long colour dropped", "\x1b[" + strings.Repeat("1;", 100) + "mx", "x"},
	{"C0 inside a sequence", "\x1b[1\n2mx", "\x1b[12mx"},
	{"unended string ends", "\x1b]" + strings.Repeat("x", 5000) + "visible", strings.Repeat("x", 5000-4096) + "visible"},
}

func TestFilter(t *testing.T) {
	for _, tc := range cases {
		for _, chunk := range []int{0, 1, 2, 3} {
			if got := filter(tc.in, chunk); got != tc.want {
				t.Errorf("%s: Filter(%.80q) in chunks of %d = %.80q, want %.80q", tc.name, tc.in, chunk, got, tc.want)
			}
		}
	}
}

func TestString(t *testing.T) {
	if got, want := termfilter.String("6.1\x1b[6n\x1b]0;x\x07-popcorn"), "6.1-popcorn"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

// checkSafe fails unless out holds only text, tab, CR, LF, backspace,
// valid UTF-8 without C1 controls, and colour sequences ESC [ digits ; : m.
func checkSafe(t *testing.T, in []byte, out string) {
	t.Helper()
	for i := 0; i < len(out); {
		c := out[i]
		switch {
		case c == 0x1b:
			j := i + 2
			if j > len(out) || out[i+1] != '[' {
				t.Fatalf("Filter(%q) = %q: ESC at %d starts no CSI", in, out, i)
			}
			for j < len(out) && (out[j] >= '0' && out[j] <= ';') {
				j++
			}
			if j >= len(out) || out[j] != 'm' {
				t.Fatalf("Filter(%q) = %q: the sequence at %d is not a colour", in, out, i)
			}
			i = j + 1
		case c >= 0x20 && c < 0x7f, c == '\t', c == '\n', c == '\r', c == '\b':
			i++
		case c < 0x80:
			t.Fatalf("Filter(%q) = %q: control %#x at %d", in, out, c, i)
		default:
			r, n := utf8.DecodeRuneInString(out[i:])
			if r == utf8.RuneError || (r >= 0x80 && r <= 0x9f) {
				t.Fatalf("Filter(%q) = %q: %U at %d", in, out, r, i)
			}
			i += n
		}
	}
}

// FuzzFilter: for any guest output, what the filter writes is safe for a
// terminal, the same however the input is split across writes, and passes
// the filter again unchanged.
func FuzzFilter(f *testing.F) {
	for _, tc := range cases {
		f.Add([]byte(tc.in), uint16(len(tc.in)/2))
	}
	f.Fuzz(func(t *testing.T, in []byte, cut uint16) {
		whole := filter(string(in), 0)
		checkSafe(t, in, whole)
		k := int(cut) % (len(in) + 1)
		var b bytes.Buffer
		fl := termfilter.New(&b)
		fl.Write(in[:k])
		fl.Write(in[k:])
		if b.String() != whole {
			t.Fatalf("Filter(%q) split at %d = %q, whole = %q", in, k, b.String(), whole)
		}
		if again := filter(whole, 0); again != whole {
			t.Fatalf("Filter(Filter(%q)) = %q, want %q", in, again, whole)
		}
	})
}
