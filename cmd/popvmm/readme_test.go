package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/tests/readme"
)

// TestReadmeCommandsParse: every command in README.md's ```sh blocks is
// one a new user can type after the README's set-up: each `popvmm ...`
// line names existing commands with flags they take and as many arguments
// as they want (through the same command lookup and flag parsing as a real
// run, stopping before the command does anything), and each `make TARGET`
// names a target of the Makefile. TestKVMReadme (tests/readme) runs the
// walk-through blocks for real.
func TestReadmeCommandsParse(t *testing.T) {
	blocks, err := readme.Blocks("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var popvmm, run int
	for _, b := range blocks {
		if b.Run {
			run++
		}
		for _, line := range b.Commands {
			words := strings.Fields(line)
			switch words[0] {
			case "popvmm":
				popvmm++
				if err := parseOnly(words[1:]); err != nil {
					t.Errorf("README.md:%d block: %q does not parse: %v", b.Line, line, err)
				}
			case "make":
				for _, target := range words[1:] {
					if strings.Contains(target, "=") {
						continue
					}
					if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(mk) {
						t.Errorf("README.md:%d block: %q: the Makefile has no target %q", b.Line, line, target)
					}
				}
			default:
				t.Errorf("README.md:%d block: %q: a README command is popvmm or make, so a new user has it after set-up", b.Line, line)
			}
		}
	}
	if popvmm < 10 || run == 0 {
		t.Errorf("README.md: %d popvmm commands, %d blocks marked %q; want the walk-through", popvmm, run, readme.KVMMarker)
	}
}

// parseOnly resolves args as `popvmm args` would and checks its flags and
// arguments, without running the command.
func parseOnly(args []string) error {
	root := newRoot(io.Discard, io.Discard)
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if cmd.Runnable() {
		return cmd.ValidateArgs(cmd.Flags().Args())
	}
	if len(cmd.Flags().Args()) > 0 {
		return usageErr("unknown command %q", cmd.Flags().Args()[0])
	}
	return nil
}

// TestParseOnlyRejects: the README check would see a mistyped command, an
// unknown flag and a missing argument.
func TestParseOnlyRejects(t *testing.T) {
	for _, args := range [][]string{
		{"statsu"},
		{"status", "--jsn"},
		{"boot"},
		{"msg", "pong", "primary"},
		{"up", "-d"},
		{"lab", "up"},
	} {
		if err := parseOnly(args); err == nil {
			t.Errorf("parseOnly(%q) = nil, want an error", args)
		}
	}
	for _, args := range [][]string{
		{"up", "-d", "examples/cluster.toml"},
		{"ssh", "primary", "uname", "-a"},
		{"lab", "run", "--", "uname", "-a"},
		{"msg", "info", "primary", "--json"},
	} {
		if err := parseOnly(args); err != nil {
			t.Errorf("parseOnly(%q) = %v, want nil", args, err)
		}
	}
}
