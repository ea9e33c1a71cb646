package layering

import "slices"

// Rule names, for a test to single one out.
const (
	RuleDevices    = "devices import no vmm"
	RuleVMM        = "vmm imports no device"
	RuleSupervisor = "supervisor imports no vmm/*"
	RuleCluster    = "cluster is pure"
)

// Roots are the directories whose packages the rules govern, for Load.
var Roots = []string{"vtty", "vnet", "vblk", "ipi", "vmm", "supervisor", "cluster"}

// Rules are popvmm's layering rules for module (its path):
//   - the device models (vtty, vnet, vblk, ipi and their subpackages) never
//     import the VM package vmm itself: they reach the VMM through the
//     small interfaces of vmm/bus, vmm/pci and vmm/virtio;
//   - vmm and its subpackages never import a device model;
//   - the supervisor (the control plane) imports no vmm package: the
//     machine package builds and runs VMs for it;
//   - cluster, parsing and checking cluster.toml, depends on no device
//     model, no netlink and not the virtio transport, anywhere in its
//     dependencies.
func Rules(module string) []Rule {
	m := func(p string) string { return module + "/" + p }
	devices := []string{m("vtty/..."), m("vnet/..."), m("vblk/..."), m("ipi/...")}
	return []Rule{
		{Name: RuleDevices, From: devices, Deny: []string{module + "/vmm"}},
		{Name: RuleVMM, From: []string{m("vmm/...")}, Deny: devices},
		{Name: RuleSupervisor, From: []string{m("supervisor/...")}, Deny: []string{m("vmm/...")}},
		{Name: RuleCluster, From: []string{m("cluster/...")}, Deps: true,
			Deny: slices.Concat(devices, []string{m("vmm/virtio/..."), "github.com/vishvananda/..."}),
		},
	}
}
