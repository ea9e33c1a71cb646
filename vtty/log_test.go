package vtty_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/vtty"
)

// watchWriter collects output and lets a test wait for a substring.
type watchWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	more chan struct{}
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watchWriter) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		got := w.buf.String()
		w.mu.Unlock()
		if strings.Contains(got, s) {
			return
		}
		select {
		case <-w.more:
		case <-deadline:
			t.Fatalf("output %q never contained %q", got, s)
		}
	}
}

func TestCopyLogOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.console.log")
	os.WriteFile(p, []byte("Linux version 6.1\n"), 0o600)
	var b strings.Builder
	if err := vtty.CopyLog(context.Background(), p, &b, false); err != nil || b.String() != "Linux version 6.1\n" {
		t.Fatalf("CopyLog = %q, %v", b.String(), err)
	}
	if err := vtty.CopyLog(context.Background(), p+".missing", &b, false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CopyLog(missing) = %v, want ErrNotExist", err)
	}
}

func TestCopyLogFollow(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.console.log")
	os.WriteFile(p, []byte("one\n"), 0o600)
	w := &watchWriter{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- vtty.CopyLog(ctx, p, w, true) }()
	w.waitFor(t, "one\n")

	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("two\n")
	f.Close()
	w.waitFor(t, "two\n")

	// A reboot replaces the log: the follower starts over on the new file.
	os.Remove(p)
	os.WriteFile(p, []byte("three\n"), 0o600)
	w.waitFor(t, "three\n")
	// Truncation in place is followed too.
	os.WriteFile(p, []byte("4\n"), 0o600)
	w.waitFor(t, "4\n")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("CopyLog after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CopyLog did not return after cancel")
	}
}
