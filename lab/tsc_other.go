//go:build !amd64

package lab

import "errors"

func hostTSCkHz() (uint64, error) {
	return 0, errors.New("the lab needs an x86-64 machine (it shares its / with an x86-64 emulated host)")
}
