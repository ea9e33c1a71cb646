package cluster

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// ParseSize reads a byte count: a plain integer ("4096", "0x1000") or a
// number with a binary unit suffix K, M, G or T, optionally followed by "iB"
// or "B" ("512M", "2G", "64KiB"). Units are powers of 1024.
func ParseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	shift := 0
	if !strings.HasPrefix(t, "0X") { // hex has no unit: its B is a digit
		if u, ok := strings.CutSuffix(t, "IB"); ok {
			t = u
		} else {
			t = strings.TrimSuffix(t, "B")
		}
		t = strings.TrimSpace(t)
		if t != "" {
			if i := strings.IndexByte("KMGT", t[len(t)-1]); i >= 0 {
				shift = 10 * (i + 1)
				t = strings.TrimSpace(t[:len(t)-1])
			}
		}
	}
	n, err := strconv.ParseUint(strings.ToLower(t), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (want e.g. 512M, 2G, 4096)", s)
	}
	if hi, _ := bits.Mul64(n, 1<<shift); hi != 0 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}

// scalarSize interprets a Scalar as a size ("512M" or an integer).
func scalarSize(v Scalar) (uint64, error) {
	return scalarUint(v, ParseSize, `a size such as "512M"`)
}

// scalarAddr interprets a Scalar as an address or offset: an integer, or a
// string in any base Go accepts ("0x100000000", "4294967296").
func scalarAddr(v Scalar) (uint64, error) {
	return scalarUint(v, parseAddr, `an address such as "0x100000000"`)
}

func parseAddr(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not an address (want e.g. \"0x100000000\")", s)
	}
	return n, nil
}

// scalarUint reads a non-negative TOML integer as is, or a string through
// parse; want names the expected form in errors.
func scalarUint(v Scalar, parse func(string) (uint64, error), want string) (uint64, error) {
	switch x := v.raw.(type) {
	case int64:
		if x < 0 {
			return 0, fmt.Errorf("%d is negative", x)
		}
		return uint64(x), nil
	case string:
		return parse(x)
	case nil:
		return 0, errors.New("not set")
	}
	return 0, fmt.Errorf("want %s or an integer, not a TOML %s", want, tomlTypeName(v.raw))
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case bool:
		return "boolean"
	case float64:
		return "float"
	case []any, []map[string]any:
		return "array"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// maxCPU bounds CPU numbers in a list; Linux's NR_CPUS is at most 8192.
const maxCPU = 8191

// ParseCPUList reads a CPU list in the kernel's format ("0-3,6", "2"), the
// format of /sys/devices/system/cpu/online. The result is sorted; a CPU
// listed twice is an error.
func ParseCPUList(s string) ([]int, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return nil, errors.New("empty CPU list")
	}
	var cpus []int
	seen := map[int]bool{}
	for part := range strings.SplitSeq(t, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := parseCPU(lo)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		b := a
		if isRange {
			if b, err = parseCPU(hi); err != nil {
				return nil, fmt.Errorf("%q: %w", part, err)
			}
			if b < a {
				return nil, fmt.Errorf("%q: range runs backwards", part)
			}
		}
		for c := a; c <= b; c++ {
			if seen[c] {
				return nil, fmt.Errorf("core %d listed twice", c)
			}
			seen[c] = true
			cpus = append(cpus, c)
		}
	}
	slices.Sort(cpus)
	return cpus, nil
}

func parseCPU(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a CPU number", s)
	}
	if n > maxCPU {
		return 0, fmt.Errorf("CPU %d is beyond %d", n, maxCPU)
	}
	return int(n), nil
}

// FormatCPUList prints sorted CPUs in the kernel's list format ("0-3,6").
func FormatCPUList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", cpus[i], cpus[j])
		} else {
			fmt.Fprintf(&b, "%d", cpus[i])
		}
		i = j + 1
	}
	return b.String()
}
