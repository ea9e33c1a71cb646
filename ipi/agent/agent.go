// Package agent holds the services popagent offers on the window — ping and
// info — and the caller side popvmm uses to reach them. The same code serves
// inside a guest kernel and in a host process.
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
// requests from any peer, each to the incarnation that asked.
func Serve(node *msg.Node, name, procRoot string) {
	node.HandleRequests(SvcPing, func(r msg.Request) {
		if len(r.Body) == 0 {
			reply(node, r, SvcPong, nil)
		}
	})
	node.HandleRequests(SvcInfo, func(r msg.Request) {
		if len(r.Body) != 0 {
			return
		}
		info, err := ReadInfo(name, procRoot)
		if err != nil {
			info = Info{Name: name, Release: "unknown: " + err.Error()}
		}
		b, _ := json.Marshal(info)
		reply(node, r, SvcInfoReply, b)
	})
}

// reply answers r, retrying briefly on a full ring (the requester is
// draining). It runs in the receive loop, so it gives up after 100 ms.
func reply(node *msg.Node, r msg.Request, svc uint8, body []byte) {
	retryFull(100*time.Millisecond, func() error { return node.Reply(r, svc, body) })
}

// sendWithin sends p, retrying while the destination ring is full, for at
// most d.
func sendWithin(node *msg.Node, to int, svc uint8, p []byte, d time.Duration) error {
	return retryFull(d, func() error { return node.Send(to, svc, p) })
}

// retryFull calls send until it does not fail with a full ring, for at
// most d.
func retryFull(d time.Duration, send func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := send()
		if !errors.Is(err, msg.ErrRingFull) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Caller sends requests from a node and takes their replies through the
// node's table of requests (msg.Node.Ask): a reply counts only from the
// peer asked, in the incarnation asked.
type Caller struct {
	node *msg.Node
}

// NewCaller takes over the reply services on node.
func NewCaller(node *msg.Node) *Caller {
	node.HandleReplies(SvcPong)
	node.HandleReplies(SvcInfoReply)
	return &Caller{node: node}
}

// call sends a request of service svc with a fresh id and waits for its
// reply, a message of service reply.
func (c *Caller) call(ctx context.Context, peer int, svc, reply uint8) ([]byte, error) {
	call, err := c.node.Ask(peer, svc, reply, nil)
	if err != nil {
		return nil, err
	}
	defer call.Close()
	return call.Wait(ctx)
}

// Ping measures one round trip to peer's agent.
func (c *Caller) Ping(ctx context.Context, peer int) (time.Duration, error) {
	t0 := time.Now()
	if _, err := c.call(ctx, peer, SvcPing, SvcPong); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// Info asks peer's agent about its kernel.
func (c *Caller) Info(ctx context.Context, peer int) (Info, error) {
	r, err := c.call(ctx, peer, SvcInfo, SvcInfoReply)
	if err != nil {
		return Info{}, err
	}
	var info Info
	if err := json.Unmarshal(r, &info); err != nil {
		return Info{}, fmt.Errorf("info from peer %d: %w", peer, err)
	}
	return info, nil
}
