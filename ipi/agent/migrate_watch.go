package agent

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

// SvcMigProgress is a source agent's announcement of a migration's stage,
// multicast to the peers subscribed to it (popvmm's own node, for `popvmm
// status`): JSON progressMsg, no request id.
const SvcMigProgress uint8 = 20

// progressMsg is one announcement. A migration is named by its source
// incarnation (the sender) and session.
type progressMsg struct {
	Session uint64 `json:"session"`
	PID     int    `json:"pid"`
	Target  int    `json:"target"` // peer id
	Stage   string `json:"stage"`
	Done    bool   `json:"done"`
}

// MigrationInFlight is a migration a watcher has heard of and not seen end.
type MigrationInFlight struct {
	Source int       `json:"source_peer"`
	Target int       `json:"target_peer"`
	PID    int       `json:"pid"`
	Stage  string    `json:"stage"`
	Since  time.Time `json:"since"`
}

// Limits of a watcher: a hostile peer's announcements cannot grow its table
// without bound, and an announcement not followed up is forgotten.
const (
	maxWatched   = 64
	watchForget  = 15 * time.Minute
	progressBeat = 5 * time.Second // a source re-announces a long stage this often
)

var stages = []string{StageCheck, StagePrepare, StageDump, StageTransfer, StageRestore, StageCommit}

type watchKey struct {
	from    msg.Sender
	session uint64
}

type watched struct {
	MigrationInFlight
	seen time.Time
}

// MigrationWatch keeps the migrations in flight that source agents
// announce on the window.
type MigrationWatch struct {
	node *msg.Node
	mu   sync.Mutex
	m    map[watchKey]*watched
	now  func() time.Time
}

// WatchMigrations subscribes node to migration announcements.
func WatchMigrations(node *msg.Node) *MigrationWatch {
	w := &MigrationWatch{node: node, m: map[watchKey]*watched{}, now: time.Now}
	node.RegisterSender(SvcMigProgress, w.progress)
	node.Subscribe(SvcMigProgress)
	return w
}

func (w *MigrationWatch) progress(from msg.Sender, p []byte) {
	var m progressMsg
	if len(p) > 1024 || json.Unmarshal(p, &m) != nil || !slices.Contains(stages, m.Stage) || m.PID <= 0 {
		return
	}
	k := watchKey{from, m.Session}
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if m.Done {
		delete(w.m, k)
		return
	}
	e := w.m[k]
	if e == nil {
		w.expire(now)
		if len(w.m) >= maxWatched {
			return
		}
		e = &watched{MigrationInFlight: MigrationInFlight{Source: from.ID, Since: now}}
		w.m[k] = e
	}
	e.Target, e.PID, e.Stage, e.seen = m.Target, m.PID, m.Stage, now
}

// expire forgets announcements from sources that left or went quiet.
func (w *MigrationWatch) expire(now time.Time) {
	for k, e := range w.m {
		if !w.node.Present(k.from) || now.Sub(e.seen) > watchForget {
			delete(w.m, k)
		}
	}
}

// List returns the migrations in flight, oldest first.
func (w *MigrationWatch) List() []MigrationInFlight {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expire(w.now())
	var out []MigrationInFlight
	for _, e := range w.m {
		out = append(out, e.MigrationInFlight)
	}
	slices.SortFunc(out, func(a, b MigrationInFlight) int { return a.Since.Compare(b.Since) })
	return out
}

// announce multicasts a migration's stage; best effort.
func (s *source) announce(done bool) {
	s.m.mu.Lock()
	stage := s.flight.Stage
	s.m.mu.Unlock()
	b, _ := json.Marshal(progressMsg{Session: s.session, PID: s.req.PID, Target: s.req.Target, Stage: stage, Done: done})
	s.m.node.Multicast(SvcMigProgress, b)
}
