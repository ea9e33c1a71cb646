package lab

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Modules the lab host loads, by module name; their dependencies are added
// and everything is loaded in dependency order. kvm_amd: KVM on the emulated
// SVM CPU; 9p: the shares; bridge, tun, veth, virtio_net, vhost_net: the
// network tests; virtio_mmio: the 9p transport on QEMU's microvm machine.
var Modules = []string{"virtio_mmio", "9pnet_virtio", "9p", "kvm_amd", "bridge", "tun", "veth", "vhost_net"}

// moduleIndex maps a module name (dashes as underscores) to its .ko path
// below the unpacked linux-image package's lib/modules/VERSION/kernel.
func moduleIndex(kernelDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(kernelDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", kernelDir, err)
	}
	return idx, nil
}

func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDepends reads the "depends=" entry of a module's .modinfo section
// (the key/value strings modpost writes; include/linux/module.h MODULE_INFO).
func moduleDepends(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", ko)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: .modinfo: %w", ko, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// LoadOrder resolves want and their dependencies through idx into the order
// insmod must load them: every module after all of its dependencies.
func LoadOrder(idx map[string]string, want []string, depends func(ko string) ([]string, error)) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		ko, ok := idx[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) is not in the lab kernel's package", name, strings.Join(chain, " -> "))
		}
		state[name] = 1
		deps, err := depends(ko)
		if err != nil {
			return err
		}
		slices.Sort(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, w := range want {
		if err := visit(modName(w), []string{"lab"}); err != nil {
			return nil, err
		}
	}
	return order, nil
}
