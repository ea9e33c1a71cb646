package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi/msg"
)

// ServeMigrate registers the migration services on node: it migrates its
// kernel's process trees away when asked (source) and takes trees in
// (target). It returns a handle whose InFlight lists the migrations under
// way.
func ServeMigrate(node *msg.Node, cfg MigrateConfig) *Migrations {
	cfg.defaults()
	m := &Migrations{node: node, cfg: &cfg, inflight: map[uint64]*InFlight{}}
	t := &migTarget{node: node, cfg: m.cfg, sess: map[sessKey]*tSession{}}
	t.serve()
	node.HandleReplies(SvcMigAnswer)
	node.HandleRequests(SvcMigrate, m.request)
	return m
}

// Migrations is an agent's side of migrations.
type Migrations struct {
	node     *msg.Node
	cfg      *MigrateConfig
	mu       sync.Mutex
	inflight map[uint64]*InFlight
}

// InFlight is a migration under way from this kernel.
type InFlight struct {
	PID    int       `json:"pid"`
	Target string    `json:"target"`
	Stage  string    `json:"stage"`
	Since  time.Time `json:"since"`
}

// InFlight lists the migrations under way from this kernel.
func (m *Migrations) InFlight() []InFlight {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []InFlight
	for _, f := range m.inflight {
		out = append(out, *f)
	}
	slices.SortFunc(out, func(a, b InFlight) int { return a.Since.Compare(b.Since) })
	return out
}

// request answers a migrate request once the migration is over; the
// migration runs on its own goroutine, not in the receive loop.
func (m *Migrations) request(r msg.Request) {
	var req MigrateRequest
	if err := decodeControl(r.Body, &req); err != nil {
		b, _ := json.Marshal(MigrateResult{Source: m.cfg.Name, Error: err.Error(), Stage: StageCheck, Code: CodeRefused})
		reply(m.node, r, SvcMigrateResult, b)
		return
	}
	go func() {
		res := m.Migrate(context.Background(), req)
		b, _ := json.Marshal(res)
		if err := retryFull(2*time.Second, func() error { return m.node.Reply(r, SvcMigrateResult, b) }); err != nil {
			m.cfg.Log.Warn("migration result not delivered", "pid", req.PID, "err", err)
		}
	}()
}

// source is one outgoing migration.
type source struct {
	m        *Migrations
	req      MigrateRequest
	res      *MigrateResult
	session  uint64
	deadline time.Time
	tree     *procTree
	dump     string // the dump directory
	flight   *InFlight
}

// Migrate runs one migration from this kernel and reports how it went. The
// tree runs in exactly one kernel at every moment it can run: on failure
// before the commit it resumes here.
func (m *Migrations) Migrate(ctx context.Context, req MigrateRequest) *MigrateResult {
	res := &MigrateResult{Source: m.cfg.Name, Target: req.TargetName, PID: req.PID}
	s := &source{m: m, req: req, res: res, deadline: time.Now().Add(deadlineOf(req))}
	var sid [8]byte
	rand.Read(sid[:])
	s.session = binary.LittleEndian.Uint64(sid[:]) | 1
	s.flight = &InFlight{PID: req.PID, Target: req.TargetName, Stage: StageCheck, Since: time.Now()}
	m.mu.Lock()
	m.inflight[s.session] = s.flight
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.inflight, s.session)
		m.mu.Unlock()
	}()
	// Watchers (popvmm status) hear of every stage, and again every few
	// seconds of a long one, until the end.
	s.announce(false)
	stop := make(chan struct{})
	var beat sync.WaitGroup
	beat.Go(func() {
		t := time.NewTicker(progressBeat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.announce(false)
			}
		}
	})
	defer func() {
		close(stop)
		beat.Wait()
		s.announce(true)
	}()
	s.run(ctx)
	if res.Error != "" {
		m.cfg.Log.Warn("migration failed", "pid", req.PID, "target", req.TargetName, "stage", res.Stage, "err", res.Error)
	} else {
		m.cfg.Log.Info("migrated", "pid", req.PID, "target", req.TargetName, "new_pid", res.NewPID, "frozen", time.Duration(res.FrozenNS))
	}
	return res
}

func (s *source) stage(st string) {
	s.m.mu.Lock()
	s.flight.Stage = st
	s.m.mu.Unlock()
	s.announce(false)
}

func (s *source) fail(stage, code string, err error) {
	s.res.Stage, s.res.Code, s.res.Error = stage, code, err.Error()
}

func (s *source) run(ctx context.Context) {
	m, req := s.m, s.req
	target := req.TargetName
	if target == "" {
		target = "peer " + strconv.Itoa(req.Target)
		s.res.Target = target
	}
	if req.Target == m.node.ID() {
		s.fail(StageCheck, CodeBadTarget, fmt.Errorf("%s is the kernel the process runs in", target))
		return
	}
	if m.node.PeerState(req.Target) != msg.StateOnline {
		s.fail(StageCheck, CodeBadTarget, fmt.Errorf("%s's agent is not on the window", target))
		return
	}
	if req.PID <= 0 {
		s.fail(StageCheck, CodeNoProcess, fmt.Errorf("no process %d in kernel %s", req.PID, m.cfg.Name))
		return
	}
	if err := m.cfg.CRIU.Available(); err != nil {
		s.fail(StageCheck, CodeRefused, err)
		return
	}
	in := &inspector{proc: m.cfg.Proc, upper: m.cfg.Upper, self: os.Getpid(), dropTCP: req.DropTCP, private: m.cfg.private}
	tree, err := in.tree(req.PID)
	if errors.Is(err, errNoProcess) {
		s.fail(StageCheck, CodeNoProcess, fmt.Errorf("no process %d in kernel %s", req.PID, m.cfg.Name))
		return
	}
	if err != nil {
		s.fail(StageCheck, CodeRefused, err)
		return
	}
	if len(tree.Problems) > 0 {
		s.fail(StageCheck, CodeRefused, fmt.Errorf("process %d cannot migrate: %s", req.PID, strings.Join(tree.Problems, "; ")))
		return
	}
	s.tree = tree

	// Prepare: the target checks what it can before anything is frozen.
	s.stage(StagePrepare)
	prep := prepareMsg{Session: s.session, PID: req.PID, PIDs: tree.PIDs, Carried: tree.Carried, Dirs: tree.Dirs, Bytes: tree.Bytes, DropTCP: req.DropTCP}
	if _, err := s.ask(ctx, SvcMigPrepare, prep); err != nil {
		s.fail(StagePrepare, CodeRefused, err)
		return
	}

	// Freeze and dump.
	s.stage(StageDump)
	s.dump = filepath.Join(m.cfg.Dir, "out-"+hex.EncodeToString(binaryID(s.session)))
	defer os.RemoveAll(s.dump)
	images := filepath.Join(s.dump, "img")
	if err := os.MkdirAll(images, 0o700); err != nil {
		s.abort(StageDump, err)
		return
	}
	dctx, cancel := context.WithDeadline(ctx, s.deadline)
	defer cancel()
	t0 := time.Now()
	err = m.cfg.CRIU.Dump(dctx, req.PID, images, s.dump, CheckpointOptions{DropTCP: req.DropTCP})
	s.res.DumpNS = time.Since(t0).Nanoseconds()
	if err != nil {
		s.abort(StageDump, err)
		return
	}

	// Send the checkpoint and the carried files.
	s.stage(StageTransfer)
	t1 := time.Now()
	files, paths, err := s.fileTable(images)
	if err == nil {
		_, err = s.ask(ctx, SvcMigFiles, filesMsg{Session: s.session, Files: files})
	}
	var crcs []uint32
	if err == nil {
		crcs, err = s.send(dctx, files, paths)
	}
	s.res.TransferNS = time.Since(t1).Nanoseconds()
	if err != nil {
		s.abort(StageTransfer, err)
		return
	}

	// Restore there, stopped.
	s.stage(StageRestore)
	t2 := time.Now()
	a, err := s.ask(ctx, SvcMigRestore, restoreMsg{Session: s.session, CRC32C: crcs})
	s.res.RestoreNS = time.Since(t2).Nanoseconds()
	if err != nil {
		s.abort(StageRestore, err)
		return
	}
	s.res.NewPID = a.PID

	// Commit: the target resumes its copy; this one is killed.
	s.stage(StageCommit)
	if !s.commit(ctx) {
		return
	}
	s.res.FrozenNS = time.Since(t0).Nanoseconds()
	s.kill()
	for _, c := range tree.Carried {
		if !s.openElsewhere(c) {
			os.Remove(c)
		}
	}
	s.res.Carried = tree.Carried
}

// ask sends a control message to the target and waits, until the
// migration's deadline, for its answer; an answer that is not ok is an
// error saying the target's reason.
func (s *source) ask(ctx context.Context, svc uint8, v any) (answerMsg, error) {
	body, _ := json.Marshal(v)
	ctx, cancel := context.WithDeadline(ctx, s.deadline)
	defer cancel()
	var call *msg.Call
	err := retryUntil(ctx, func() (err error) {
		call, err = s.m.node.Ask(s.req.Target, svc, SvcMigAnswer, body)
		return err
	})
	if err != nil {
		return answerMsg{}, fmt.Errorf("ask %s: %w", s.res.Target, err)
	}
	defer call.Close()
	b, err := call.Wait(ctx)
	if err != nil {
		return answerMsg{}, fmt.Errorf("%s: %w", s.res.Target, err)
	}
	var a answerMsg
	if err := json.Unmarshal(b, &a); err != nil {
		return answerMsg{}, fmt.Errorf("%s answered garbage: %w", s.res.Target, err)
	}
	if !a.OK {
		return a, errors.New(a.Error)
	}
	return a, nil
}

// retryUntil calls send until it does not fail with a full ring, or ctx
// ends.
func retryUntil(ctx context.Context, send func() error) error {
	wait := 20 * time.Microsecond
	for {
		err := send()
		if !errors.Is(err, msg.ErrRingFull) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, time.Millisecond)
	}
}

// fileTable lists the dump's images, then the carried files as they are
// now (the tree is stopped).
func (s *source) fileTable(images string) ([]fileMeta, []string, error) {
	ents, err := os.ReadDir(images)
	if err != nil {
		return nil, nil, err
	}
	var files []fileMeta
	var paths []string
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, fileMeta{Name: e.Name(), Size: fi.Size()})
		paths = append(paths, filepath.Join(images, e.Name()))
		s.res.Images++
	}
	for _, c := range s.tree.Carried {
		var st unix.Stat_t
		if err := unix.Stat(c, &st); err != nil {
			return nil, nil, fmt.Errorf("carried file %s: %w", c, err)
		}
		files = append(files, fileMeta{Path: c, Size: st.Size, Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid),
			MtimeNS: st.Mtim.Nano()})
		paths = append(paths, c)
	}
	return files, paths, nil
}

// send streams every file to the target in chunks and returns their
// checksums. The ring's back-pressure paces it.
func (s *source) send(ctx context.Context, files []fileMeta, paths []string) ([]uint32, error) {
	size := defaultChunk
	buf := make([]byte, chunkHeader+size)
	crcs := make([]uint32, len(files))
	for i, f := range files {
		fd, err := os.Open(paths[i])
		if err != nil {
			return nil, err
		}
		crc := crc32.New(crcTable)
		var off int64
		for off < f.Size {
			n, err := io.ReadFull(fd, buf[chunkHeader:chunkHeader+min(int64(size), f.Size-off)])
			if err != nil {
				fd.Close()
				return nil, fmt.Errorf("read %s: %w", paths[i], err)
			}
			appendChunkHeader(buf[:0], s.session, uint32(i), uint64(off))
			for {
				err = retryUntil(ctx, func() error { return s.m.node.Send(s.req.Target, SvcMigChunk, buf[:chunkHeader+n]) })
				if !errors.Is(err, msg.ErrTooLarge) || n <= 256 {
					break
				}
				// A small window's ring: send this piece in halves.
				size = max(size/2, 256)
				if n > size {
					if _, err := fd.Seek(off+int64(size), io.SeekStart); err != nil {
						fd.Close()
						return nil, err
					}
					n = size
				}
			}
			if err != nil {
				fd.Close()
				return nil, fmt.Errorf("send %s to %s: %w", f.Name+f.Path, s.res.Target, err)
			}
			crc.Write(buf[chunkHeader : chunkHeader+n])
			off += int64(n)
			s.res.Bytes += int64(n)
		}
		fd.Close()
		crcs[i] = crc.Sum32()
	}
	return crcs, nil
}

// abort undoes a migration that failed before its commit: the target
// drops what it has, and the tree here resumes.
func (s *source) abort(stage string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.deadline = time.Now().Add(10 * time.Second)
	if a, aerr := s.ask(ctx, SvcMigAbort, sessionMsg{Session: s.session}); aerr == nil && a.State == stateCommitted {
		// The target resumed it after all: the migration is done.
		s.kill()
		return
	}
	s.resume()
	s.fail(stage, CodeFailed, fmt.Errorf("%w; process %d resumed on %s", err, s.req.PID, s.m.cfg.Name))
}

// commit asks the target to resume its copy. It reports whether the tree
// now runs there; if not, it has resumed the tree here or, when the target
// cannot tell, left it stopped and said so.
func (s *source) commit(ctx context.Context) bool {
	_, err := s.ask(ctx, SvcMigCommit, sessionMsg{Session: s.session})
	if err == nil {
		return true
	}
	if errors.Is(err, msg.ErrPeerGone) || errors.Is(err, msg.ErrPeerOffline) {
		// The target went away, and its copy with it.
		s.resume()
		s.fail(StageCommit, CodeFailed, fmt.Errorf("%w; process %d resumed on %s", err, s.req.PID, s.m.cfg.Name))
		return false
	}
	actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.deadline = time.Now().Add(10 * time.Second)
	a, aerr := s.ask(actx, SvcMigAbort, sessionMsg{Session: s.session})
	switch {
	case aerr == nil && a.State == stateCommitted:
		return true
	case aerr == nil && a.State == stateAborted:
		s.resume()
		s.fail(StageCommit, CodeFailed, fmt.Errorf("%w; process %d resumed on %s", err, s.req.PID, s.m.cfg.Name))
	case errors.Is(aerr, msg.ErrPeerGone) || errors.Is(aerr, msg.ErrPeerOffline):
		s.resume()
		s.fail(StageCommit, CodeFailed, fmt.Errorf("%w; process %d resumed on %s", err, s.req.PID, s.m.cfg.Name))
	default:
		s.fail(StageCommit, CodeUndecided, fmt.Errorf("%w; %s could not say whether it resumed its copy (pid %d), so process %d is left stopped on %s: "+
			"resume one of them with kill -CONT and kill the other", err, s.res.Target, s.res.NewPID, s.req.PID, s.m.cfg.Name))
	}
	return false
}

// treePIDs is the tree as inspected and as it is now (stopped tasks do not
// fork, but a task may have forked before the freeze).
func (s *source) treePIDs() []int {
	pids := slices.Clone(s.tree.PIDs)
	for _, p := range descendants(s.m.cfg.Proc, s.req.PID) {
		if !slices.Contains(pids, p) {
			pids = append(pids, p)
		}
	}
	return pids
}

func (s *source) resume() {
	for _, p := range s.treePIDs() {
		unix.Kill(p, syscall.SIGCONT)
	}
}

// kill ends the stopped tree here and waits, a few seconds at most, for
// it to be gone.
func (s *source) kill() {
	pids := s.treePIDs()
	for _, p := range pids {
		unix.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for time.Now().Before(deadline) {
			st, err := (&inspector{proc: s.m.cfg.Proc}).readStat(p)
			if err != nil || st.zombieOnly {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// openElsewhere says whether a process outside the migrated tree holds
// path open.
func (s *source) openElsewhere(path string) bool {
	ents, _ := os.ReadDir(s.m.cfg.Proc)
	gone := map[int]bool{}
	for _, p := range s.tree.PIDs {
		gone[p] = true
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || gone[pid] {
			continue
		}
		dir := filepath.Join(s.m.cfg.Proc, e.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join(dir, fd.Name())); l == path {
				return true
			}
		}
	}
	return false
}

// MigrateFrom asks the agent of peer source to migrate a process tree (the
// command's side) and waits for the result. The reply service is taken
// over on node.
func MigrateFrom(ctx context.Context, node *msg.Node, source int, req MigrateRequest) (*MigrateResult, error) {
	node.HandleReplies(SvcMigrateResult)
	body, _ := json.Marshal(req)
	call, err := node.Ask(source, SvcMigrate, SvcMigrateResult, body)
	if err != nil {
		return nil, err
	}
	defer call.Close()
	b, err := call.Wait(ctx)
	if err != nil {
		return nil, err
	}
	var res MigrateResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("the agent's result: %w", err)
	}
	return &res, nil
}
