package termfilter_test

import (
	"bytes"
	"testing"

	"github.com/popvmm/popvmm/internal/termfilter"
)

func TestCRLF(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		want   string
	}{
		{[]string{"lab: booting\n", "lab: ready\n"}, "lab: booting\r\nlab: ready\r\n"},
		{[]string{"a\n\nb"}, "a\r\n\r\nb"},
		{[]string{"already\r\n"}, "already\r\n"},
		{[]string{"split\r", "\nthen\n"}, "split\r\nthen\r\n"},
		{[]string{"cr\r", "x\n"}, "cr\rx\r\n"},
		{[]string{"", "no newline"}, "no newline"},
	} {
		var b bytes.Buffer
		w := termfilter.CRLF(&b)
		for _, s := range tc.writes {
			if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", s, n, err)
			}
		}
		if b.String() != tc.want {
			t.Errorf("CRLF over writes %q = %q, want %q", tc.writes, b.String(), tc.want)
		}
	}
}
