package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/vtty"
)

// vmLauncher boots kernels as KVM VMs built by package machine, handing
// each the cluster's bridge while the network is up.
type vmLauncher struct {
	log *slog.Logger

	mu  sync.Mutex
	net *clusterNet // nil: no network up, kernels get no NIC
}

// NewVMLauncher is the launcher that boots kernels as KVM VMs.
func NewVMLauncher(log *slog.Logger) (Launcher, error) {
	return &vmLauncher{log: log}, nil
}

// Launch implements Launcher: machine.Build with the kernel's boot and the
// cluster-wide pieces it joins.
func (l *vmLauncher) Launch(_ context.Context, k *cluster.Kernel, b Boot, console *vtty.Console) (Machine, error) {
	cfg := machine.Config{Kernel: k, Initrd: b.Initrd, Cmdline: b.Cmdline, Console: console,
		Window: b.Window, Winnet: b.Winnet, OnReset: b.OnReset, Log: l.log}
	l.mu.Lock()
	if n := l.net; n != nil {
		cfg.Network = &machine.Network{Cluster: n.cl.Name, Bridge: n.bridge}
	}
	l.mu.Unlock()
	m, err := machine.Build(cfg)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// startNetwork implements networkLauncher: the bridge, until stop.
func (l *vmLauncher) startNetwork(cl *cluster.Cluster) (func(), error) {
	n, err := upBridge(cl, l.log)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	l.mu.Lock()
	l.net = n
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.net = nil
		l.mu.Unlock()
		n.down(l.log)
	}, nil
}
