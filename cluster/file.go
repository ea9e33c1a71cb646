// Package cluster reads a cluster.toml, checks it against itself and the
// host, and resolves it into a typed plan: every kernel's host cores, memory,
// addresses, boot files and guest-physical layout (from package memmap).
//
// Reading happens in two steps. Parse decodes the TOML into File, which
// mirrors the file's text with as little interpretation as possible; Check
// turns a File into a Cluster, reporting every problem it finds at once, each
// naming the field path at fault (kernel[1].cpus, cluster.window.size).
// docs/cluster-config.md documents every field.
package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// File mirrors cluster.toml as written. Sizes, offsets and addresses are
// Scalars so that both 536870912 and "512M" are accepted; Check interprets them.
type File struct {
	Cluster ClusterSection  `toml:"cluster"`
	Kernels []KernelSection `toml:"kernel"`

	// Path is the file the config was read from; relative paths inside it
	// are resolved against its directory.
	Path string `toml:"-"`
	// RunRoot holds the default run directory (RunRoot/name) when the
	// config names none; empty means DefaultRunRoot().
	RunRoot string `toml:"-"`
}

// ClusterSection is the [cluster] table.
type ClusterSection struct {
	Name    string         `toml:"name"`
	RunDir  string         `toml:"run_dir"`
	Images  string         `toml:"images"`
	Window  WindowSection  `toml:"window"`
	Network NetworkSection `toml:"network"`
	Winnet  WinnetSection  `toml:"winnet"`
}

// WindowSection is [cluster.window], the shared inter-kernel window.
type WindowSection struct {
	Size    Scalar `toml:"size"`
	Protect bool   `toml:"protect"`
}

// WinnetSection is [cluster.winnet], the window network: a network
// interface in every kernel over a second shared window (docs/winnet.md).
type WinnetSection struct {
	Enabled bool   `toml:"enabled"`
	Size    Scalar `toml:"size"`
	Subnet  string `toml:"subnet"`
}

// NetworkSection is [cluster.network].
type NetworkSection struct {
	Bridge      string `toml:"bridge"`
	Subnet      string `toml:"subnet"`
	HostAddress string `toml:"host_address"`
}

// KernelSection is one [[kernel]] table.
type KernelSection struct {
	Name        string               `toml:"name"`
	Flavour     string               `toml:"flavour"`
	CPUs        string               `toml:"cpus"`
	Memory      Scalar               `toml:"memory"`
	Backing     string               `toml:"backing"`
	NUMANode    *int                 `toml:"numa_node"`
	Mlock       bool                 `toml:"mlock"`
	Kernel      string               `toml:"kernel"`
	Initrd      string               `toml:"initrd"`
	Cmdline     string               `toml:"cmdline"`
	Boot        string               `toml:"boot"`
	Restart     string               `toml:"restart"`
	IP          string               `toml:"ip"`
	MAC         string               `toml:"mac"`
	ConsoleLog  string               `toml:"console_log"`
	Passthrough []PassthroughSection `toml:"passthrough"`
	// Root is an ext4 image the kernel boots into (read-only, shared by
	// any number of kernels; the initramfs lays a private overlay on it),
	// RootUpper an optional writable disk for that overlay's upper layer
	// (default: RAM), Disks the kernel's other virtio-blk disks.
	Root      string        `toml:"root"`
	RootUpper string        `toml:"root_upper"`
	Disks     []DiskSection `toml:"disk"`

	// ConsoleLogMax caps the console log (rotated at the cap).
	ConsoleLogMax Scalar `toml:"console_log_max"`
}

// PassthroughSection is one [[kernel.passthrough]] table.
type PassthroughSection struct {
	Path         string `toml:"path"`
	Offset       Scalar `toml:"offset"`
	Size         Scalar `toml:"size"`
	GuestAddress Scalar `toml:"guest_address"`
	ReadOnly     bool   `toml:"read_only"`
}

// Scalar holds a TOML integer or string as written, for fields that accept
// both ("512M" or 536870912).
type Scalar struct {
	raw any
}

// UnmarshalTOML implements toml.Unmarshaler.
func (s *Scalar) UnmarshalTOML(v any) error {
	s.raw = v
	return nil
}

// IsSet reports whether the field appeared in the file.
func (s Scalar) IsSet() bool { return s.raw != nil }

// ScalarOf makes a Scalar, for building a File in code.
func ScalarOf(v any) Scalar { return Scalar{raw: v} }

// RunDir is the cluster's run directory: run_dir resolved against the
// config's directory, or RunRoot/name. Clients use it to find a
// running cluster from its config without checking the whole file.
func (f *File) RunDir() string {
	switch {
	case f.Cluster.RunDir == "" && f.RunRoot != "":
		return filepath.Join(f.RunRoot, f.Cluster.Name)
	case f.Cluster.RunDir == "":
		return filepath.Join(DefaultRunRoot(), f.Cluster.Name)
	case filepath.IsAbs(f.Cluster.RunDir) || f.Path == "":
		return filepath.Clean(f.Cluster.RunDir)
	}
	return filepath.Join(filepath.Dir(f.Path), f.Cluster.RunDir)
}

// ErrParse marks an error in the TOML text itself (syntax, types, unknown keys).
var ErrParse = errors.New("parse error")

// maxFileSize bounds what Load reads: a cluster config is a few KiB.
const maxFileSize = 1 << 20

// Load reads and parses the cluster config at path.
func Load(path string) (*File, error) {
	f, err := openNonBlock(path)
	if err != nil {
		return nil, fmt.Errorf("read cluster config: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxFileSize+1)); err != nil {
		return nil, fmt.Errorf("read cluster config %s: %w", path, err)
	}
	if buf.Len() > maxFileSize {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes; is this a cluster config?", path, ErrParse, maxFileSize)
	}
	file, err := Parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", path, err)
	}
	file.Path = abs
	return file, nil
}

// Parse decodes TOML text. A key that is not exactly one of the schema's
// (wherever it appears, in whatever case) is an error naming its line and
// the closest known key, so that a typo never silently drops a setting and
// a key spelled twice in different case never wins at random.
func Parse(data []byte) (*File, error) {
	var f File
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: line %d: %s", ErrParse, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%w: %s", ErrParse, strings.TrimPrefix(err.Error(), "toml: "))
	}
	if errs := unknownKeyErrors(data, unknownKeys(md.Keys())); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &f, nil
}

// editDistance is the Levenshtein distance between two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
