package syncbuf_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/internal/syncbuf"
)

// TestConcurrent: writes from several goroutines while String is read all
// land (run with -race).
func TestConcurrent(t *testing.T) {
	var b syncbuf.Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if s := b.String(); s != strings.Repeat("x", 400) {
		t.Errorf("got %d bytes, want 400", len(s))
	}
}
