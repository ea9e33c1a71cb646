package linkname_test

import (
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/linkname"
)

func TestCheck(t *testing.T) {
	for _, name := range []string{"a", "pv-test-0", "pv-0123456789ab", "eth0.100", "br_x-Y", "é", "..."} {
		if err := linkname.Check(name); err != nil {
			t.Errorf("Check(%q) = %v, want nil", name, err)
		}
	}
	for _, tc := range []struct {
		name string
		want []string // in the error
	}{
		{"", []string{"empty"}},
		{"pv-0123456789abc", []string{`"pv-0123456789abc"`, "16 bytes", "IFNAMSIZ", "15"}},
		{"pv-bh-0123456789", []string{`"pv-bh-0123456789"`, "16 bytes", "IFNAMSIZ", "15"}},
		{strings.Repeat("x", 40), []string{"40 bytes", "IFNAMSIZ", "15"}},
		{"ééééééé-x", []string{"16 bytes", "IFNAMSIZ"}}, // 9 characters, 16 bytes
		{".", []string{"not a valid interface name"}},
		{"..", []string{"not a valid interface name"}},
		{"pv/0", []string{`'/'`}},
		{"pv:0", []string{`':'`}},
		{"pv 0", []string{"white space"}},
		{"pv\t0", []string{"white space"}},
		{"pv\n0", []string{"white space"}},
		{"pv\v0", []string{"white space"}},
		{"pv\f0", []string{"white space"}},
		{"pv\r0", []string{"white space"}},
		{"pvà", []string{"white space", "0xa0"}}, // à is c3 a0; the kernel's isspace takes a0
		{"pv\x000", []string{"NUL"}},
		{"tap%d", []string{"'%'", "template"}},
	} {
		err := linkname.Check(tc.name)
		if err == nil {
			t.Errorf("Check(%q) = nil, want an error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Check(%q) = %v, want it to say %q", tc.name, err, w)
			}
		}
	}
}

func TestTap(t *testing.T) {
	seen := map[string]string{}
	for _, cl := range []string{"a", "example", "e2e", "a-1", "abcdefghij", "abcdefghijk", "abcdefghijkl", "0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdeX"} {
		for _, i := range []int{0, 1, 9, 10, 63, 255} {
			n := linkname.Tap(cl, i)
			if err := linkname.Check(n); err != nil {
				t.Errorf("Tap(%q, %d) = %q: %v", cl, i, n, err)
			}
			key := cl + "/" + string(rune('0'+i))
			if prev, dup := seen[n]; dup {
				t.Errorf("Tap(%q, %d) = %q, as for %s", cl, i, n, prev)
			}
			seen[n] = key
		}
	}
	if got := linkname.Tap("example", 1); got != "pvt-example-1" {
		t.Errorf("Tap(example, 1) = %q, want pvt-example-1", got)
	}
}
