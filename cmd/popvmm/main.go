// Command popvmm runs clusters of Linux kernels side by side on one host,
// each kernel a KVM VM on dedicated host cores, as Popcorn Linux runs a
// replicated-kernel OS. This package only parses the command line and calls
// the packages that do the work; docs/cli.md describes every command.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Exit statuses (docs/cli.md).
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad command line or bad cluster config
	exitNoKVM   = 3 // no kernel can run: KVM unusable here, or the cluster runs without kernels
)

// exitError carries an exit status with the error to print.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.err == nil { // a status passed on, said already
		return ee.code
	}
	fmt.Fprintf(stderr, "popvmm: %v\n", err)
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}
