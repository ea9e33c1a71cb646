package layering_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/layering"
)

// TestLayering: popvmm's own source keeps every layering rule.
func TestLayering(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, module, err := layering.ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	g, err := layering.Load(root, module, layering.Roots...)
	if err != nil {
		t.Fatal(err)
	}
	// A loader that read no imports would pass every rule: vnet's tap and
	// bridge code is built on netlink (its package comment says so).
	if !slices.Contains(g[module+"/vnet"], "github.com/vishvananda/netlink") {
		t.Fatalf("Load(%s): vnet imports %v, want netlink among them", root, g[module+"/vnet"])
	}
	for _, r := range layering.Rules(module) {
		t.Run(r.Name, func(t *testing.T) {
			for _, v := range layering.Check(g, []layering.Rule{r}) {
				t.Error(v)
			}
		})
	}
}

const mod = "example.com/m"

// legal is an import graph that keeps every rule.
func legal() layering.Graph {
	return layering.Graph{
		mod + "/vmm":               {mod + "/vmm/bus", mod + "/vmm/kvm", "golang.org/x/sys/unix"},
		mod + "/vmm/bus":           {"sync"},
		mod + "/vmm/kvm":           {"golang.org/x/sys/unix"},
		mod + "/vmm/virtio":        {mod + "/vmm/bus"},
		mod + "/vtty":              {mod + "/vmm/bus"},
		mod + "/vnet":              {mod + "/vmm/virtio", mod + "/internal/linkname", "github.com/vishvananda/netlink"},
		mod + "/ipi":               {mod + "/vmm/bus", mod + "/ipi/msg"},
		mod + "/ipi/msg":           {mod + "/internal/windowgeom"},
		mod + "/supervisor":        {mod + "/machine", mod + "/cluster", mod + "/ipi"},
		mod + "/machine":           {mod + "/vmm", mod + "/vnet", mod + "/ipi"},
		mod + "/cluster":           {mod + "/internal/linkname", mod + "/internal/windowgeom", mod + "/vmm/boot"},
		mod + "/vmm/boot":          {mod + "/memmap"},
		mod + "/internal/linkname": {"golang.org/x/sys/unix"},
	}
}

// TestCheckFabricated: the checker passes a legal graph and finds each
// kind of broken import, direct and through a dependency, naming the
// chain.
func TestCheckFabricated(t *testing.T) {
	rules := layering.Rules(mod)
	if vs := layering.Check(legal(), rules); len(vs) != 0 {
		t.Fatalf("Check(legal graph) = %v, want none", vs)
	}
	for _, tc := range []struct {
		name     string
		pkg, imp string // the import added to the legal graph
		want     layering.Violation
	}{
		{"device imports vmm", mod + "/vtty", mod + "/vmm",
			layering.Violation{Rule: layering.RuleDevices, Pkg: mod + "/vtty", Import: mod + "/vmm", Via: []string{mod + "/vtty", mod + "/vmm"}}},
		{"device subpackage imports vmm", mod + "/ipi/msg", mod + "/vmm",
			layering.Violation{Rule: layering.RuleDevices, Pkg: mod + "/ipi/msg", Import: mod + "/vmm", Via: []string{mod + "/ipi/msg", mod + "/vmm"}}},
		{"vmm imports a device", mod + "/vmm", mod + "/vnet",
			layering.Violation{Rule: layering.RuleVMM, Pkg: mod + "/vmm", Import: mod + "/vnet", Via: []string{mod + "/vmm", mod + "/vnet"}}},
		{"vmm subpackage imports a device subpackage", mod + "/vmm/kvm", mod + "/ipi/msg",
			layering.Violation{Rule: layering.RuleVMM, Pkg: mod + "/vmm/kvm", Import: mod + "/ipi/msg", Via: []string{mod + "/vmm/kvm", mod + "/ipi/msg"}}},
		{"supervisor imports vmm/*", mod + "/supervisor", mod + "/vmm/kvm",
			layering.Violation{Rule: layering.RuleSupervisor, Pkg: mod + "/supervisor", Import: mod + "/vmm/kvm", Via: []string{mod + "/supervisor", mod + "/vmm/kvm"}}},
		{"cluster imports a device", mod + "/cluster", mod + "/ipi",
			layering.Violation{Rule: layering.RuleCluster, Pkg: mod + "/cluster", Import: mod + "/ipi", Via: []string{mod + "/cluster", mod + "/ipi"}}},
		{"cluster reaches netlink through a pure package", mod + "/internal/linkname", "github.com/vishvananda/netlink",
			layering.Violation{Rule: layering.RuleCluster, Pkg: mod + "/cluster", Import: "github.com/vishvananda/netlink",
				Via: []string{mod + "/cluster", mod + "/internal/linkname", "github.com/vishvananda/netlink"}}},
		{"cluster reaches virtio through vmm/boot", mod + "/vmm/boot", mod + "/vmm/virtio",
			layering.Violation{Rule: layering.RuleCluster, Pkg: mod + "/cluster", Import: mod + "/vmm/virtio",
				Via: []string{mod + "/cluster", mod + "/vmm/boot", mod + "/vmm/virtio"}}},
	} {
		g := legal()
		g[tc.pkg] = append(g[tc.pkg], tc.imp)
		vs := layering.Check(g, rules)
		if !slices.ContainsFunc(vs, func(v layering.Violation) bool {
			return equal(v, tc.want)
		}) {
			t.Errorf("%s: Check = %v, want it to hold %v", tc.name, vs, tc.want)
		}
	}
}

func equal(a, b layering.Violation) bool {
	return a.Rule == b.Rule && a.Pkg == b.Pkg && a.Import == b.Import && slices.Equal(a.Via, b.Via)
}

// TestCheckUngoverned: a rule that governs no package of the graph is
// reported, so a renamed directory cannot silently retire a rule.
func TestCheckUngoverned(t *testing.T) {
	vs := layering.Check(legal(), []layering.Rule{{Name: "gone", From: []string{mod + "/nothing/..."}, Deny: []string{mod + "/vmm"}}})
	if len(vs) != 1 || vs[0].Rule != "gone" || vs[0].Import != "" {
		t.Errorf("Check(rule over no package) = %v, want one violation of rule gone", vs)
	}
}

// TestLoadFabricated: Load reads a module from disk — non-test files
// only, through module imports, skipping testdata — and a broken import
// there is a violation.
func TestLoadFabricated(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":                    "module " + mod + "\n\ngo 1.26\n",
		"vmm/vmm.go":                "package vmm\n",
		"vtty/vtty.go":              "package vtty\n\nimport _ \"" + mod + "/vmm\"\n",
		"vtty/vtty_test.go":         "package vtty\n\nimport _ \"" + mod + "/supervisor\"\n",
		"vtty/testdata/x/x.go":      "package x\n\nimport _ \"" + mod + "/vmm\"\n",
		"cluster/cluster.go":        "package cluster\n\nimport _ \"" + mod + "/internal/pure\"\n",
		"internal/pure/pure.go":     "package pure\n\nimport _ \"" + mod + "/vnet\"\n",
		"vnet/vnet.go":              "package vnet\n",
		"vblk/vblk.go":              "package vblk\n",
		"supervisor/supervisor.go":  "package supervisor\n",
		"ipi/ipi.go":                "package ipi\n",
		"ipi/msg/msg.go":            "package msg\n",
		"vmm/virtio/virtio.go":      "package virtio\n",
		"vmm/virtio/virtio_test.go": "package virtio\n\nimport _ \"" + mod + "/ipi\"\n",
	}
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, module, err := layering.ModuleRoot(filepath.Join(dir, "vtty"))
	if err != nil || root != dir || module != mod {
		t.Fatalf("ModuleRoot = %q, %q, %v; want %q, %q", root, module, err, dir, mod)
	}
	g, err := layering.Load(root, module, layering.Roots...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range layering.Check(g, layering.Rules(module)) {
		got = append(got, v.String())
	}
	want := []string{
		layering.RuleDevices + ": " + mod + "/vtty imports " + mod + "/vmm",
		layering.RuleCluster + ": " + mod + "/cluster imports " + mod + "/vnet (via " + mod + "/cluster → " + mod + "/internal/pure → " + mod + "/vnet)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Check(Load(fabricated module)) =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"a/vmm", "a/vmm", true},
		{"a/vmm", "a/vmm/kvm", false},
		{"a/vmm/...", "a/vmm", true},
		{"a/vmm/...", "a/vmm/kvm", true},
		{"a/vmm/...", "a/vmmx", false},
		{"a/vmm/...", "a/vm", false},
	} {
		if got := layering.Match(tc.pattern, tc.path); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
}
