package supervisor

import (
	"io/fs"
	"net"
	"os"
)

// readHost fills in which of the resources st names exist on the host right
// now, read from the host (links, sockets), never from what the config or
// the supervisor intends: status shows what is, and marks the rest as only
// planned.
func (st *Status) readHost() {
	st.BridgeExists = linkExists(st.Bridge)
	st.WindowExists = isSocket(st.Window)
	for i := range st.Kernels {
		k := &st.Kernels[i]
		k.TapExists = linkExists(k.Tap)
	}
}

func linkExists(name string) bool {
	if name == "" {
		return false
	}
	_, err := net.InterfaceByName(name)
	return err == nil
}

func isSocket(path string) bool {
	if path == "" {
		return false
	}
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().Type() == fs.ModeSocket
}
