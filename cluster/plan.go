package cluster

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/popvmm/popvmm/memmap"
)

// WritePlan prints the resolved plan for people: the cluster, then per
// kernel its cores, memory, files, command line (from cmdline, which
// composes it), addresses, guest-physical layout and e820.
func (c *Cluster) WritePlan(w io.Writer, cmdline func(*Kernel) string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	protect := "unprotected"
	if c.Window.Protect {
		protect = "protected (per-peer output sections)"
	}
	p("cluster %s (%s)\n", c.Name, c.ConfigPath)
	p("  run dir\t%s\n", c.RunDir)
	p("  window\t%s, %s\n", memmap.FormatSize(c.Window.Size), protect)
	p("  network\tbridge %s, subnet %s, host %s\n", c.Network.Bridge, c.Network.Subnet, c.Network.Host)
	p("  window network\t%s\n", c.winnetPlanLine())
	for _, k := range c.Kernels {
		p("\nkernel %s (peer %d, boot %s, flavour %s)\n", k.Name, k.Index, k.Boot, k.Flavour)
		p("  cores\t%s (%d vCPU%s, one per core, pinned)\n", FormatCPUList(k.CPUs), len(k.CPUs), plural(len(k.CPUs)))
		numa := "any node"
		if k.NUMANode >= 0 {
			numa = fmt.Sprintf("node %d", k.NUMANode)
		}
		mlock := ""
		if k.Mlock {
			mlock = ", mlocked"
		}
		p("  memory\t%s %s, %s%s\n", memmap.FormatSize(k.Memory), k.Backing, numa, mlock)
		img := "not built yet"
		if k.KernelInfo.Format != "" {
			img = k.KernelInfo.String()
		}
		p("  kernel\t%s (%s)\n", k.KernelPath, img)
		p("  initrd\t%s\n", k.InitrdPath)
		p("  cmdline\t%s\n", cmdline(k))
		p("  network\t%s  %s\n", k.IP, k.MAC)
		if k.WinnetIP.IsValid() {
			p("  window network\twin0 %s/%d\n", k.WinnetIP, c.Winnet.Subnet.Bits())
		}
		p("  console\t%s\n", k.ConsoleLog)
		for j, pt := range k.Passthrough {
			ro := "read-write"
			if pt.ReadOnly {
				ro = "read-only"
			}
			p("  passthrough[%d]\t%s +%#x, %s at %#x, %s\n", j, pt.Path, pt.Offset, memmap.FormatSize(pt.Size), pt.GuestAddress, ro)
		}
		for j, d := range k.Disks {
			ro := "read-write"
			if d.ReadOnly {
				ro = "read-only"
			}
			serial := ""
			if d.Serial != "" {
				serial = ", serial " + d.Serial
			}
			p("  disk /dev/%s\t%s, %s %s, %s%s\n", DeviceName(j), d.Path, d.Role, memmap.FormatSize(d.Size), ro, serial)
		}
		if k.Layout == nil {
			continue
		}
		p("  layout\n")
		for _, r := range k.Layout.Regions() {
			p("    %v\t%s\t%s\n", r.Range, r.Name, memmap.FormatSize(r.Size))
		}
		p("  e820\n")
		for _, e := range k.Layout.E820 {
			p("    %v\t%s\t%s\n", e.Range(), e.Type, memmap.FormatSize(e.Size))
		}
	}
	p("\nboot structures (the same in every kernel, in low RAM)\n")
	for _, r := range memmap.BootRegions() {
		if r.Size > 0 {
			p("  %v\t%s\n", r.Range, r.Name)
		} else {
			p("  %#012x\t%s\n", r.Start, r.Name)
		}
	}
	return tw.Flush()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
