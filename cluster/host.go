package cluster

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Host is what Check needs to know about the machine the cluster will run
// on. SysHost reads the real one; tests substitute their own.
type Host interface {
	// OnlineCPUs lists the host CPUs that are online.
	OnlineCPUs() ([]int, error)
	// MemAvailable is the kernel's estimate of memory available for new work.
	MemAvailable() (uint64, error)
	// OnlineNUMANodes lists the host's online NUMA nodes.
	OnlineNUMANodes() ([]int, error)
	// FreeHugePages is the number of free huge pages of pageSize bytes.
	FreeHugePages(pageSize uint64) (uint64, error)
}

// SysHost reads host facts from /proc and /sys below Root ("" means "/").
type SysHost struct {
	Root string
}

func (h SysHost) path(p string) string { return filepath.Join(h.Root, "/", p) }

func (h SysHost) readTrim(p string) (string, error) {
	b, err := os.ReadFile(h.path(p))
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

// OnlineCPUs implements Host.
func (h SysHost) OnlineCPUs() ([]int, error) {
	s, err := h.readTrim("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, err
	}
	return ParseCPUList(s)
}

// OnlineNUMANodes implements Host.
func (h SysHost) OnlineNUMANodes() ([]int, error) {
	s, err := h.readTrim("/sys/devices/system/node/online")
	if err != nil {
		return nil, err
	}
	return ParseCPUList(s)
}

// MemAvailable implements Host.
func (h SysHost) MemAvailable() (uint64, error) {
	f, err := os.Open(h.path("/proc/meminfo"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err == nil && kb > math.MaxUint64/1024 {
			err = strconv.ErrRange
		}
		if err != nil {
			return 0, fmt.Errorf("parse /proc/meminfo MemAvailable %q: %w", rest, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/meminfo has no MemAvailable line")
}

// FreeHugePages implements Host.
func (h SysHost) FreeHugePages(pageSize uint64) (uint64, error) {
	s, err := h.readTrim(fmt.Sprintf("/sys/kernel/mm/hugepages/hugepages-%dkB/free_hugepages", pageSize/1024))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 10, 64)
}

// openNonBlock opens a file for reading without blocking on a FIFO or a
// device that waits for a peer, so pointing a config at one fails cleanly.
func openNonBlock(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}
