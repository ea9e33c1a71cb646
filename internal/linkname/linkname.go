// Package linkname is the rule every Linux link name popvmm makes or looks
// up passes (Check: IFNAMSIZ and the kernel's dev_valid_name) and the name
// of each kernel's tap (Tap). It is pure, so cluster.Check can refuse a
// name without pulling in netlink, and vnet checks every name it hands the
// kernel here.
package linkname

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"

	"golang.org/x/sys/unix"
)

// Max is the longest interface name the kernel takes: IFNAMSIZ bytes less
// the NUL.
const Max = unix.IFNAMSIZ - 1

// Check reports why name cannot be the name of a link popvmm makes
// or looks up: the kernel's own rules (dev_valid_name: 1 to 15 bytes, not
// "." or "..", no '/', ':' or white space as the kernel's isspace sees it),
// plus the two ways a name turns silently into another one: a NUL byte,
// where the kernel stops reading, and '%', which it expands as a template
// ("tap%d" becomes tap0). Every name vnet hands the kernel passes here first,
// so a name is refused with its reason instead of being truncated (the TUN
// ioctl copies 15 bytes) or failing later with EINVAL, ERANGE or EBUSY.
func Check(name string) error {
	switch {
	case name == "":
		return errors.New("link name is empty")
	case len(name) > Max:
		return fmt.Errorf("link name %q is %d bytes, over the IFNAMSIZ limit of %d", name, len(name), Max)
	case name == "." || name == "..":
		return fmt.Errorf("link name %q is not a valid interface name", name)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '/' || c == ':':
			return fmt.Errorf("link name %q: %q at byte %d is not allowed in an interface name", name, c, i)
		case kernelSpace(c):
			return fmt.Errorf("link name %q: white space (byte %#02x) at byte %d is not allowed in an interface name", name, c, i)
		case c == 0:
			return fmt.Errorf("link name %q: NUL at byte %d would cut the name short", name, i)
		case c == '%':
			return fmt.Errorf("link name %q: '%%' at byte %d would make the kernel pick the name from a template", name, i)
		}
	}
	return nil
}

// kernelSpace is the Linux kernel's isspace (lib/ctype.c), which works on
// bytes and counts Latin-1's no-break space, 0xa0, as white space: so does
// dev_valid_name, which then refuses a UTF-8 name such as "à" (c3 a0).
func kernelSpace(c byte) bool {
	return c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0
}

// Tap is the tap of kernel index (its peer id) of cluster: "pvt-" plus
// the cluster name plus "-" and the index, within IFNAMSIZ; a cluster name
// too long for that is cut and followed by a hash of the whole name, so the
// taps of two clusters up at once differ. cluster.Check checks the result
// with Check.
func Tap(cluster string, index int) string {
	idx := "-" + strconv.Itoa(index)
	name := "pvt-" + cluster + idx
	if len(name) <= Max {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(cluster))
	hash := fmt.Sprintf("-%04x", h.Sum32()&0xffff)
	keep := max(Max-len("pvt-")-len(hash)-len(idx), 0)
	return "pvt-" + cluster[:min(keep, len(cluster))] + hash + idx
}
