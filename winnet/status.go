package winnet

import "github.com/popvmm/popvmm/internal/winmem"

// PeerCounters are what peer p counted for one other peer q: frames and
// bytes it received from q and sent to q, and the ones it dropped (rx:
// bad descriptors and indexes in q's ring; tx: q down, ring full, q's
// index out of range). The peer writes them itself: they are as
// trustworthy as that kernel.
type PeerCounters struct {
	Peer                        int
	RxPackets, RxBytes, RxDrops uint64
	TxPackets, TxBytes, TxDrops uint64
}

// PeerStatus is one peer's section as `popvmm status` shows it.
type PeerStatus struct {
	Up         bool
	Generation uint32
	Heartbeat  uint64
	Armed      bool
	// Peers are the counters for every other peer with any traffic.
	Peers []PeerCounters
}

// ReadPeer reads peer p's section of the formatted window mem (geometry g,
// from Format or Open). Counters of peers without traffic are left out.
func ReadPeer(mem []byte, g Geometry, p int) PeerStatus {
	if p < 0 || p >= g.MaxPeers || uint64(len(mem)) < g.Size {
		return PeerStatus{}
	}
	sec := g.Section(p)
	st := PeerStatus{
		Up:         winmem.Load32(mem, sec+ctlState) == StateUp,
		Generation: winmem.Load32(mem, sec+ctlGen),
		Heartbeat:  winmem.Load64(mem, sec+ctlHeartbeat),
		Armed:      winmem.Load32(mem, sec+ctlArmed) == 1,
	}
	for q := range g.MaxPeers {
		if q == p {
			continue
		}
		b, r := g.peerBlock(p, q), g.Ring(p, q)
		c := PeerCounters{Peer: q,
			RxPackets: winmem.Load64(mem, b+peerRxPackets), RxBytes: winmem.Load64(mem, b+peerRxBytes), RxDrops: winmem.Load64(mem, b+peerRxDrops),
			TxPackets: winmem.Load64(mem, r+ringTxPackets), TxBytes: winmem.Load64(mem, r+ringTxBytes), TxDrops: winmem.Load64(mem, r+ringTxDrops)}
		if c != (PeerCounters{Peer: q}) {
			st.Peers = append(st.Peers, c)
		}
	}
	return st
}

// MarkDown marks peer p down in its section: popvmm does so when p's VM
// stops (crash, stop, reboot), so senders drop frames for it at once
// instead of filling its rings until its heartbeat goes stale.
func MarkDown(mem []byte, g Geometry, p int) {
	if p < 0 || p >= g.MaxPeers || uint64(len(mem)) < g.Size {
		return
	}
	winmem.Store32(mem, g.Section(p)+ctlArmed, 0)
	winmem.Store32(mem, g.Section(p)+ctlState, StateDown)
}
