package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/popvmm/popvmm/cluster"
)

// The registry of a run root names every cluster that is up under it,
// wherever its run directory is (cluster.run_dir may put it anywhere): one
// symbolic link per cluster in RUNROOT/.clusters, named as the cluster,
// pointing at its run directory. A supervisor writes its link (atomically:
// a new link renamed over the old) once it holds its run directory's lock,
// and removes it when it lets the lock go. A link whose run directory no
// supervisor holds (one killed before it could remove it) is stale and
// ignored; the next supervisor of that name replaces it.
const registryName = ".clusters"

// ErrNameTaken is returned by Register when another cluster of the same
// name is up under the run root, in another run directory.
var ErrNameTaken = errors.New("another cluster of this name is up")

// registry is runRoot's registry directory.
func registry(runRoot string) string { return filepath.Join(runRoot, registryName) }

// Register records under runRoot that cluster name is up in run directory
// dir, which the caller holds (Lock). The returned func removes the record
// if it is still dir's. A cluster of the same name up in another run
// directory is ErrNameTaken (-c NAME could not tell them apart).
func Register(runRoot, name, dir string) (unregister func(), err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("register cluster %s: %w", name, err)
	}
	for _, other := range []string{entryTarget(runRoot, name), filepath.Join(runRoot, name)} {
		if other == "" || other == dir {
			continue
		}
		if pid, held := Held(other); held {
			return nil, fmt.Errorf("register cluster %s: %w: supervisor pid %d holds %s", name, ErrNameTaken, pid, other)
		}
	}
	reg := registry(runRoot)
	if err := os.MkdirAll(reg, 0o700); err != nil {
		return nil, fmt.Errorf("register cluster %s: %w", name, err)
	}
	link := filepath.Join(reg, name)
	tmp := filepath.Join(reg, "."+name+".new."+strconv.Itoa(os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(dir, tmp); err != nil {
		return nil, fmt.Errorf("register cluster %s: %w", name, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("register cluster %s: %w", name, err)
	}
	return func() {
		if t, err := os.Readlink(link); err == nil && t == dir {
			os.Remove(link)
		}
	}, nil
}

// entryTarget is the run directory runRoot's registry names for cluster
// name, or "".
func entryTarget(runRoot, name string) string {
	if name == "" || strings.HasPrefix(name, ".") || strings.ContainsRune(name, '/') {
		return "" // not a cluster name (cluster.name is checked)
	}
	t, err := os.Readlink(filepath.Join(registry(runRoot), name))
	if err != nil || !filepath.IsAbs(t) {
		return ""
	}
	return t
}

// ClusterDir is the run directory of cluster name under runRoot: the one
// its registry entry names while a supervisor holds it, else RUNROOT/NAME
// (where a cluster without a run_dir of its own lives).
func ClusterDir(runRoot, name string) string {
	if t := entryTarget(runRoot, name); t != "" {
		if _, held := Held(t); held {
			return t
		}
	}
	return filepath.Join(runRoot, name)
}

// registered lists the names in runRoot's registry whose run directory a
// supervisor holds.
func registered(runRoot string) []string {
	ents, _ := os.ReadDir(registry(runRoot))
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") {
			continue
		}
		if t := entryTarget(runRoot, n); t != "" {
			if _, held := Held(t); held {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// Command is a popvmm command line as popvmm suggests it to a person, with
// --run-root when runRoot is not the default one, so that it works as
// printed.
func Command(runRoot string, args ...string) string {
	words := []string{"popvmm"}
	if runRoot != "" && filepath.Clean(runRoot) != filepath.Clean(cluster.DefaultRunRoot()) {
		words = append(words, "--run-root", runRoot)
	}
	words = append(words, args...)
	for i, w := range words {
		if w == "" || strings.ContainsAny(w, " \t\n'\"\\$`;&|<>()*?[]#~!{}") {
			words[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
	}
	return strings.Join(words, " ")
}
