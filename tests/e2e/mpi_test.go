package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/testenv"
)

// The project's MPI programs (images/mpi, make mpi) as the KVM tests and
// the window network benchmark run them: a read-only disk, serial "mpi",
// mounted at the same place on every kernel.

const (
	// mpiImage is make mpi's output.
	mpiImage = "mpi.ext4"
	// mpiBin is where the programs are in a kernel once mountMPI ran.
	mpiBin = "/mnt/mpi/bin"
	// mountMPI mounts the disk whose serial is mpi at /mnt/mpi (once).
	mountMPI = "mountpoint -q /mnt/mpi || { d=$(grep -lx mpi /sys/block/vd*/serial | cut -d/ -f4) && " +
		"mkdir -p /mnt/mpi && mount -t ext4 -o ro /dev/$d /mnt/mpi; }"
)

// requireMPIImage returns the MPI programs' disk image, skipping (or
// failing, with POPVMM_REQUIRE_IMAGES=1) when it has not been built.
func requireMPIImage(t testing.TB) string {
	t.Helper()
	img, err := filepath.Abs(filepath.Join(imagesDir, mpiImage))
	if err != nil {
		t.Fatal(err)
	}
	var problem error
	if _, err := os.Stat(img); err != nil {
		problem = fmt.Errorf("the MPI programs' image not built (make mpi): %w", err)
	}
	testenv.RequireImages(t, problem)
	return img
}

// mpiDisk is the [[kernel.disk]] table that attaches img read-only.
func mpiDisk(img string) string {
	return fmt.Sprintf("[[kernel.disk]]\npath = %q\nread_only = true\nserial = \"mpi\"\n", img)
}

// mpirun is the command that runs prog (with its arguments) as one rank on
// each of hosts (addresses on iface, the first the kernel it runs on), with
// hydra's connections and the ranks' traffic on iface: hydra takes -iface,
// MPICH's UCX (Debian's MPICH is ch4:ucx) takes UCX_NET_DEVICES, and would
// otherwise use every interface it finds.
func mpirun(iface string, hosts []string, prog string) string {
	return fmt.Sprintf("mpirun -iface %s -genv UCX_NET_DEVICES %s -hosts %s -n %d %s",
		iface, iface, strings.Join(hosts, ","), len(hosts), prog)
}

// winHosts are the two first kernels' window network addresses.
var winHosts = []string{"10.200.0.1", "10.200.0.2"}

// pingPong is what the ping-pong program measured.
type pingPong struct {
	latencyUS    float64 // 8 B, one way, median
	bandwidthMBs float64 // 1 MiB messages
}

var (
	ppLatency   = regexp.MustCompile(`pingpong: latency 8 B ([0-9.]+) us one way`)
	ppBandwidth = regexp.MustCompile(`pingpong: bandwidth 1 MiB ([0-9.]+) MB/s \(\d+ round trips, 0 bad messages\)`)
)

// parsePingPong reads the ping-pong program's report.
func parsePingPong(out string) (pingPong, error) {
	l, b := ppLatency.FindStringSubmatch(out), ppBandwidth.FindStringSubmatch(out)
	if l == nil || b == nil {
		return pingPong{}, fmt.Errorf("the ping-pong printed no latency or no good bandwidth line:\n%s", out)
	}
	var p pingPong
	p.latencyUS, _ = strconv.ParseFloat(l[1], 64)
	p.bandwidthMBs, _ = strconv.ParseFloat(b[1], 64)
	return p, nil
}

// allreduceUS reads the allreduce program's time per call, in µs; it fails
// unless the program said its sums were right.
func allreduceUS(out string) (float64, error) {
	m := regexp.MustCompile(`allreduce: .* ([0-9.]+) us per call .*, sums right`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("allreduce printed no right sums:\n%s", strings.TrimSpace(out))
	}
	return strconv.ParseFloat(m[1], 64)
}
