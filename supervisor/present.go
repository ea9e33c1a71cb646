package supervisor

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/memmap"
)

// WriteStatus prints st as the table `popvmm status` shows.
func WriteStatus(w io.Writer, st *Status, now time.Time) error {
	fmt.Fprintf(w, "cluster %s  supervisor pid %d  up %s  config %s\n",
		st.Cluster, st.PID, now.Sub(st.Started).Round(time.Second), st.ConfigPath)
	// What exists is printed plainly; what the config plans but the host
	// does not have (yet) says so.
	bridge, host := st.Bridge, st.HostIP
	if !st.BridgeExists {
		bridge += " (planned, not created)"
		host += " (planned)"
	}
	window := memmap.FormatSize(st.WindowSize)
	if !st.WindowExists {
		window += " (planned, not up)"
	}
	fmt.Fprintf(w, "network bridge %s  subnet %s  host %s   window %s\n", bridge, st.Subnet, host, window)
	fmt.Fprintf(w, "vmm     %s\n\n", st.VMM)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPEER\tSTATE\tBOOT\tFLAVOUR\tCORES\tMEMORY\tBACKING\tIP\tMAC\tTAP")
	for _, k := range st.Kernels {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, k.PeerID, k.State, k.Boot, k.Flavour,
			cluster.FormatCPUList(k.CPUs), memmap.FormatSize(k.Memory), k.Backing, k.IP, k.MAC, tapText(k))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := writeWinnet(w, st.Winnet); err != nil {
		return err
	}
	writeMigrations(w, st, now)
	return writeDevices(w, st)
}

// writeWinnet lists the window network: every kernel's address and
// state, then one line per kernel and peer with traffic: frames, bytes
// and drops each way, as the kernel counted them.
func writeWinnet(w io.Writer, wn *WinnetStatus) error {
	if wn == nil {
		return nil
	}
	fmt.Fprintf(w, "\nwindow network  subnet %s  window %s  mtu %d  ring %s\n", wn.Subnet, memmap.FormatSize(wn.Size), wn.MTU, memmap.FormatSize(wn.Ring))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tWIN0\tSTATE\tPEER\tRX PACKETS\tRX BYTES\tRX DROPS\tTX PACKETS\tTX BYTES\tTX DROPS")
	for _, k := range wn.Kernels {
		state := "down"
		if k.Up {
			state = "up"
		}
		if len(k.Peers) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t\t\t\t\t\t\n", k.Name, k.Address, state)
		}
		for i, c := range k.Peers {
			name, addr, st := k.Name, k.Address, state
			if i > 0 {
				name, addr, st = "", "", ""
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", name, addr, st, c.Peer,
				c.RxPackets, c.RxBytes, c.RxDrops, c.TxPackets, c.TxBytes, c.TxDrops)
		}
	}
	return tw.Flush()
}

// writeDevices lists the running kernels' devices with their counters,
// one line each, by kernel and device name.
func writeDevices(w io.Writer, st *Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := false
	for _, k := range st.Kernels {
		if k.Machine == nil {
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(k.Machine.Devs)) {
			if !header {
				fmt.Fprintln(tw, "\nKERNEL\tDEVICE\tDETAIL")
				header = true
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, name, strings.Join(k.Machine.Devs[name], ", "))
		}
	}
	return tw.Flush()
}

// WriteWindowStat prints the window's peer table and popvmm's counters.
func WriteWindowStat(w io.Writer, st *WindowStat) error {
	fmt.Fprintf(w, "window %s\n", st.Socket)
	n := st.Node
	fmt.Fprintf(w, "popvmm node: sent %d, received %d, doorbells rung %d, saved %d, failed %d, wake-ups %d, ring full %d, protocol errors %d\n\n",
		n.Sent, n.Received, n.DoorbellsRung, n.DoorbellsSaved, n.DoorbellErrors, n.Wakeups, n.RingFull, n.ProtocolErrors)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tNAME\tSTATE\tGENERATION\tHEARTBEAT\tSENT\tRECEIVED")
	for _, p := range st.Peers {
		name := p.Name
		if p.Impostor {
			name += " (refused: not kernel " + p.Name + "'s peer)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\n", p.ID, name, p.State, p.Generation, p.Heartbeat, p.Sent, p.Received)
	}
	return tw.Flush()
}

// tapText is the kernel's tap if it exists, else "-".
func tapText(k KernelStatus) string {
	if !k.TapExists || k.Tap == "" {
		return "-"
	}
	return k.Tap
}
