package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Process migration (docs/migration.md): the command asks the source
// agent to migrate a process tree; the source checks it, has the target
// prepare, dumps the tree with CRIU (left stopped), sends the checkpoint
// through the window in chunks, has the target restore it stopped, and
// commits: the target resumes its copy and the source kills its own. Any
// failure before the commit resumes the source's copy.
const (
	SvcMigrate       uint8 = 11 // command → source: request id, JSON MigrateRequest
	SvcMigrateResult uint8 = 12 // source → command: request id, JSON MigrateResult
	SvcMigPrepare    uint8 = 13 // source → target: request id, JSON prepareMsg
	SvcMigAnswer     uint8 = 14 // target → source: request id, JSON answerMsg
	SvcMigFiles      uint8 = 15 // source → target: request id, JSON filesMsg
	SvcMigChunk      uint8 = 16 // source → target: session, file, offset, bytes
	SvcMigRestore    uint8 = 17 // source → target: request id, JSON restoreMsg
	SvcMigCommit     uint8 = 18 // source → target: request id, JSON sessionMsg
	SvcMigAbort      uint8 = 19 // source → target: request id, JSON sessionMsg
)

// Limits on what a peer may announce (docs/migration.md, "Messages").
const (
	maxMigFiles     = 4096
	maxImageName    = 255
	maxCarriedTotal = 1 << 30 // bytes of private files that go with a tree
	maxMigPIDs      = 4096
	maxControlMsg   = 1 << 20 // a control message's JSON
	defaultChunk    = 32 << 10
	chunkHeader     = 8 + 4 + 8
)

// Migration stages, as a failure reports them.
const (
	StageCheck    = "check"
	StagePrepare  = "prepare"
	StageDump     = "dump"
	StageTransfer = "transfer"
	StageRestore  = "restore"
	StageCommit   = "commit"
)

// Failure codes a MigrateResult carries, for callers that act on them.
const (
	CodeNoProcess = "no_such_process" // the PID does not exist in the source kernel
	CodeRefused   = "refused"         // the tree holds what cannot migrate, or the target cannot take it
	CodeFailed    = "failed"          // a step failed after freezing; the tree resumed on the source
	CodeUndecided = "undecided"       // the target did not answer the commit: the source's copy is left stopped
	CodeBadTarget = "bad_target"      // the target peer is not there, or is the source
)

// MigrateRequest is what the command asks the source agent.
type MigrateRequest struct {
	PID        int    `json:"pid"`
	Target     int    `json:"target"` // the target's peer id
	TargetName string `json:"target_name"`
	DropTCP    bool   `json:"drop_tcp"`
	TimeoutMS  int64  `json:"timeout_ms"`
}

// MigrateResult is the source agent's answer, and `popvmm migrate --json`'s
// output.
type MigrateResult struct {
	Source     string   `json:"source"`
	Target     string   `json:"target"`
	PID        int      `json:"pid"`
	NewPID     int      `json:"new_pid,omitempty"`
	FrozenNS   int64    `json:"frozen_ns,omitempty"`
	DumpNS     int64    `json:"dump_ns,omitempty"`
	TransferNS int64    `json:"transfer_ns,omitempty"`
	RestoreNS  int64    `json:"restore_ns,omitempty"`
	Bytes      int64    `json:"bytes,omitempty"`
	Images     int      `json:"images,omitempty"`
	Carried    []string `json:"carried,omitempty"`
	Error      string   `json:"error,omitempty"`
	Stage      string   `json:"stage,omitempty"`
	Code       string   `json:"code,omitempty"`
}

// Err is the result's failure as an error, nil on success.
func (r *MigrateResult) Err() error {
	if r.Error == "" {
		return nil
	}
	return &MigrateError{Stage: r.Stage, Code: r.Code, Msg: r.Error}
}

// MigrateError is a failed migration as the source agent reported it.
type MigrateError struct{ Stage, Code, Msg string }

func (e *MigrateError) Error() string {
	if e.Stage == "" {
		return e.Msg
	}
	return e.Stage + ": " + e.Msg
}

// prepareMsg asks the target whether it can take a tree, before freezing.
type prepareMsg struct {
	Session uint64   `json:"session"`
	PID     int      `json:"pid"`
	PIDs    []int    `json:"pids"`
	Carried []string `json:"carried"`
	Dirs    []string `json:"dirs"`
	Bytes   int64    `json:"bytes"` // an estimate of the checkpoint, for the room check
	DropTCP bool     `json:"drop_tcp"`
}

// fileMeta is one file of a checkpoint: a CRIU image (Name) or a carried
// file (Path).
type fileMeta struct {
	Name    string `json:"name,omitempty"`
	Path    string `json:"path,omitempty"`
	Size    int64  `json:"size"`
	Mode    uint32 `json:"mode,omitempty"`
	UID     int    `json:"uid,omitempty"`
	GID     int    `json:"gid,omitempty"`
	MtimeNS int64  `json:"mtime_ns,omitempty"`
}

type filesMsg struct {
	Session uint64     `json:"session"`
	Files   []fileMeta `json:"files"`
}

type restoreMsg struct {
	Session uint64   `json:"session"`
	CRC32C  []uint32 `json:"crc32c"`
}

type sessionMsg struct {
	Session uint64 `json:"session"`
}

// sessioned is a control message naming its session.
type sessioned interface{ sessionID() uint64 }

func (m *filesMsg) sessionID() uint64   { return m.Session }
func (m *restoreMsg) sessionID() uint64 { return m.Session }
func (m *sessionMsg) sessionID() uint64 { return m.Session }

// answerMsg is the target's answer to every control message.
type answerMsg struct {
	OK        bool   `json:"ok"`
	Error     string `json:"error,omitempty"`
	PID       int    `json:"pid,omitempty"`        // restore: the restored root
	State     string `json:"state,omitempty"`      // abort: "aborted" or "committed"
	RestoreNS int64  `json:"restore_ns,omitempty"` // restore: criu restore's time
}

// Abort's answers.
const (
	stateAborted   = "aborted"
	stateCommitted = "committed"
)

// chunk is one piece of a checkpoint file.
type chunk struct {
	Session uint64
	File    uint32
	Offset  uint64
	Data    []byte
}

var errBadChunk = errors.New("malformed chunk")

// parseChunk decodes a chunk message; Data aliases p.
func parseChunk(p []byte) (chunk, error) {
	if len(p) < chunkHeader {
		return chunk{}, fmt.Errorf("%w: %d bytes, want at least %d", errBadChunk, len(p), chunkHeader)
	}
	return chunk{
		Session: binary.LittleEndian.Uint64(p),
		File:    binary.LittleEndian.Uint32(p[8:]),
		Offset:  binary.LittleEndian.Uint64(p[12:]),
		Data:    p[chunkHeader:],
	}, nil
}

// appendChunkHeader appends a chunk's header to b.
func appendChunkHeader(b []byte, session uint64, file uint32, off uint64) []byte {
	b = binary.LittleEndian.AppendUint64(b, session)
	b = binary.LittleEndian.AppendUint32(b, file)
	return binary.LittleEndian.AppendUint64(b, off)
}

// decodeControl decodes a control message's JSON body strictly.
func decodeControl(body []byte, v any) error {
	if len(body) > maxControlMsg {
		return fmt.Errorf("control message of %d bytes (max %d)", len(body), maxControlMsg)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("malformed control message: %w", err)
	}
	return nil
}

// checkImageName accepts a plain file name: what a CRIU image is called.
func checkImageName(name string) error {
	if name == "" || len(name) > maxImageName || name == "." || name == ".." ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("bad image name %q", name)
	}
	return nil
}

// forbiddenRoots are where no carried file or made directory may go.
var forbiddenRoots = []string{"/proc", "/sys", "/dev", "/run/popvmm"}

// checkCarriedPath accepts an absolute, clean path outside the kernel's
// own trees.
func checkCarriedPath(p string) error {
	if p == "" || len(p) > 4096 || !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) {
		return fmt.Errorf("bad path %q", p)
	}
	for _, r := range forbiddenRoots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return fmt.Errorf("path %q is under %s", p, r)
		}
	}
	return nil
}

// checkFiles validates a file table against the limits.
func checkFiles(files []fileMeta) error {
	if len(files) == 0 || len(files) > maxMigFiles {
		return fmt.Errorf("%d files (want 1 to %d)", len(files), maxMigFiles)
	}
	names := map[string]bool{}
	var carried int64
	for i, f := range files {
		if f.Size < 0 {
			return fmt.Errorf("file %d: negative size", i)
		}
		switch {
		case f.Name != "" && f.Path == "":
			if err := checkImageName(f.Name); err != nil {
				return fmt.Errorf("file %d: %w", i, err)
			}
			if names[f.Name] {
				return fmt.Errorf("file %d: %q twice", i, f.Name)
			}
			names[f.Name] = true
		case f.Path != "" && f.Name == "":
			if err := checkCarriedPath(f.Path); err != nil {
				return fmt.Errorf("file %d: %w", i, err)
			}
			if names[f.Path] {
				return fmt.Errorf("file %d: %q twice", i, f.Path)
			}
			names[f.Path] = true
			carried += f.Size
			if carried > maxCarriedTotal {
				return fmt.Errorf("carried files over %d bytes", maxCarriedTotal)
			}
		default:
			return fmt.Errorf("file %d: want exactly one of name and path", i)
		}
	}
	return nil
}

// deadlineOf is the migration's time limit from a request.
func deadlineOf(r MigrateRequest) time.Duration {
	if r.TimeoutMS <= 0 {
		return 2 * time.Minute
	}
	return time.Duration(min(r.TimeoutMS, int64(time.Hour/time.Millisecond))) * time.Millisecond
}
