package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi/msg"
)

// MigrateConfig is how an agent takes part in migrations, as source and as
// target.
type MigrateConfig struct {
	Name  string       // this kernel's name, for messages
	Proc  string       // "/proc"
	Upper string       // the private overlay layer: "/run/popvmm/rw/upper"
	Dir   string       // staging and dump directory: "/run/popvmm/migrate"
	CRIU  Checkpointer // default: CRIUCommand
	Log   *slog.Logger
	// CommitWait is how long a target keeps a restored, stopped tree
	// waiting for the source's commit before it kills it. Default 2 min.
	CommitWait time.Duration
	// pidInUse, for tests sharing one /proc between source and target,
	// says what holds a PID on the target; nil reads Proc.
	pidInUse func(pid int) (string, bool)
	// private, for tests, overrides the private-file rule.
	private func(path string) bool
	// root, for tests sharing one file system between source and target,
	// is where the target puts carried files ("" is /).
	root string
}

func (c *MigrateConfig) defaults() {
	if c.Proc == "" {
		c.Proc = "/proc"
	}
	if c.Dir == "" {
		c.Dir = "/run/popvmm/migrate"
	}
	if c.CRIU == nil {
		c.CRIU = &CRIUCommand{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.CommitWait <= 0 {
		c.CommitWait = 2 * time.Minute
	}
	if c.private == nil {
		c.private = privateFile(c.Upper)
	}
	if c.pidInUse == nil {
		proc := c.Proc
		c.pidInUse = func(pid int) (string, bool) {
			b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
			if err != nil {
				_, err := os.Stat(filepath.Join(proc, strconv.Itoa(pid)))
				return "", err == nil
			}
			return string(trimNL(b)), true
		}
	}
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Target session states.
const (
	tPrepared = iota
	tReceiving
	tRestoring
	tRestored
	tCommitted
	tAborted
)

// maxTargetSessions bounds the migrations one target takes at a time.
const maxTargetSessions = 4

type sessKey struct {
	from msg.Sender
	id   uint64
}

// tSession is one incoming migration.
type tSession struct {
	key     sessKey
	dir     string
	prep    prepareMsg
	files   []fileMeta
	fds     []*os.File
	written []int64
	crc     []hash.Hash32
	err     error // the first thing that went wrong; the next answer says it
	state   int
	abort   bool // an abort came while restoring
	pids    []int
	placed  []string // carried files put in place, removed on abort
	timer   *time.Timer
}

// migTarget takes migrations in.
type migTarget struct {
	node *msg.Node
	cfg  *MigrateConfig
	mu   sync.Mutex
	sess map[sessKey]*tSession
	wg   sync.WaitGroup // restores running
}

func (t *migTarget) serve() {
	t.node.HandleRequests(SvcMigPrepare, t.prepare)
	t.node.HandleRequests(SvcMigFiles, t.filesReq)
	t.node.RegisterSender(SvcMigChunk, t.chunk)
	t.node.HandleRequests(SvcMigRestore, t.restore)
	t.node.HandleRequests(SvcMigCommit, t.commit)
	t.node.HandleRequests(SvcMigAbort, t.abortReq)
}

func (t *migTarget) answer(r msg.Request, a answerMsg) {
	b, _ := json.Marshal(a)
	reply(t.node, r, SvcMigAnswer, b)
}

func (t *migTarget) refuse(r msg.Request, format string, args ...any) {
	t.answer(r, answerMsg{Error: fmt.Sprintf(format, args...)})
}

func (t *migTarget) prepare(r msg.Request) {
	var p prepareMsg
	if err := decodeControl(r.Body, &p); err != nil {
		t.refuse(r, "%v", err)
		return
	}
	if err := t.checkPrepare(p); err != nil {
		t.refuse(r, "%s cannot take it: %v", t.cfg.Name, err)
		return
	}
	key := sessKey{r.From, p.Session}
	t.mu.Lock()
	if _, dup := t.sess[key]; dup || len(t.sess) >= maxTargetSessions {
		t.mu.Unlock()
		t.refuse(r, "%s is busy with other migrations (or this session is open already)", t.cfg.Name)
		return
	}
	dir := filepath.Join(t.cfg.Dir, "in-"+hex.EncodeToString(binaryID(p.Session)))
	s := &tSession{key: key, dir: dir, prep: p, state: tPrepared}
	t.sess[key] = s
	t.mu.Unlock()
	if err := os.MkdirAll(filepath.Join(dir, "img"), 0o700); err != nil {
		t.drop(s)
		t.refuse(r, "%s: %v", t.cfg.Name, err)
		return
	}
	os.MkdirAll(filepath.Join(dir, "carried"), 0o700)
	// A session whose source goes quiet is dropped: nothing of it runs yet.
	s.timer = time.AfterFunc(t.cfg.CommitWait, func() { t.expire(s) })
	t.answer(r, answerMsg{OK: true})
}

// checkPrepare is what a target refuses before the source freezes.
func (t *migTarget) checkPrepare(p prepareMsg) error {
	if p.Session == 0 {
		return errors.New("session 0")
	}
	if len(p.PIDs) == 0 || len(p.PIDs) > maxMigPIDs || p.PIDs[0] != p.PID {
		return fmt.Errorf("a tree of %d tasks rooted at pid %d", len(p.PIDs), p.PID)
	}
	if len(p.Carried) > maxMigFiles || len(p.Dirs) > maxMigFiles {
		return errors.New("too many files")
	}
	for _, f := range append(append([]string(nil), p.Carried...), p.Dirs...) {
		if f == "/" {
			continue
		}
		if err := checkCarriedPath(f); err != nil {
			return err
		}
	}
	if err := t.cfg.CRIU.Available(); err != nil {
		return err
	}
	for _, pid := range p.PIDs {
		if pid <= 1 {
			return fmt.Errorf("pid %d", pid)
		}
		if comm, taken := t.cfg.pidInUse(pid); taken {
			return fmt.Errorf("pid %d is taken there (%s)", pid, comm)
		}
	}
	for _, f := range p.Carried {
		if _, err := os.Lstat(t.cfg.root + f); err == nil && t.cfg.private(t.cfg.root+f) {
			return fmt.Errorf("it has a file of its own at %s", f)
		}
	}
	if p.Bytes < 0 {
		return errors.New("negative size")
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(t.cfg.Dir), &fs); err == nil {
		if free := int64(fs.Bavail) * int64(fs.Bsize); free < p.Bytes+p.Bytes/8 {
			return fmt.Errorf("%d MiB free in %s, the checkpoint needs about %d MiB", free>>20, filepath.Dir(t.cfg.Dir), (p.Bytes+p.Bytes/8)>>20)
		}
	}
	return nil
}

// session finds the session a message names, if it belongs to the
// incarnation that sent it.
func (t *migTarget) session(from msg.Sender, id uint64) *tSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sess[sessKey{from, id}]
}

// requestSession decodes r's control message into m and returns the
// session it names; if it cannot, it refuses r and returns nil.
func (t *migTarget) requestSession(r msg.Request, m sessioned) *tSession {
	if err := decodeControl(r.Body, m); err != nil {
		t.refuse(r, "%v", err)
		return nil
	}
	s := t.session(r.From, m.sessionID())
	if s == nil {
		t.refuse(r, "no such session on %s", t.cfg.Name)
	}
	return s
}

func (t *migTarget) filesReq(r msg.Request) {
	var m filesMsg
	s := t.requestSession(r, &m)
	if s == nil {
		return
	}
	t.mu.Lock()
	var err error
	if s.state != tPrepared {
		err = errors.New("file table out of turn")
	} else {
		if err = checkFiles(m.Files); err == nil {
			err = t.openFiles(s, m.Files)
		}
		if err != nil {
			s.err = err
			t.closeFiles(s)
		} else {
			s.state = tReceiving
			s.timer.Reset(t.cfg.CommitWait)
		}
	}
	t.mu.Unlock()
	if err != nil {
		t.refuse(r, "%s: %v", t.cfg.Name, err)
		return
	}
	t.answer(r, answerMsg{OK: true})
}

// openFiles creates a session's staging files. Carried files must be
// those prepare announced; the total must fit where the files go.
func (t *migTarget) openFiles(s *tSession, files []fileMeta) error {
	announced := map[string]bool{}
	for _, c := range s.prep.Carried {
		announced[c] = true
	}
	var total int64
	for _, f := range files {
		if f.Path != "" && !announced[f.Path] {
			return fmt.Errorf("%s was not announced", f.Path)
		}
		total += f.Size
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s.dir, &fs); err == nil && int64(fs.Bavail)*int64(fs.Bsize) < total {
		return fmt.Errorf("the checkpoint is %d MiB, %s has %d MiB free", total>>20, s.dir, (int64(fs.Bavail)*int64(fs.Bsize))>>20)
	}
	for i, f := range files {
		p := filepath.Join(s.dir, "img", f.Name)
		if f.Path != "" {
			p = filepath.Join(s.dir, "carried", strconv.Itoa(i))
		}
		fd, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		s.fds = append(s.fds, fd)
	}
	s.files = files
	s.written = make([]int64, len(files))
	s.crc = make([]hash.Hash32, len(files))
	for i := range s.crc {
		s.crc[i] = crc32.New(crcTable)
	}
	return nil
}

// chunk writes one piece of a file; anything out of order or out of
// bounds fails the session.
func (t *migTarget) chunk(from msg.Sender, p []byte) {
	c, err := parseChunk(p)
	if err != nil {
		return // names no session: nothing to fail
	}
	s := t.session(from, c.Session)
	if s == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.state != tReceiving || s.err != nil {
		return
	}
	fail := func(format string, args ...any) {
		s.err = fmt.Errorf(format, args...)
		t.closeFiles(s)
	}
	if int(c.File) >= len(s.files) {
		fail("chunk for file %d of %d", c.File, len(s.files))
		return
	}
	i := int(c.File)
	if c.Offset != uint64(s.written[i]) || uint64(len(c.Data)) > uint64(s.files[i].Size-s.written[i]) {
		fail("chunk of %d bytes at %d for file %d, which stands at %d of %d", len(c.Data), c.Offset, i, s.written[i], s.files[i].Size)
		return
	}
	if _, err := s.fds[i].WriteAt(c.Data, int64(c.Offset)); err != nil {
		fail("write %s: %v", s.fds[i].Name(), err)
		return
	}
	s.crc[i].Write(c.Data)
	s.written[i] += int64(len(c.Data))
}

func (t *migTarget) closeFiles(s *tSession) {
	for _, f := range s.fds {
		f.Close()
	}
	s.fds = nil
}

func (t *migTarget) restore(r msg.Request) {
	var m restoreMsg
	s := t.requestSession(r, &m)
	if s == nil {
		return
	}
	t.mu.Lock()
	err := s.err
	if err == nil && s.state != tReceiving {
		err = errors.New("restore out of turn")
	}
	if err == nil && len(m.CRC32C) != len(s.files) {
		err = fmt.Errorf("%d checksums for %d files", len(m.CRC32C), len(s.files))
	}
	for i := 0; err == nil && i < len(s.files); i++ {
		switch {
		case s.written[i] != s.files[i].Size:
			err = fmt.Errorf("file %d: %d of %d bytes arrived", i, s.written[i], s.files[i].Size)
		case s.crc[i].Sum32() != m.CRC32C[i]:
			err = fmt.Errorf("file %d: checksum %08x, the source's %08x", i, s.crc[i].Sum32(), m.CRC32C[i])
		}
	}
	if err != nil {
		t.mu.Unlock()
		t.drop(s)
		t.refuse(r, "%s: %v", t.cfg.Name, err)
		return
	}
	t.closeFiles(s)
	s.state = tRestoring
	t.mu.Unlock()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.runRestore(r, s)
	}()
}

// runRestore places the carried files and restores the tree, stopped.
func (t *migTarget) runRestore(r msg.Request, s *tSession) {
	fail := func(err error) {
		t.unplace(s)
		t.drop(s)
		t.refuse(r, "%s: %v", t.cfg.Name, err)
	}
	for _, d := range s.prep.Dirs {
		os.MkdirAll(t.cfg.root+d, 0o755) // a missing working directory; CRIU says if it is still missing
	}
	for i, f := range s.files {
		if f.Path == "" {
			continue
		}
		if err := t.place(s, filepath.Join(s.dir, "carried", strconv.Itoa(i)), f); err != nil {
			fail(err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.CommitWait)
	defer cancel()
	t0 := time.Now()
	pid, err := t.cfg.CRIU.Restore(ctx, filepath.Join(s.dir, "img"), s.dir, CheckpointOptions{DropTCP: s.prep.DropTCP})
	took := time.Since(t0)
	if err != nil {
		fail(err)
		return
	}
	pids := descendants(t.cfg.Proc, pid)
	os.RemoveAll(filepath.Join(s.dir, "img")) // the tree is in memory now
	t.mu.Lock()
	s.pids = pids
	s.state = tRestored
	aborted := s.abort
	t.mu.Unlock()
	if aborted {
		t.kill(s)
		return
	}
	s.timer.Reset(t.cfg.CommitWait)
	t.cfg.Log.Info("migration restored, stopped until the source commits", "pid", pid, "tasks", len(pids))
	t.answer(r, answerMsg{OK: true, PID: pid, RestoreNS: took.Nanoseconds()})
}

// place puts a carried file at its path: a copy beside it, then a rename.
func (t *migTarget) place(s *tSession, staged string, f fileMeta) error {
	dst := t.cfg.root + f.Path
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(staged)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".popvmm-migrate"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(f.Mode&0o7777))
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	err = errors.Join(err, out.Chmod(os.FileMode(f.Mode&0o7777)), out.Close())
	if err == nil {
		os.Lchown(tmp, f.UID, f.GID) // as root; elsewhere the file stays ours
		if f.MtimeNS != 0 {
			mt := time.Unix(0, f.MtimeNS)
			os.Chtimes(tmp, mt, mt)
		}
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("place %s: %w", f.Path, err)
	}
	t.mu.Lock()
	s.placed = append(s.placed, dst)
	t.mu.Unlock()
	return nil
}

// unplace removes the carried files a session put in place.
func (t *migTarget) unplace(s *tSession) {
	t.mu.Lock()
	placed := s.placed
	s.placed = nil
	t.mu.Unlock()
	for _, p := range placed {
		os.Remove(p)
	}
}

func (t *migTarget) commit(r msg.Request) {
	var m sessionMsg
	s := t.requestSession(r, &m)
	if s == nil {
		return
	}
	t.mu.Lock()
	switch s.state {
	case tCommitted:
	case tRestored:
		for _, p := range s.pids {
			unix.Kill(p, syscall.SIGCONT)
		}
		s.state = tCommitted
		s.timer.Stop()
		// Kept a while, so that a repeated commit or an abort is told
		// "committed".
		s.timer = time.AfterFunc(t.cfg.CommitWait, func() { t.forget(s) })
	default:
		t.mu.Unlock()
		t.refuse(r, "%v", errNotRestored)
		return
	}
	t.mu.Unlock()
	os.RemoveAll(s.dir)
	t.cfg.Log.Info("migration committed: the tree runs here", "pids", s.pids)
	t.answer(r, answerMsg{OK: true, PID: firstPID(s.pids)})
}

func firstPID(p []int) int {
	if len(p) == 0 {
		return 0
	}
	return p[0]
}

func (t *migTarget) abortReq(r msg.Request) {
	var m sessionMsg
	if err := decodeControl(r.Body, &m); err != nil {
		t.refuse(r, "%v", err)
		return
	}
	s := t.session(r.From, m.Session)
	if s == nil { // nothing of it here, so nothing of it runs here
		t.answer(r, answerMsg{OK: true, State: stateAborted})
		return
	}
	t.mu.Lock()
	state := s.state
	switch state {
	case tCommitted:
		t.mu.Unlock()
		t.answer(r, answerMsg{OK: true, State: stateCommitted})
		return
	case tRestoring:
		s.abort = true // runRestore kills what it restores
		t.mu.Unlock()
	default:
		t.mu.Unlock()
		if state == tRestored {
			t.kill(s)
		} else {
			t.drop(s)
		}
	}
	t.answer(r, answerMsg{OK: true, State: stateAborted})
}

// kill ends a restored tree that never ran, and drops its session.
func (t *migTarget) kill(s *tSession) {
	t.mu.Lock()
	pids := s.pids
	committed := s.state == tCommitted
	t.mu.Unlock()
	if committed {
		return
	}
	for _, p := range pids {
		unix.Kill(p, syscall.SIGKILL)
	}
	t.cfg.Log.Warn("migration abandoned: its restored tree was killed before it ran", "pids", pids)
	t.unplace(s)
	t.drop(s)
}

// expire ends a session whose source went quiet.
func (t *migTarget) expire(s *tSession) {
	t.mu.Lock()
	state := s.state
	if state == tRestoring {
		s.abort = true
	}
	t.mu.Unlock()
	switch state {
	case tRestored:
		t.kill(s)
	case tRestoring, tCommitted:
		if state == tCommitted {
			t.forget(s)
		}
	default:
		t.drop(s)
	}
}

// drop removes a session and what it staged.
func (t *migTarget) drop(s *tSession) {
	t.mu.Lock()
	t.closeFiles(s)
	if t.sess[s.key] == s {
		delete(t.sess, s.key)
	}
	if s.state != tCommitted {
		s.state = tAborted
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	t.mu.Unlock()
	os.RemoveAll(s.dir)
}

// forget drops a committed session's record.
func (t *migTarget) forget(s *tSession) {
	t.mu.Lock()
	if t.sess[s.key] == s {
		delete(t.sess, s.key)
	}
	t.mu.Unlock()
}

// descendants is root and every task below it, from proc's stat files.
func descendants(proc string, root int) []int {
	in := &inspector{proc: proc}
	children := map[int][]int{}
	ents, _ := os.ReadDir(proc)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := in.readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	var out []int
	for q := []int{root}; len(q) > 0; q = q[1:] {
		out = append(out, q[0])
		q = append(q, children[q[0]]...)
	}
	return out
}

func binaryID(id uint64) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(id >> (56 - 8*i))
	}
	return b
}
