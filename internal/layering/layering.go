// Package layering checks popvmm's import rules (docs/design.md): which
// packages may import which. A Rule names the packages it governs and the
// imports they must not have, direct or anywhere in their dependencies;
// Check applies rules to an import graph, and Load reads that graph from
// the source tree with go/build (non-test files, this platform's build
// constraints), following the module's own packages from a set of roots.
package layering

import (
	"errors"
	"fmt"
	"go/build"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Graph maps an import path to the import paths of its non-test files.
// Packages outside the module are present as keys only when loaded; an
// import with no key has no known imports of its own.
type Graph map[string][]string

// Rule is one import rule. A pattern is an import path, or a path
// followed by "/..." for it and every package below it.
type Rule struct {
	Name string
	// From is the packages the rule governs.
	From []string
	// Deny is what they must not import.
	Deny []string
	// Deps extends the rule to every package From depends on, not only
	// its direct imports.
	Deps bool
}

// Violation is one import that breaks a rule: Pkg imports Import, through
// Via (the import chain from Pkg, Pkg first) when the rule covers
// dependencies.
type Violation struct {
	Rule   string
	Pkg    string
	Import string
	Via    []string
}

func (v Violation) String() string {
	if len(v.Via) > 2 {
		return fmt.Sprintf("%s: %s imports %s (via %s)", v.Rule, v.Pkg, v.Import, strings.Join(v.Via, " → "))
	}
	return fmt.Sprintf("%s: %s imports %s", v.Rule, v.Pkg, v.Import)
}

// Match reports whether path matches pattern (path, or path/...).
func Match(pattern, path string) bool {
	if root, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == root || strings.HasPrefix(path, root+"/")
	}
	return path == pattern
}

func matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return Match(p, path) })
}

// Check applies rules to g and returns every violation, in rule then
// package order. A rule whose From matches no package in g is itself a
// violation (Import empty): a rule that governs nothing cannot fail.
func Check(g Graph, rules []Rule) []Violation {
	pkgs := make([]string, 0, len(g))
	for p := range g {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	var out []Violation
	for _, r := range rules {
		governed := 0
		for _, p := range pkgs {
			if !matchAny(r.From, p) {
				continue
			}
			governed++
			out = append(out, check(g, r, p)...)
		}
		if governed == 0 {
			out = append(out, Violation{Rule: r.Name, Pkg: strings.Join(r.From, " ")})
		}
	}
	return out
}

// check is rule r for package p: a walk of its imports, breadth first so
// that Via is a shortest chain, into dependencies only when r.Deps.
func check(g Graph, r Rule, p string) []Violation {
	var out []Violation
	via := map[string][]string{p: {p}}
	queue := []string{p}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		imps := slices.Clone(g[cur])
		slices.Sort(imps)
		for _, imp := range imps {
			if _, seen := via[imp]; seen {
				continue
			}
			via[imp] = append(slices.Clone(via[cur]), imp)
			if matchAny(r.Deny, imp) {
				out = append(out, Violation{Rule: r.Name, Pkg: p, Import: imp, Via: via[imp]})
			}
			if r.Deps {
				queue = append(queue, imp)
			}
		}
	}
	return out
}

// Load reads the import graph of module (its path) rooted at dir: every
// package under each root directory (relative to dir, e.g. "vmm"), and,
// following imports, every package of the module they depend on.
// Directories named testdata or starting with "." or "_" are skipped, as
// the go tool skips them.
func Load(dir, module string, roots ...string) (Graph, error) {
	g := Graph{}
	var queue []string
	for _, root := range roots {
		err := filepath.WalkDir(filepath.Join(dir, root), func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			if n := d.Name(); path != filepath.Join(dir, root) && (n == "testdata" || n[0] == '.' || n[0] == '_') {
				return filepath.SkipDir
			}
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			queue = append(queue, module+"/"+filepath.ToSlash(rel))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("layering: walk %s: %w", root, err)
		}
	}
	for len(queue) > 0 {
		imp := queue[0]
		queue = queue[1:]
		if _, done := g[imp]; done {
			continue
		}
		pkg, err := build.Default.ImportDir(filepath.Join(dir, strings.TrimPrefix(imp, module)), 0)
		var noGo *build.NoGoError
		switch {
		case errors.As(err, &noGo):
			continue // a directory with no package (or tests only)
		case err != nil:
			return nil, fmt.Errorf("layering: package %s: %w", imp, err)
		}
		g[imp] = pkg.Imports
		for _, i := range pkg.Imports {
			if Match(module+"/...", i) {
				queue = append(queue, i)
			}
		}
	}
	return g, nil
}

// ModuleRoot finds the go.mod above dir and returns its directory and the
// module path it declares.
func ModuleRoot(dir string) (root, module string, err error) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if m, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
					return d, strings.Trim(strings.TrimSpace(m), `"`), nil
				}
			}
			return "", "", fmt.Errorf("layering: %s: no module line", filepath.Join(d, "go.mod"))
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("layering: %w", err)
		}
		if filepath.Dir(d) == d {
			return "", "", fmt.Errorf("layering: no go.mod above %s", dir)
		}
	}
}
