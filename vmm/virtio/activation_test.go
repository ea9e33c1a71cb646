package virtio_test

import (
	"testing"

	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// TestActivationSeesCurrentSetup: every DRIVER_OK hands the device what
// the driver set up since its last reset, and nothing of before: the
// features of this negotiation, each queue at the size and rings set now
// (a queue left disabled is nil, the maximum size where the driver did not
// choose one), EVENT_IDX on the queues as negotiated now; and a chain's
// descriptor count comes from its own table (one for an indirect chain).
func TestActivationSeesCurrentSetup(t *testing.T) {
	d, dev, _, _ := newTransport(t)
	type setup struct {
		features uint64
		sizes    []uint16 // 0: leave the queue disabled
	}
	for i, s := range []setup{
		{virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc, []uint16{256, 64}},
		{virtio.FeatureVersion1, []uint16{16, 8}},
		{virtio.FeatureVersion1 | virtio.FeatureEventIdx, []uint16{32, 0}},
		{virtio.FeatureVersion1 | virtio.FeatureIndirectDesc, []uint16{256, 64}},
	} {
		f, ok := d.Negotiate(s.features)
		if !ok || f != s.features {
			t.Fatalf("bring-up %d: negotiated %#x (%v), want %#x", i, f, ok, s.features)
		}
		var qs []*virtiotest.DriverQueue
		for q, size := range s.sizes {
			if size == 0 {
				qs = append(qs, nil)
				continue
			}
			qs = append(qs, d.SetupQueue(q, size, virtio.NoVector))
		}
		d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
		dev.mu.Lock()
		got, features := dev.queues, dev.features
		dev.mu.Unlock()
		if features != s.features {
			t.Errorf("bring-up %d: device activated with features %#x, want %#x", i, features, s.features)
		}
		for q, dq := range qs {
			switch {
			case dq == nil && got[q] != nil:
				t.Errorf("bring-up %d: queue %d not enabled, but the device got %+v", i, q, got[q])
			case dq == nil:
			case got[q] == nil:
				t.Errorf("bring-up %d: queue %d enabled, but the device got none", i, q)
			case got[q].Size != dq.Size || got[q].Desc != dq.Desc || got[q].Avail != dq.Avail || got[q].Used != dq.Used:
				t.Errorf("bring-up %d: queue %d is %d at %#x/%#x/%#x, the device got %d at %#x/%#x/%#x", i, q,
					dq.Size, dq.Desc, dq.Avail, dq.Used, got[q].Size, got[q].Desc, got[q].Avail, got[q].Used)
			case got[q].EventIdx != (s.features&virtio.FeatureEventIdx != 0):
				t.Errorf("bring-up %d: queue %d EventIdx %v with features %#x", i, q, got[q].EventIdx, s.features)
			}
		}
	}
}

// TestChainDescriptors: a direct chain takes one entry of the descriptor
// table per buffer, an indirect one a single entry whatever its table
// holds; a chain popped into again forgets what it was.
func TestChainDescriptors(t *testing.T) {
	g := newGuest(t, false)
	g.desc(indAt, 0, bufAt, 10, virtio.DescNext|virtio.DescWrite, 1)
	g.desc(indAt, 1, bufAt+0x100, 20, virtio.DescNext|virtio.DescWrite, 2)
	g.desc(indAt, 2, bufAt+0x200, 30, virtio.DescWrite, 0)
	g.desc(descAt, 0, indAt, 3*16, virtio.DescIndirect, 0)
	g.desc(descAt, 1, bufAt+0x300, 40, virtio.DescNext|virtio.DescWrite, 2)
	g.desc(descAt, 2, bufAt+0x400, 50, virtio.DescWrite, 0)
	g.offer(0)
	g.offer(1)
	var c virtio.Chain
	if ok, err := g.q.PopInto(&c); !ok || err != nil || !c.Indirect || c.Descriptors() != 1 || len(c.Writable) != 3 {
		t.Fatalf("indirect chain %+v (%v %v): %d descriptors, want 1 holding 3 buffers", c, ok, err, c.Descriptors())
	}
	if ok, err := g.q.PopInto(&c); !ok || err != nil || c.Indirect || c.Descriptors() != 2 {
		t.Fatalf("direct chain %+v (%v %v): %d descriptors, want 2", c, ok, err, c.Descriptors())
	}
}
