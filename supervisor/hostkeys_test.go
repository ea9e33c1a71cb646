package supervisor_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/supervisor"
)

func TestSSHArgs(t *testing.T) {
	st := &supervisor.Status{RunDir: "/run/popvmm/demo"}
	k := &supervisor.KernelStatus{Name: "secondary", IP: "10.199.0.3"}
	got := supervisor.SSHArgs(st, k, []string{"uname", "-a"})
	joined := strings.Join(got, " ")
	for _, want := range []string{
		"-i /run/popvmm/demo/ssh/id_ed25519",
		"StrictHostKeyChecking=yes",
		"UserKnownHostsFile=/run/popvmm/demo/known_hosts",
		"GlobalKnownHostsFile=/dev/null",
		"IdentitiesOnly=yes",
		"root@10.199.0.3 -- uname -a",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("SSHArgs = %q, want %q in it", joined, want)
		}
	}
	if noCmd := supervisor.SSHArgs(st, k, nil); noCmd[len(noCmd)-1] != "root@10.199.0.3" || slices.Contains(noCmd, "--") {
		t.Errorf("SSHArgs without a command = %q, want it to end at the destination", noCmd)
	}
}
