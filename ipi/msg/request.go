package msg

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Requests and their replies (docs/window-protocol.md, "Requests"): a
// request's payload starts with an 8-byte little-endian id, and its reply's
// with the same id. A node keeps one table of the requests it awaits,
// keyed by the peer asked, that peer's incarnation (generation) when it was
// asked, and the id: a reply counts only when all three match, so no other
// peer, and no later incarnation of the one asked, can answer for it. Ids
// carry the asking node's own generation in their top half, so a reply
// meant for an earlier incarnation of this node's id matches nothing either.

// ReqIDLen is the size of the id that starts every request and reply.
const ReqIDLen = 8

// ErrPeerGone is returned for a request whose peer left, crashed, or was
// replaced by a new incarnation before it answered.
var ErrPeerGone = errors.New("the peer went away")

// Sender is one incarnation of a peer: its id and its generation.
type Sender struct {
	ID  int
	Gen uint32
}

// SenderHandler receives one message with the incarnation that sent it.
// payload is valid only during the call.
type SenderHandler func(from Sender, payload []byte)

// RegisterSender sets the handler for service, telling it which incarnation
// of the sending peer sent each message; nil removes it.
func (n *Node) RegisterSender(service uint8, h SenderHandler) {
	if h == nil {
		n.Register(service, nil)
		return
	}
	// Handlers run in the receive loop, which owns gens: the generation
	// the sender had when it wrote this message (drain checks it again
	// after reading the message).
	n.Register(service, func(from int, p []byte) { h(Sender{from, n.gens[from]}, p) })
}

// Present reports whether incarnation s of its peer is still on the window:
// online, and not replaced by a newer check-in under its id.
func (n *Node) Present(s Sender) bool {
	return n.PeerState(s.ID) == StateOnline && n.Generation(s.ID) == s.Gen
}

// Request is one request as its handler sees it.
type Request struct {
	From Sender // the incarnation that asked: the only one its reply goes to
	ID   uint64
	Body []byte // what follows the id; valid only during the call
}

// HandleRequests sets h as the handler of service's requests. A message
// shorter than an id is dropped.
func (n *Node) HandleRequests(service uint8, h func(Request)) {
	n.RegisterSender(service, func(from Sender, p []byte) {
		if len(p) < ReqIDLen {
			return
		}
		h(Request{From: from, ID: binary.LittleEndian.Uint64(p), Body: p[ReqIDLen:]})
	})
}

// Reply sends service's reply to r: r's id, then body, to the incarnation
// that asked, and to no other. It does not block (ErrRingFull, as Send);
// the asker having gone is ErrPeerGone.
func (n *Node) Reply(r Request, service uint8, body []byte) error {
	if !n.Present(r.From) {
		return fmt.Errorf("reply to peer %d: %w", r.From.ID, ErrPeerGone)
	}
	p := make([]byte, ReqIDLen, ReqIDLen+len(body))
	binary.LittleEndian.PutUint64(p, r.ID)
	return n.Send(r.From.ID, service, append(p, body...))
}

// reqKey names one awaited reply.
type reqKey struct {
	peer  Sender
	id    uint64
	reply uint8 // the service the answer comes as
}

// requests is a node's table of requests awaiting their replies.
type requests struct {
	mu   sync.Mutex
	next uint32
	wait map[reqKey]chan []byte
}

// HandleReplies makes service a reply service: its messages are handed to
// the request they answer (Ask), if one awaits an answer of that service
// from that peer's incarnation under that id, and dropped otherwise.
func (n *Node) HandleReplies(service uint8) {
	n.RegisterSender(service, func(from Sender, p []byte) {
		if len(p) < ReqIDLen {
			return
		}
		n.reqs.deliver(reqKey{from, binary.LittleEndian.Uint64(p), service}, p[ReqIDLen:])
	})
}

// deliver hands a copy of body to the request key names, if one awaits it;
// a request takes only its first reply.
func (q *requests) deliver(key reqKey, body []byte) {
	q.mu.Lock()
	ch, ok := q.wait[key]
	delete(q.wait, key)
	q.mu.Unlock()
	if ok {
		ch <- append([]byte(nil), body...)
	}
}

// Call is one request awaiting its reply.
type Call struct {
	n    *Node
	key  reqKey
	done chan []byte
}

// Ask sends service's request with body to peer's current incarnation
// under a fresh id; the reply, a message of service reply (a reply
// service: HandleReplies) from that incarnation with that id, comes
// through Wait. Close the Call once it is answered or abandoned.
func (n *Node) Ask(peer int, service, reply uint8, body []byte) (*Call, error) {
	gen := n.Generation(peer)
	if n.PeerState(peer) != StateOnline || gen == 0 {
		return nil, fmt.Errorf("ask peer %d: %w", peer, ErrPeerOffline)
	}
	q := &n.reqs
	q.mu.Lock()
	if q.wait == nil {
		q.wait = map[reqKey]chan []byte{}
	}
	q.next++
	c := &Call{n: n, key: reqKey{Sender{peer, gen}, uint64(n.gen)<<32 | uint64(q.next), reply}, done: make(chan []byte, 1)}
	q.wait[c.key] = c.done
	q.mu.Unlock()
	p := make([]byte, ReqIDLen, ReqIDLen+len(body))
	binary.LittleEndian.PutUint64(p, c.key.id)
	if err := n.Send(peer, service, append(p, body...)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Peer is the incarnation the request was sent to.
func (c *Call) Peer() Sender { return c.key.peer }

// Wait returns the reply's body (what follows the id). It gives up when ctx
// ends, or with ErrPeerGone when the asked incarnation leaves first.
func (c *Call) Wait(ctx context.Context) ([]byte, error) {
	t := time.NewTicker(c.n.opt.Heartbeat)
	defer t.Stop()
	for {
		select {
		case r := <-c.done:
			return r, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("no reply from peer %d: %w", c.key.peer.ID, ctx.Err())
		case <-t.C:
			if !c.n.Present(c.key.peer) {
				select {
				case r := <-c.done: // it answered before it went
					return r, nil
				default:
				}
				return nil, fmt.Errorf("no reply from peer %d: %w", c.key.peer.ID, ErrPeerGone)
			}
		}
	}
}

// Close forgets the request: a reply arriving later is dropped.
func (c *Call) Close() {
	q := &c.n.reqs
	q.mu.Lock()
	delete(q.wait, c.key)
	q.mu.Unlock()
}
