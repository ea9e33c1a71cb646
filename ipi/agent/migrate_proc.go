package agent

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What the source agent reads from /proc before it freezes anything: the
// tree rooted at a PID, the resources that cannot migrate (named), and the
// private files that go with it (docs/migration.md, "What migrates").

// errNoProcess is a PID that is not there.
var errNoProcess = errors.New("no such process")

// procTree is a process tree as /proc shows it.
type procTree struct {
	PIDs     []int    // the root first, then its descendants
	Carried  []string // private files the tree has open or mapped
	Dirs     []string // the tasks' working directories
	Bytes    int64    // resident memory: about the checkpoint's size
	Problems []string // what cannot migrate, each naming the resource
}

// inspector reads a kernel's /proc.
type inspector struct {
	proc    string // "/proc"
	upper   string // the private overlay layer ("/run/popvmm/rw/upper"); "" if none
	self    int    // the agent's PID: neither it nor an ancestor may be in the tree
	dropTCP bool
	// private says whether a file is this kernel's own (carried with the
	// tree) rather than one every kernel shares.
	private func(path string) bool

	problems []string // what tree finds; tree resets it
}

// procStat is what a task's stat line says.
type procStat struct {
	comm                     string
	ppid, pgrp, session      int
	flags                    uint64
	kernelThread, zombieOnly bool
}

const pfKthread = 0x00200000

// readStat parses PROC/PID/stat.
func (in *inspector) readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(in.proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return procStat{}, fmt.Errorf("pid %d: %w", pid, errNoProcess)
		}
		return procStat{}, err
	}
	return parseStat(string(b))
}

func parseStat(s string) (procStat, error) {
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("malformed stat line %q", s)
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 7 {
		return procStat{}, fmt.Errorf("malformed stat line %q", s)
	}
	st := procStat{comm: s[open+1 : end]}
	var errs [4]error
	st.ppid, errs[0] = strconv.Atoi(f[1])
	st.pgrp, errs[1] = strconv.Atoi(f[2])
	st.session, errs[2] = strconv.Atoi(f[3])
	st.flags, errs[3] = strconv.ParseUint(f[6], 10, 64)
	if err := errors.Join(errs[:]...); err != nil {
		return procStat{}, fmt.Errorf("malformed stat line %q: %w", s, err)
	}
	st.kernelThread = st.flags&pfKthread != 0
	st.zombieOnly = f[0] == "Z"
	return st, nil
}

// tree finds root's tree and checks it.
func (in *inspector) tree(root int) (*procTree, error) {
	rst, err := in.readStat(root)
	if err != nil {
		return nil, err
	}
	stats := map[int]procStat{root: rst}
	children := map[int][]int{}
	ents, err := os.ReadDir(in.proc)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		st, err := in.readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		stats[pid] = st
		children[st.ppid] = append(children[st.ppid], pid)
	}
	t := &procTree{}
	in.problems = nil
	for queue := []int{root}; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		t.PIDs = append(t.PIDs, p)
		kids := children[p]
		slices.Sort(kids)
		queue = append(queue, kids...)
	}
	if len(t.PIDs) > maxMigPIDs {
		return nil, fmt.Errorf("the tree of pid %d has %d tasks (at most %d migrate)", root, len(t.PIDs), maxMigPIDs)
	}
	inTree := map[int]bool{}
	for _, p := range t.PIDs {
		inTree[p] = true
	}
	if root == 1 {
		in.problem("pid 1 is the kernel's init")
	}
	for a := in.self; a > 0; {
		if inTree[a] {
			in.problem(fmt.Sprintf("the tree holds the agent (pid %d) or its parent (pid %d)", in.self, a))
			break
		}
		st, ok := stats[a]
		if !ok || st.ppid == a {
			break
		}
		a = st.ppid
	}
	socks := in.sockets(root)
	carried := map[string]bool{}
	dirs := map[string]bool{}
	for _, p := range t.PIDs {
		st := stats[p]
		who := fmt.Sprintf("pid %d (%s)", p, st.comm)
		if st.kernelThread {
			in.problem(who + " is a kernel thread")
			continue
		}
		if !inTree[st.session] {
			in.problem(fmt.Sprintf("%s is in session %d, led from outside the tree: start the program with setsid", who, st.session))
		} else if !inTree[st.pgrp] {
			in.problem(fmt.Sprintf("%s is in process group %d, led from outside the tree", who, st.pgrp))
		}
		in.fds(p, who, socks, carried)
		in.maps(p, who, carried)
		if cwd, err := os.Readlink(filepath.Join(in.proc, strconv.Itoa(p), "cwd")); err == nil && filepath.IsAbs(cwd) {
			dirs[cwd] = true
		}
		t.Bytes += in.rss(p)
	}
	for f := range carried {
		t.Carried = append(t.Carried, f)
	}
	slices.Sort(t.Carried)
	for d := range dirs {
		t.Dirs = append(t.Dirs, d)
	}
	slices.Sort(t.Dirs)
	t.Problems = in.problems
	return t, nil
}

// problem notes what cannot migrate.
func (in *inspector) problem(s string) { in.problems = append(in.problems, s) }

// harmlessDevices migrate: every kernel has them, and they hold no state.
var harmlessDevices = map[string]bool{"/dev/null": true, "/dev/zero": true, "/dev/full": true, "/dev/random": true, "/dev/urandom": true}

// fds checks a task's open files.
func (in *inspector) fds(pid int, who string, socks map[uint64]sockInfo, carried map[string]bool) {
	dir := filepath.Join(in.proc, strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		in.problem(fmt.Sprintf("%s: cannot list its files: %v", who, err))
		return
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		where := fmt.Sprintf("fd %s of %s", e.Name(), who)
		switch {
		case strings.HasPrefix(link, "socket:["):
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]"), 10, 64)
			if err != nil {
				in.problem(fmt.Sprintf("%s: unrecognised socket %s", where, link))
				continue
			}
			in.socket(socks[ino], link, where)
		case strings.HasPrefix(link, "/dev/"):
			in.device(link, where)
		case strings.HasPrefix(link, "/"):
			in.file(link, carried)
		}
		// pipe:[...], anon_inode:[...]: CRIU's.
	}
}

// device refuses an open device other than the harmless ones.
func (in *inspector) device(path, where string) {
	path = strings.TrimSuffix(path, " (deleted)")
	switch {
	case harmlessDevices[path]:
	case strings.HasPrefix(path, "/dev/shm/"):
	case strings.HasPrefix(path, "/dev/pts/") || strings.HasPrefix(path, "/dev/tty") || path == "/dev/console" || path == "/dev/ptmx":
		in.problem(fmt.Sprintf("%s is the terminal %s: redirect the program's input and output (setsid CMD </dev/null >LOG 2>&1)", where, path))
	default:
		in.problem(fmt.Sprintf("%s is the device %s", where, path))
	}
}

// file notes a private regular file to carry.
func (in *inspector) file(path string, carried map[string]bool) {
	if strings.HasSuffix(path, " (deleted)") {
		return // CRIU keeps a deleted file's contents in the checkpoint
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	if in.private(path) {
		carried[path] = true
	}
}

// maps checks a task's mappings: devices are refused, private files carried.
func (in *inspector) maps(pid int, who string, carried map[string]bool) {
	f, err := os.Open(filepath.Join(in.proc, strconv.Itoa(pid), "maps"))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		fl := strings.SplitN(sc.Text(), " ", 6)
		if len(fl) < 6 {
			continue
		}
		path := strings.TrimSpace(fl[5])
		switch {
		case path == "/dev/zero (deleted)": // shared anonymous memory
		case strings.HasPrefix(path, "/dev/"):
			in.device(path, fmt.Sprintf("a mapping of %s", who))
		case strings.HasPrefix(path, "/"):
			in.file(path, carried)
		}
	}
}

// rss is a task's resident memory in bytes (0 if unknown).
func (in *inspector) rss(pid int) int64 {
	b, err := os.ReadFile(filepath.Join(in.proc, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// sockInfo is one socket from /proc/net.
type sockInfo struct {
	kind          string // "tcp", "udp", "unix"; "" when not found there
	local, remote netip.AddrPort
	state         uint8
}

const (
	tcpEstablished = 0x01
	tcpClose       = 0x07
	tcpListen      = 0x0A
)

// sockets reads the socket tables of pid's network namespace.
func (in *inspector) sockets(pid int) map[uint64]sockInfo {
	m := map[uint64]sockInfo{}
	net := filepath.Join(in.proc, strconv.Itoa(pid), "net")
	for _, t := range []struct{ file, kind string }{{"tcp", "tcp"}, {"tcp6", "tcp"}, {"udp", "udp"}, {"udp6", "udp"}} {
		b, err := os.ReadFile(filepath.Join(net, t.file))
		if err != nil {
			continue
		}
		for ino, s := range parseInetTable(string(b)) {
			s.kind = t.kind
			m[ino] = s
		}
	}
	if b, err := os.ReadFile(filepath.Join(net, "unix")); err == nil {
		for l := range strings.Lines(string(b)) {
			f := strings.Fields(l)
			if len(f) >= 7 {
				if ino, err := strconv.ParseUint(f[6], 10, 64); err == nil {
					m[ino] = sockInfo{kind: "unix"}
				}
			}
		}
	}
	return m
}

// parseInetTable parses /proc/net/{tcp,tcp6,udp,udp6} into sockets by
// inode; lines it cannot read are skipped.
func parseInetTable(s string) map[uint64]sockInfo {
	m := map[uint64]sockInfo{}
	for l := range strings.Lines(s) {
		f := strings.Fields(l)
		if len(f) < 10 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		local, err1 := parseHexAddr(f[1])
		remote, err2 := parseHexAddr(f[2])
		st, err3 := strconv.ParseUint(f[3], 16, 8)
		ino, err4 := strconv.ParseUint(f[9], 10, 64)
		if errors.Join(err1, err2, err3, err4) != nil {
			continue
		}
		m[ino] = sockInfo{local: local, remote: remote, state: uint8(st)}
	}
	return m
}

// parseHexAddr decodes the kernel's "0100007F:1F90" (IPv4) or 32-hex-digit
// IPv6 address and port: each 32-bit word in the host's (little-endian)
// order.
func parseHexAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(a) != 8 && len(a) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// socket refuses a socket that cannot migrate.
func (in *inspector) socket(s sockInfo, link, where string) {
	bound := func() bool {
		a := s.local.Addr()
		return a.IsValid() && !a.IsUnspecified() && !a.IsLoopback()
	}
	switch s.kind {
	case "unix":
	case "tcp":
		switch {
		case s.state == tcpListen:
			if bound() {
				in.problem(fmt.Sprintf("%s is a TCP listener bound to %s, an address of this kernel only", where, s.local))
			}
		case s.state == tcpClose:
		default:
			if !in.dropTCP {
				in.problem(fmt.Sprintf("%s is the TCP connection %s → %s (--drop-tcp closes it on the target)", where, s.local, s.remote))
			}
		}
	case "udp":
		if bound() {
			in.problem(fmt.Sprintf("%s is a UDP socket bound to %s, an address of this kernel only", where, s.local))
		}
	default:
		in.problem(fmt.Sprintf("%s is a netlink, packet or raw socket (%s)", where, link))
	}
}

// privateFile is the agent's rule: a file in this kernel's overlay layer,
// or on a tmpfs, is its own.
func privateFile(upper string) func(string) bool {
	return func(path string) bool {
		if upper != "" {
			if _, err := os.Lstat(filepath.Join(upper, path)); err == nil {
				return true
			}
		}
		var fs unix.Statfs_t
		return unix.Statfs(path, &fs) == nil && fs.Type == unix.TMPFS_MAGIC
	}
}
