package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// docFiles are the Markdown files that offer commands to a person.
func docFiles(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(docs) < 5 {
		t.Fatalf("docs/*.md: %d files (%v)", len(docs), err)
	}
	return append([]string{"../../README.md"}, docs...)
}

// inlineCommand finds `popvmm ...` and `make ...` code spans in prose.
var inlineCommand = regexp.MustCompile("`((?:popvmm|make) [^`]*)`")

// kernelMake are make targets the docs name that belong to the kernel's
// own build (docs/kernel-images.md), not to popvmm's Makefile.
var kernelMake = map[string]bool{"bzImage": true}

// TestDocsCommandsParse: every command README.md and docs/*.md offer parses
// as the README's do: ```sh blocks line by line (popvmm and make lines),
// and `popvmm ...` / `make ...` code spans in the prose, where placeholders
// stand for arguments (NAME, FILE), so only the command path and flags are
// checked: a renamed command, subcommand, flag or Make target fails here.
func TestDocsCommandsParse(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	hasTarget := func(target string) bool {
		return kernelMake[target] || regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(target)+`:`).Match(mk)
	}
	spans := 0
	for _, path := range docFiles(t) {
		blocks, err := readme.Blocks(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			for _, line := range b.Commands {
				words := strings.Fields(line)
				switch words[0] {
				case "popvmm":
					if err := parseOnly(words[1:]); err != nil {
						t.Errorf("%s:%d block: %q does not parse: %v", path, b.Line, line, err)
					}
				case "make":
					for _, target := range words[1:] {
						if !strings.Contains(target, "=") && !hasTarget(target) {
							t.Errorf("%s:%d block: %q: the Makefile has no target %q", path, b.Line, line, target)
						}
					}
				}
			}
		}
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(text), "\n") {
			for _, m := range inlineCommand.FindAllStringSubmatch(line, -1) {
				if strings.Contains(m[1], "<") {
					continue // a template (docs/network.md's link alias), not a command
				}
				spans++
				words := strings.Fields(m[1])
				if words[0] == "make" {
					for _, target := range words[1:] {
						if !strings.Contains(target, "=") && !hasTarget(target) {
							t.Errorf("%s:%d: `%s`: the Makefile has no target %q", path, i+1, m[1], target)
						}
					}
					continue
				}
				if err := pathAndFlags(words[1:]); err != nil {
					t.Errorf("%s:%d: `%s`: %v", path, i+1, m[1], err)
				}
			}
		}
	}
	if spans < 30 {
		t.Errorf("found %d popvmm/make code spans in the docs; the pattern no longer finds them", spans)
	}
}

// pathAndFlags checks that args name an existing command and flags it
// takes; a lower-case word where a command with subcommands expects one
// must be a subcommand (upper-case words and paths are placeholders).
func pathAndFlags(args []string) error {
	root := newRoot(io.Discard, io.Discard)
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if pos := cmd.Flags().Args(); cmd.HasSubCommands() && len(pos) > 0 && regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(pos[0]) {
		return fmt.Errorf("%s has no subcommand %q", cmd.CommandPath(), pos[0])
	}
	return nil
}

// demoPopvmm finds popvmm's command lines in scripts/demo.sh.
var demoPopvmm = regexp.MustCompile(`"\$popvmm" ([^|;&>]*)`)

// redirection is a shell redirection such as 2>/dev/null or >&2.
var redirection = regexp.MustCompile(`\s\d*>&?\S*`)

// TestDemoScriptCommandsParse: every popvmm command scripts/demo.sh (make
// demo) runs parses, with its shell variables standing for a config file
// and a kernel; TestKVMDemo (tests/readme) runs the script for real.
func TestDemoScriptCommandsParse(t *testing.T) {
	b, err := os.ReadFile("../../scripts/demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer(`"$cfg"`, "cluster.toml", `"$name"`, "primary", `"$1"`, "primary",
		`"${LAB_CPUS:-2}"`, "2", `"${LAB_MEMORY:-4G}"`, "4G", `"`, "")
	n := 0
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		line = redirection.ReplaceAllString(line, "")
		for _, m := range demoPopvmm.FindAllStringSubmatch(line, -1) {
			n++
			words := strings.Fields(vars.Replace(m[1]))
			if err := parseOnly(words); err != nil {
				t.Errorf("scripts/demo.sh:%d: popvmm %s: %v", i+1, strings.Join(words, " "), err)
			}
		}
	}
	if n < 20 {
		t.Errorf("found %d popvmm commands in scripts/demo.sh; the pattern no longer finds them", n)
	}
}

// TestPathAndFlagsRejects: the prose check would see a renamed command,
// subcommand or flag, and takes placeholders.
func TestPathAndFlagsRejects(t *testing.T) {
	for _, args := range [][]string{{"statsu"}, {"msg", "pong"}, {"lab", "upp"}, {"logs", "--rwa", "NAME"}} {
		if err := pathAndFlags(args); err == nil {
			t.Errorf("pathAndFlags(%q) = nil, want an error", args)
		}
	}
	for _, args := range [][]string{{"up"}, {"lab", "up", "CONFIG"}, {"logs", "--raw", "NAME"}, {"down", "-c", "NAME"}, {"lab"}} {
		if err := pathAndFlags(args); err != nil {
			t.Errorf("pathAndFlags(%q) = %v, want nil", args, err)
		}
	}
}
