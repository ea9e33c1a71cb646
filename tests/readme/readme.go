// Package readme reads the shell blocks of the repository's README.md, so
// tests can check that every command it shows parses (cmd/popvmm) and that
// the walk-through blocks run as written on a machine with KVM or in the
// lab (TestKVMReadme here).
package readme

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// KVMMarker, on the line before a ```sh block, marks the block as a
// walk-through that TestKVMReadme runs line by line, as written.
const KVMMarker = "<!-- readme-test: run with kvm -->"

// SetUpMarker, on the line before a ```sh block, marks the README's
// set-up: exactly two commands, the one that brings the example cluster up
// (the main job: tests/e2e's TestKVMSetUpUp runs it) and the one that runs
// every test (.ci/run runs it as written).
const SetUpMarker = "<!-- readme-test: set-up -->"

// Block is one ```sh block of the README.
type Block struct {
	Line     int      // the line of its opening fence, 1-based
	Commands []string // its commands, comments and blank lines removed
	Run      bool     // marked with KVMMarker
	SetUp    bool     // marked with SetUpMarker
}

// Blocks returns every ```sh block of the Markdown file at path.
func Blocks(path string) ([]Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out  []Block
		cur  *Block
		prev string
		n    int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```sh":
			cur = &Block{Line: n, Run: strings.TrimSpace(prev) == KVMMarker, SetUp: strings.TrimSpace(prev) == SetUpMarker}
		case cur != nil && trimmed == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			if c := Command(line); c != "" {
				cur.Commands = append(cur.Commands, c)
			}
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: ```sh block never closed", path, cur.Line)
	}
	return out, nil
}

// Command is line without its trailing comment (a # after a blank) and
// surrounding blanks; "" for a comment or blank line. The README's commands
// use no quoting that holds a #.
func Command(line string) string {
	s := strings.TrimSpace(line)
	if strings.HasPrefix(s, "#") {
		return ""
	}
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// SetUp returns the two commands of the Markdown file's set-up block (the
// one marked SetUpMarker, which must be its first ```sh block): the one
// that brings the example cluster up, and the one that runs every test.
func SetUp(path string) (up, test string, err error) {
	blocks, err := Blocks(path)
	if err != nil {
		return "", "", err
	}
	if len(blocks) == 0 || !blocks[0].SetUp {
		return "", "", fmt.Errorf("%s: the first ```sh block is not marked %q", path, SetUpMarker)
	}
	if b := blocks[0]; len(b.Commands) != 2 {
		return "", "", fmt.Errorf("%s:%d: the set-up block has %d commands, want 2 (bring the cluster up, run every test)", path, b.Line, len(b.Commands))
	}
	return blocks[0].Commands[0], blocks[0].Commands[1], nil
}
