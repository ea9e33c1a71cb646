package supervisor

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/vnet"
)

// networkLauncher is a Launcher whose kernels need the cluster's host
// network: the supervisor starts it before the first kernel boots and stops
// it after the last one is down.
type networkLauncher interface {
	startNetwork(cl *cluster.Cluster) (stop func(), err error)
}

// startNetwork brings up the cluster's host network if the launcher needs
// one; the returned function takes it down again.
func (s *Supervisor) startNetwork() (func(), error) {
	nl, ok := s.launcher.(networkLauncher)
	if !ok {
		return func() {}, nil
	}
	return nl.startNetwork(s.cl)
}

// BridgeOwner is the alias popvmm gives the bridge of cluster while a
// supervisor runs it from runDir: how the next `up` tells a bridge that a
// killed supervisor of the cluster left behind (deleted, then made
// afresh) from one that a live supervisor of a cluster of the same name,
// run from another run directory, still uses (refused), and from anyone
// else's (refused).
func BridgeOwner(cluster, runDir string) string {
	return bridgeOwnerPrefix(cluster) + " run " + runDir
}

func bridgeOwnerPrefix(cluster string) string { return "popvmm cluster " + cluster }

// staleBridge is upBridge's test of a bridge of the cluster's name found
// on the host (vnet.RemoveStaleBridge): nil when its owner is gone.
func staleBridge(cl *cluster.Cluster) func(alias string) error {
	prefix := bridgeOwnerPrefix(cl.Name)
	return func(alias string) error {
		dir, ours := strings.CutPrefix(alias, prefix+" run ")
		switch {
		case alias == prefix:
			return nil // an earlier popvmm's alias named no run directory
		case !ours:
			return fmt.Errorf("a bridge of that name exists and is not cluster %s's (its alias is %q); delete it (ip link del %s) or set another cluster.network.bridge",
				cl.Name, alias, cl.Network.Bridge)
		case dir == cl.RunDir:
			return nil // this supervisor holds that run directory
		}
		if pid, held := Held(dir); held {
			return fmt.Errorf("cluster %s, run from %s by supervisor pid %d, is up and uses it; bring that one down or set another cluster.network.bridge",
				cl.Name, dir, pid)
		}
		return nil
	}
}

// TapName is kernel k's tap in cluster cl.
func TapName(cl *cluster.Cluster, k *cluster.Kernel) string { return linkname.Tap(cl.Name, k.Index) }

// clusterNet is a cluster's host network while it is up: its bridge, with
// the host's address on it. Kernels' taps come and go on it.
type clusterNet struct {
	cl     *cluster.Cluster
	bridge *vnet.Bridge
}

// upBridge makes the cluster's bridge: a stale one of the same cluster
// (its supervisor was killed) is deleted first, so nothing of the earlier
// run survives; a link of that name that is not the cluster's is refused.
// No forwarding and no NAT: the host and the kernels share one subnet.
func upBridge(cl *cluster.Cluster, log *slog.Logger) (*clusterNet, error) {
	owner := BridgeOwner(cl.Name, cl.RunDir)
	name := cl.Network.Bridge
	stale, err := vnet.RemoveStaleBridge(name, staleBridge(cl))
	if err != nil {
		return nil, err
	}
	if stale {
		log.Warn("removed the bridge a killed supervisor of this cluster left behind", "bridge", name)
	}
	b, err := vnet.BridgeConfig{
		Name:  name,
		Addrs: []netip.Prefix{netip.PrefixFrom(cl.Network.Host, cl.Network.Subnet.Bits())},
		Owner: owner,
	}.Ensure()
	if err != nil {
		return nil, err
	}
	log.Info("bridge up", "bridge", name, "host", cl.Network.Host, "subnet", cl.Network.Subnet)
	return &clusterNet{cl: cl, bridge: b}, nil
}

func (n *clusterNet) down(log *slog.Logger) {
	if err := n.bridge.Remove(); err != nil {
		log.Error("remove bridge", "bridge", n.bridge.Name, "err", err)
		return
	}
	log.Info("bridge removed", "bridge", n.bridge.Name)
}
