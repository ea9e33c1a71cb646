package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/popvmm/popvmm/cluster"
)

// Conflicts checks cl against the other clusters up under runRoot: a host
// core may belong to one kernel of one cluster only, and two clusters may
// share neither a bridge nor overlapping subnets. It returns the problems
// as *cluster.FieldError, joined; nil when there are none.
func Conflicts(ctx context.Context, runRoot string, cl *cluster.Cluster) error {
	var errs []error
	for _, name := range Live(ctx, runRoot) {
		if name == cl.Name {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := Client{Socket: socketOf(runRoot, name)}.Status(cctx)
		cancel()
		if err != nil {
			continue // went down meanwhile
		}
		errs = append(errs, conflictsWith(cl, st)...)
	}
	return errors.Join(errs...)
}

func conflictsWith(cl *cluster.Cluster, other *Status) []error {
	var errs []error
	fe := func(path, format string, args ...any) {
		errs = append(errs, &cluster.FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	for _, k := range cl.Kernels {
		for _, ok := range other.Kernels {
			for _, c := range k.CPUs {
				if slices.Contains(ok.CPUs, c) {
					fe(fmt.Sprintf("kernel[%d].cpus", k.Index), "core %d is owned by kernel %q of running cluster %q", c, ok.Name, other.Cluster)
				}
			}
		}
	}
	if cl.Network.Bridge == other.Bridge {
		fe("cluster.network.bridge", "%q is the bridge of running cluster %q", other.Bridge, other.Cluster)
	}
	if p, err := netip.ParsePrefix(other.Subnet); err == nil && p.Overlaps(cl.Network.Subnet) {
		fe("cluster.network.subnet", "%s overlaps %s of running cluster %q", cl.Network.Subnet, p, other.Cluster)
	}
	return errs
}
