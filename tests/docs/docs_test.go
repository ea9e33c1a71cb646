// Package docs_test checks that the code the docs point a reader to
// exists: every file and function on docs/design.md's routes, and every
// fuzz target, listed in docs/testing.md's table exactly once.
package docs_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// root is the repository's top, two levels up from this package.
const root = "../.."

// section returns the text of a markdown file's "## title" section.
func section(t *testing.T, file, title string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "\n## "+title+"\n")
	if i < 0 {
		t.Fatalf("%s: no section %q", file, title)
	}
	text = text[i+len(title)+5:]
	if j := strings.Index(text, "\n## "); j >= 0 {
		text = text[:j]
	}
	return text
}

// funcs returns the functions and methods declared in the Go files of dir
// (tests included when tests is set), as "Name", "(*T).Name" or "(T).Name".
func funcs(t *testing.T, dir string, tests bool) map[string]bool {
	t.Helper()
	fset := token.NewFileSet()
	ents, err := os.ReadDir(filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		n := e.Name()
		if !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") != tests {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(root, dir, n), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			name := fd.Name.Name
			if fd.Recv != nil && len(fd.Recv.List) == 1 {
				switch r := fd.Recv.List[0].Type.(type) {
				case *ast.StarExpr:
					if id, ok := r.X.(*ast.Ident); ok {
						name = "(*" + id.Name + ")." + name
					}
				case *ast.Ident:
					name = "(" + r.Name + ")." + name
				}
			}
			out[name] = true
		}
	}
	return out
}

var (
	codeSpan = regexp.MustCompile("`([^`]+)`")
	goFile   = regexp.MustCompile(`^[a-z0-9_/]+\.go$`)
	funcName = regexp.MustCompile(`^(\(\*?[A-Za-z_]\w*\)\.)?[A-Za-z_]\w*$`)
)

// TestDesignRoutes: each step of docs/design.md's routes names a file
// that exists and, after it, functions declared in that file's package.
func TestDesignRoutes(t *testing.T) {
	text := section(t, "docs/design.md", "Routes")
	var dir string
	var files, names int
	for _, m := range codeSpan.FindAllStringSubmatch(text, -1) {
		span := m[1]
		switch {
		case goFile.MatchString(span):
			if _, err := os.Stat(filepath.Join(root, span)); err != nil {
				t.Errorf("docs/design.md routes name %s: %v", span, err)
			}
			dir = filepath.Dir(span)
			files++
		case funcName.MatchString(span) && dir != "":
			if !funcs(t, dir, false)[span] {
				t.Errorf("docs/design.md routes name %s in %s/: no such function", span, dir)
			}
			names++
		}
	}
	if files < 10 || names < 20 {
		t.Errorf("the routes name %d files and %d functions: the section lost its steps", files, names)
	}
}

// TestFuzzTargetsListed: docs/testing.md's fuzz table lists every fuzz
// target of the tree, each where it is, and nothing else.
func TestFuzzTargetsListed(t *testing.T) {
	text := section(t, "docs/testing.md", "Fuzzing")
	row := regexp.MustCompile("(?m)^\\| `([a-z0-9_/]+)\\.(Fuzz\\w+)` \\|")
	listed := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(text, -1) {
		key := m[1] + "." + m[2]
		if listed[key] {
			t.Errorf("docs/testing.md lists %s twice", key)
		}
		listed[key] = true
	}
	var have []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "build") && p != root {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		for f := range funcs(t, rel, true) {
			if strings.HasPrefix(f, "Fuzz") {
				have = append(have, filepath.ToSlash(rel)+"."+f)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(have)
	if len(have) == 0 {
		t.Fatal("no fuzz targets found in the tree")
	}
	for _, h := range have {
		if !listed[h] {
			t.Errorf("fuzz target %s is not in docs/testing.md's table (as `%s`)", h, h)
		}
	}
	for l := range listed {
		if !slices.Contains(have, l) {
			t.Errorf("docs/testing.md lists %s, which does not exist", l)
		}
	}
	// make fuzz runs them all: its list holds pkg:FuzzX for each.
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	inMake := map[string]bool{}
	for _, m := range regexp.MustCompile(`([a-z0-9_/]+):(Fuzz\w+)`).FindAllStringSubmatch(string(mk), -1) {
		inMake[m[1]+"."+m[2]] = true
	}
	for _, h := range have {
		if !inMake[h] {
			t.Errorf("fuzz target %s is not in the Makefile's fuzz list (as %s)", h, strings.Replace(h, ".", ":", 1))
		}
	}
}
