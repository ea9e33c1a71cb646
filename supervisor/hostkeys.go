package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/popvmm/popvmm/guest"
)

// prepareHostKeys makes sure every kernel has its SSH host key (kept in
// RUNDIR/ssh from one `up` to the next) and writes RUNDIR/known_hosts with
// each kernel's address and key, which `popvmm ssh` checks against
// (StrictHostKeyChecking=yes). It returns the keys by kernel name, for the
// overlays.
func (s *Supervisor) prepareHostKeys(runDir string) (map[string]*guest.HostKey, error) {
	dir := filepath.Join(runDir, "ssh")
	keys := map[string]*guest.HostKey{}
	var lines []string
	for _, k := range s.cl.Kernels {
		hk, err := guest.EnsureHostKey(dir, k.Name)
		if err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Name, err)
		}
		keys[k.Name] = hk
		lines = append(lines, hk.KnownHostsLine(k.IP))
	}
	p := filepath.Join(runDir, guest.KnownHostsName)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	return keys, nil
}

// SSHArgs is the ssh command line (without the program) that reaches
// kernel k of the cluster st describes: the cluster's key only, root at the
// kernel's address, its host key checked against RUNDIR/known_hosts and
// nothing else (no prompt to trust a new key, no other known_hosts file),
// then the remote command, if any.
func SSHArgs(st *Status, k *KernelStatus, command []string) []string {
	args := []string{
		"-i", filepath.Join(st.RunDir, "ssh", guest.PrivateKeyName),
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "PasswordAuthentication=no",
		"-o", "KbdInteractiveAuthentication=no",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + filepath.Join(st.RunDir, guest.KnownHostsName),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "HostKeyAlgorithms=ssh-ed25519",
		"-o", "CheckHostIP=no",
		"-o", "LogLevel=ERROR",
		"root@" + k.IP,
	}
	if len(command) > 0 {
		args = append(append(args, "--"), command...)
	}
	return args
}
