package testenv_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/testenv"
)

func TestDecide(t *testing.T) {
	missing := errors.New("no /dev/kvm")
	tests := []struct {
		problem  error
		required bool
		want     testenv.Verdict
	}{
		{nil, false, testenv.Run},
		{nil, true, testenv.Run},
		{missing, false, testenv.Skip},
		{missing, true, testenv.Fail},
	}
	for _, tt := range tests {
		if got := testenv.Decide(tt.problem, tt.required); got != tt.want {
			t.Errorf("Decide(%v, %v) = %v, want %v", tt.problem, tt.required, got, tt.want)
		}
	}
}

func TestKVMProblemNamesTheDevice(t *testing.T) {
	err := testenv.KVMProblem()
	if err != nil && !strings.Contains(err.Error(), testenv.KVMDevice) {
		t.Errorf("KVMProblem() = %v, want it to name %s", err, testenv.KVMDevice)
	}
	t.Logf("KVM here: %v", err)
}
