package supervisor

import (
	"errors"
	"log/slog"
)

// NewVMLauncher is the launcher that boots kernels as KVM VMs.
func NewVMLauncher(log *slog.Logger) (Launcher, error) {
	return nil, errors.New("this popvmm binary has no VM launcher")
}
