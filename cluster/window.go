package cluster

import (
	"github.com/popvmm/popvmm/internal/windowgeom"
	"github.com/popvmm/popvmm/memmap"
)

// The window's peers besides the kernels, and its doorbells.
const (
	// WindowHostPeers is how many host processes may join a cluster's
	// window at once (popvmm's own node is one of them).
	WindowHostPeers = 8
	// WindowVectors is the number of doorbell vectors per peer.
	WindowVectors = 1
	// MaxKernels is how many kernels a window holds: the messaging layer's
	// peer table (windowgeom.MaxPeers) less one id for popvmm's own node.
	MaxKernels = windowgeom.MaxPeers - 1
)

// WindowPeers is how many peers cl's window is formatted for: every
// kernel plus WindowHostPeers host peers, at most windowgeom.MaxPeers.
func (cl *Cluster) WindowPeers() int {
	return min(windowgeom.MaxPeers, len(cl.Kernels)+WindowHostPeers)
}

// checkWindowPeers checks what the window's peers need of it: an id for
// every kernel and for popvmm's node, the messaging layer's geometry in
// the window's size (which window.protect maps as page-aligned slots), and
// a KVM ioeventfd per doorbell in every VM within windowgeom.MaxBells.
func (c *checker) checkWindowPeers(cl *Cluster) {
	n := len(cl.Kernels)
	if n > MaxKernels {
		c.errf("kernel", "%d kernels: the shared window holds at most %d (%d peers, one of them popvmm's own node)", n, MaxKernels, windowgeom.MaxPeers)
		return
	}
	if n == 0 || cl.Window.Size == 0 {
		return
	}
	peers := cl.WindowPeers()
	if _, err := windowgeom.For(int(min(cl.Window.Size, 1<<40)), peers); err != nil {
		c.errf("cluster.window.size", "%s is too small for %d peers (%d kernels + %d host peers): %v",
			memmap.FormatSize(cl.Window.Size), peers, n, peers-n, err)
		return
	}
	if cl.Window.Protect {
		for k := range n {
			if _, err := windowgeom.Slots(cl.Window.Size, peers, k, true); err != nil {
				c.errf("cluster.window.protect", "kernel[%d]: %v", k, err)
			}
		}
	}
	if bells := peers * WindowVectors; bells > windowgeom.MaxBells {
		c.errf("kernel", "%d window peers × %d vectors is %d doorbells, over %d (one KVM ioeventfd each in every VM)",
			peers, WindowVectors, bells, windowgeom.MaxBells)
	}
}
