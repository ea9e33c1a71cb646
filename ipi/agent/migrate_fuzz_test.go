package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

// FuzzParseChunk: any bytes are a chunk or an error, and a chunk's header
// round-trips.
func FuzzParseChunk(f *testing.F) {
	f.Add(appendChunkHeader(nil, 5, 0, 0))
	f.Add(append(appendChunkHeader(nil, 1<<63, 7, 1<<40), "data"...))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, p []byte) {
		c, err := parseChunk(p)
		if err != nil {
			if len(p) >= chunkHeader {
				t.Fatalf("parseChunk(%x) = %v", p, err)
			}
			return
		}
		if h := appendChunkHeader(nil, c.Session, c.File, c.Offset); string(h) != string(p[:chunkHeader]) || len(c.Data) != len(p)-chunkHeader {
			t.Fatalf("parseChunk(%x) = %+v", p, c)
		}
	})
}

// fuzzMessages encodes a sequence of (service, payload) for the target.
func fuzzMessages(msgs ...any) []byte {
	var b []byte
	for i := 0; i < len(msgs); i += 2 {
		p := []byte(msgs[i+1].(string))
		b = append(b, msgs[i].(uint8))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	return b
}

// FuzzMigrateTarget feeds a target agent arbitrary migration messages from
// a hostile peer: each is answered or dropped, never a crash, and nothing
// is written outside the target's staging directory and root.
func FuzzMigrateTarget(f *testing.F) {
	data := "0123456789"
	crc := crc32.Checksum([]byte(data), crcTable)
	chunk := string(append(appendChunkHeader(nil, 5, 0, 0), data...))
	f.Add(fuzzMessages(
		uint8(SvcMigPrepare), `{"session":5,"pid":4242,"pids":[4242],"carried":["/root/c.log"],"dirs":["/root"],"bytes":10}`,
		uint8(SvcMigFiles), `{"session":5,"files":[{"name":"pages-1.img","size":10},{"path":"/root/c.log","size":0,"mode":420}]}`,
		SvcMigChunk, chunk,
		SvcMigRestore, fmt.Sprintf(`{"session":5,"crc32c":[%d,0]}`, crc),
		SvcMigCommit, `{"session":5}`,
		SvcMigAbort, `{"session":5}`))
	f.Add(fuzzMessages(
		uint8(SvcMigPrepare), `{"session":5,"pid":4242,"pids":[4242]}`,
		uint8(SvcMigFiles), `{"session":5,"files":[{"name":"../../etc/passwd","size":10}]}`,
		SvcMigChunk, string(append(appendChunkHeader(nil, 5, 9, 1<<62), data...)),
		SvcMigRestore, `{"session":5,"crc32c":[]}`))
	f.Add(fuzzMessages(
		uint8(SvcMigPrepare), `{"session":5,"pid":4242,"pids":[4242],"carried":["/proc/1/mem","relative"]}`,
		uint8(SvcMigFiles), `{"session":5,"files":[{"name":"a","path":"/b","size":-1}]}`,
		SvcMigChunk, "\x05\x00",
		SvcMigCommit, `{"session":`,
		SvcMigAbort, `null`))
	f.Fuzz(func(t *testing.T, in []byte) {
		dir := t.TempDir()
		mem := make([]byte, 256<<10)
		if _, err := msg.Format(mem, 2); err != nil {
			t.Fatal(err)
		}
		node, err := msg.Join(mem, 0, "target", bells{ch: []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}, msg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := MigrateConfig{Name: "target", Dir: filepath.Join(dir, "run"), CommitWait: time.Hour,
			CRIU: &failingCRIU{}, root: filepath.Join(dir, "root"),
			private: func(string) bool { return false }, pidInUse: func(int) (string, bool) { return "", false }}
		cfg.defaults()
		tg := &migTarget{node: node, cfg: &cfg, sess: map[sessKey]*tSession{}}
		// Peer 1 is not on the window: answers to it fail at once.
		from := msg.Sender{ID: 1, Gen: 1}
		for id := uint64(1); len(in) >= 3; id++ {
			svc, n := in[0], int(binary.LittleEndian.Uint16(in[1:]))
			in = in[3:]
			p := in[:min(n, len(in))]
			in = in[len(p):]
			r := msg.Request{From: from, ID: id, Body: p}
			if svc < SvcMigPrepare || svc > SvcMigAbort {
				svc = SvcMigPrepare + svc%7
			}
			switch svc {
			case SvcMigPrepare:
				tg.prepare(r)
			case SvcMigFiles:
				tg.filesReq(r)
			case SvcMigChunk:
				tg.chunk(from, p)
			case SvcMigRestore:
				tg.restore(r)
			case SvcMigCommit:
				tg.commit(r)
			case SvcMigAbort:
				tg.abortReq(r)
			}
			tg.wg.Wait()
		}
		tg.mu.Lock()
		for _, s := range tg.sess {
			if s.timer != nil {
				s.timer.Stop()
			}
			tg.closeFiles(s)
		}
		tg.mu.Unlock()
	})
}

// failingCRIU restores nothing.
type failingCRIU struct{}

func (failingCRIU) Available() error { return nil }
func (failingCRIU) Dump(ctx context.Context, pid int, images, work string, o CheckpointOptions) error {
	return errors.New("no dumps here")
}
func (failingCRIU) Restore(ctx context.Context, images, work string, o CheckpointOptions) (int, error) {
	return 0, errors.New("restore refused")
}
