// Package agent holds the services popagent offers on the window — ping and
// info — and the caller side popvmm uses to reach them. The same code serves
// inside a guest kernel and in a host process.
package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/popvmm/popvmm/ipi/msg"
)

// Service ids (docs/window-protocol.md, "Services").
const (
	SvcPing      uint8 = 1 // request: 8-byte id
	SvcPong      uint8 = 2 // reply: the same 8 bytes
	SvcInfo      uint8 = 3 // request: 8-byte id
	SvcInfoReply uint8 = 4 // reply: 8-byte id + Info as JSON
)

// Info is what `popvmm msg info` shows about a kernel.
type Info struct {
	Name         string     `json:"name"`
	Release      string     `json:"release"`
	Uptime       float64    `json:"uptime_s"`
	Load         [3]float64 `json:"load"`
	MemTotal     uint64     `json:"mem_total"`
	MemAvailable uint64     `json:"mem_available"`
}

// ReadInfo gathers Info from a /proc tree (procRoot "" is /proc).
func ReadInfo(name, procRoot string) (Info, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	info := Info{Name: name}
	rel, err := os.ReadFile(filepath.Join(procRoot, "sys/kernel/osrelease"))
	if err != nil {
		return info, err
	}
	info.Release = strings.TrimSpace(string(rel))
	if b, err := os.ReadFile(filepath.Join(procRoot, "uptime")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			info.Uptime, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile(filepath.Join(procRoot, "loadavg")); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 3 && i < len(f); i++ {
			info.Load[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	if f, err := os.Open(filepath.Join(procRoot, "meminfo")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			switch k {
			case "MemTotal":
				info.MemTotal = kb * 1024
			case "MemAvailable":
				info.MemAvailable = kb * 1024
			}
		}
		f.Close()
	}
	return info, nil
}

// Serve registers the agent's services on node: it answers pings and info
// requests from any peer.
func Serve(node *msg.Node, name, procRoot string) {
	node.Register(SvcPing, func(from int, p []byte) {
		if len(p) == 8 {
			reply(node, from, SvcPong, p)
		}
	})
	node.Register(SvcInfo, func(from int, p []byte) {
		if len(p) != 8 {
			return
		}
		info, err := ReadInfo(name, procRoot)
		if err != nil {
			info = Info{Name: name, Release: "unknown: " + err.Error()}
		}
		b, _ := json.Marshal(info)
		reply(node, from, SvcInfoReply, append(append([]byte{}, p...), b...))
	})
}

// reply sends, retrying briefly on a full ring (the requester is draining).
// It runs in the receive loop, so it gives up after 100 ms.
func reply(node *msg.Node, to int, svc uint8, p []byte) {
	sendWithin(node, to, svc, p, 100*time.Millisecond)
}

// sendWithin sends p, retrying while the destination ring is full, for at
// most d.
func sendWithin(node *msg.Node, to int, svc uint8, p []byte, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := node.Send(to, svc, p)
		if !errors.Is(err, msg.ErrRingFull) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// pending is a table of requests awaiting their replies: a request is
// its id (8 bytes, little-endian), and its reply starts with the same id.
type pending struct {
	mu   sync.Mutex
	next uint64
	wait map[uint64]chan []byte
}

// send sends svc to peer as a request with a fresh id. It returns the
// channel the reply comes on and a func that forgets the request, to call
// once it is answered or abandoned.
func (q *pending) send(node *msg.Node, peer int, svc uint8) (<-chan []byte, func(), error) {
	q.mu.Lock()
	if q.wait == nil {
		q.wait = map[uint64]chan []byte{}
	}
	q.next++
	id := q.next
	ch := make(chan []byte, 1)
	q.wait[id] = ch
	q.mu.Unlock()
	forget := func() {
		q.mu.Lock()
		delete(q.wait, id)
		q.mu.Unlock()
	}
	var req [8]byte
	binary.LittleEndian.PutUint64(req[:], id)
	if err := node.Send(peer, svc, req[:]); err != nil {
		forget()
		return nil, nil, err
	}
	return ch, forget, nil
}

// deliver hands reply to the request whose id p starts with (at least 8
// bytes), if one awaits it; a request takes only its first reply.
func (q *pending) deliver(p []byte, reply []byte) {
	id := binary.LittleEndian.Uint64(p)
	q.mu.Lock()
	ch, ok := q.wait[id]
	delete(q.wait, id)
	q.mu.Unlock()
	if ok {
		ch <- reply
	}
}

// Caller sends requests from a node and matches replies to them by id.
type Caller struct {
	node    *msg.Node
	pending pending
}

// NewCaller takes over the reply services on node.
func NewCaller(node *msg.Node) *Caller {
	c := &Caller{node: node}
	deliver := func(_ int, p []byte) {
		if len(p) < 8 {
			return
		}
		c.pending.deliver(p, append([]byte(nil), p[8:]...))
	}
	node.Register(SvcPong, deliver)
	node.Register(SvcInfoReply, deliver)
	return c
}

// call sends a request with a fresh id and waits for its reply.
func (c *Caller) call(ctx context.Context, peer int, svc uint8) ([]byte, error) {
	ch, forget, err := c.pending.send(c.node, peer, svc)
	if err != nil {
		return nil, err
	}
	defer forget()
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no reply from peer %d: %w", peer, ctx.Err())
	}
}

// Ping measures one round trip to peer's agent.
func (c *Caller) Ping(ctx context.Context, peer int) (time.Duration, error) {
	t0 := time.Now()
	if _, err := c.call(ctx, peer, SvcPing); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// Info asks peer's agent about its kernel.
func (c *Caller) Info(ctx context.Context, peer int) (Info, error) {
	r, err := c.call(ctx, peer, SvcInfo)
	if err != nil {
		return Info{}, err
	}
	var info Info
	if err := json.Unmarshal(r, &info); err != nil {
		return Info{}, fmt.Errorf("info from peer %d: %w", peer, err)
	}
	return info, nil
}
