package ratelog_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/syncbuf"
)

func newLogger(burst int, interval time.Duration) (*ratelog.Logger, *syncbuf.Buffer) {
	var b syncbuf.Buffer
	h := slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})
	return ratelog.New(slog.New(h), burst, interval), &b
}

func lines(b *syncbuf.Buffer) []string {
	s := strings.TrimSpace(b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// waitLines waits up to 5 s for the log to hold n lines.
func waitLines(t *testing.T, b *syncbuf.Buffer, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(lines(b)) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := lines(b)
	if len(got) != n {
		t.Fatalf("%d log lines, want %d:\n%s", len(got), n, b.String())
	}
	return got
}

// TestBurstThenCount: a flood of one message writes Burst lines, then one
// line at the interval's end with the count of the ones held back (and the
// last one's attributes); other messages have limits of their own.
func TestBurstThenCount(t *testing.T) {
	l, b := newLogger(3, 100*time.Millisecond)
	for i := range 1000 {
		l.Warn("refused write", "n", i)
	}
	l.Info("other message")
	got := waitLines(t, b, 5)
	for i, want := range []string{
		`level=WARN msg="refused write" n=0`,
		`level=WARN msg="refused write" n=1`,
		`level=WARN msg="refused write" n=2`,
		`level=INFO msg="other message"`,
		`level=WARN msg="refused write" n=999 suppressed=997`,
	} {
		if got[i] != want {
			t.Errorf("line %d: %q, want %q", i, got[i], want)
		}
	}
	if l.Held() != 997 {
		t.Errorf("Held = %d, want 997", l.Held())
	}
	// A quiet interval later the message is written again.
	time.Sleep(250 * time.Millisecond)
	l.Warn("refused write", "n", 1000)
	if got := waitLines(t, b, 6); got[5] != `level=WARN msg="refused write" n=1000` {
		t.Errorf("after a quiet interval: %q", got[5])
	}
}

// TestFlush: Flush reports what is held at once (at shutdown), and a
// message under its burst is never held.
func TestFlush(t *testing.T) {
	l, b := newLogger(1, time.Hour)
	l.Error("broken chain", "queue", 0)
	l.Error("broken chain", "queue", 1)
	l.Error("broken chain", "queue", 2)
	l.Flush()
	got := waitLines(t, b, 2)
	if got[1] != `level=ERROR msg="broken chain" queue=2 suppressed=2` {
		t.Errorf("flushed %q", got[1])
	}
	l.Flush() // nothing more
	waitLines(t, b, 2)
}

// TestDisabledAndNil: lines below the handler's level cost nothing and are
// not counted; a nil Logger discards.
func TestDisabledAndNil(t *testing.T) {
	var b syncbuf.Buffer
	l := ratelog.New(slog.New(slog.NewTextHandler(&b, nil)), 1, time.Hour)
	for range 10 {
		l.Debug("frame dropped")
	}
	if l.Held() != 0 || b.String() != "" {
		t.Errorf("debug lines at info level: held %d, log %q", l.Held(), b.String())
	}
	var nl *ratelog.Logger
	nl.Warn("x")
	nl.Flush()
	if nl.Held() != 0 {
		t.Error("nil Logger counted")
	}
}

// TestConcurrent: many goroutines flooding several messages (run with
// -race) write at most Burst lines each plus one count per message.
func TestConcurrent(t *testing.T) {
	l, b := newLogger(2, time.Hour)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				l.Warn(fmt.Sprintf("message %d", i%3), "g", g)
			}
		})
	}
	wg.Wait()
	l.Flush()
	got := waitLines(t, b, 3*3)
	held := 0
	for _, line := range got {
		var n int
		if _, err := fmt.Sscanf(line[strings.Index(line, "suppressed=")+len("suppressed="):], "%d", &n); err == nil && strings.Contains(line, "suppressed=") {
			held += n
		}
	}
	if want := 8*200 - 3*2; held != want || l.Held() != uint64(want) {
		t.Errorf("counted %d held back (Held %d), want %d", held, l.Held(), want)
	}
}
