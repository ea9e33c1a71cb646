package readme_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/tests/readme"
)

// TestSetUp: the top of the README is two commands, one that brings the
// example cluster up and one that runs every test, and CI (.ci/run) runs
// the test command exactly as the README writes it.
func TestSetUp(t *testing.T) {
	up, test, err := readme.SetUp(repoRoot + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	if up != "make up" || test != "make test" {
		t.Errorf("README set-up = %q, %q; want make up, make test (or change this test with the README)", up, test)
	}
	ci, err := os.ReadFile(repoRoot + "/.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for line := range strings.Lines(string(ci)) {
		if strings.TrimSpace(line) == test {
			found = true
		}
	}
	if !found {
		t.Errorf(".ci/run does not run the README's test command %q as a line of its own:\n%s", test, ci)
	}
}

// TestSetUpBuildsWhatItNeeds: on a fresh machine the two set-up commands
// are the whole set-up, so each make target installs and builds what it
// needs before it runs anything: its prerequisites, or its recipe, name
// the steps. (Not make -n: a recipe that runs $(MAKE) runs even then.)
func TestSetUpBuildsWhatItNeeds(t *testing.T) {
	up, test, err := readme.SetUp(repoRoot + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(repoRoot + "/Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cmd     string
		prereqs []string
		recipe  []string
	}{
		{up, []string{"deps", "build"}, []string{"check-kvm", "images", "up $(CLUSTER)", "images lab", "lab up $(CLUSTER)"}},
		{test, []string{"deps", "images", "lab", "vet"}, []string{"$(GO) test -race", "scripts/test-kvm.sh"}},
	} {
		target, ok := strings.CutPrefix(tc.cmd, "make ")
		if !ok {
			t.Errorf("set-up command %q is not a make target", tc.cmd)
			continue
		}
		prereqs, recipe, ok := rule(string(mk), target)
		if !ok {
			t.Errorf("the Makefile has no rule %q", target)
			continue
		}
		for _, p := range tc.prereqs {
			if !slices.Contains(prereqs, p) {
				t.Errorf("make %s: prerequisites %q lack %q", target, prereqs, p)
			}
		}
		for _, r := range tc.recipe {
			if !strings.Contains(recipe, r) {
				t.Errorf("make %s: its recipe does not run %q:\n%s", target, r, recipe)
			}
		}
	}
}

// rule returns the prerequisites and recipe of target in a Makefile.
func rule(mk, target string) (prereqs []string, recipe string, ok bool) {
	lines := strings.Split(mk, "\n")
	for i, l := range lines {
		rest, found := strings.CutPrefix(l, target+":")
		if !found {
			continue
		}
		var b strings.Builder
		for _, r := range lines[i+1:] {
			if !strings.HasPrefix(r, "\t") {
				break
			}
			b.WriteString(r + "\n")
		}
		return strings.Fields(rest), b.String(), true
	}
	return nil, "", false
}
