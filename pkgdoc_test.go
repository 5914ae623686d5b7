package udm_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestPackageDocs checks every package of the module: a package other
// than main has a doc comment, and a package that declares a sync.Mutex
// or sync.RWMutex (a struct field or a package variable) states its lock
// order there ("Lock order: ...", or a "# Locks" section).
func TestPackageDocs(t *testing.T) {
	dirs, err := packageDirs(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 5 {
		t.Fatalf("found only %d package directories (%v): is the test running at the module root?", len(dirs), dirs)
	}
	for _, dir := range dirs {
		for _, problem := range checkPackageDoc(t, dir) {
			t.Errorf("%s: %s", dir, problem)
		}
	}
}

// TestPackageDocsCatches runs the check on packages written for it, so
// that it is known to fail where it must.
func TestPackageDocsCatches(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string // substrings of the problems, in order; none: no problem
	}{
		{"documented", map[string]string{"a.go": "// Package a does a.\npackage a\n"}, nil},
		{"undocumented", map[string]string{"a.go": "package a\n"}, []string{"no package doc comment"}},
		{"doc in another file", map[string]string{"a.go": "package a\n", "doc.go": "// Package a does a.\npackage a\n"}, nil},
		{"doc only in a test", map[string]string{"a.go": "package a\n", "a_test.go": "// Package a does a.\npackage a\n"}, []string{"no package doc comment"}},
		{"main needs none", map[string]string{"main.go": "package main\n\nfunc main() {}\n"}, nil},
		{"mutex field, no order", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport \"sync\"\n\ntype T struct{ mu sync.Mutex }\n"},
			[]string{"declares a mutex (T.mu, a.go) but its doc states no lock order"}},
		{"guard struct, no order", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport \"sync\"\n\ntype T struct {\n\tmu struct {\n\t\tsync.RWMutex\n\t\tn int\n\t}\n}\n"},
			[]string{"declares a mutex (T.mu, a.go)"}},
		{"pointer and renamed import", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport s \"sync\"\n\nvar mu *s.Mutex\n"},
			[]string{"declares a mutex (mu, a.go)"}},
		{"mutex with order", map[string]string{"a.go": "// Package a does a.\n//\n// Lock order: T.mu alone.\npackage a\n\nimport \"sync\"\n\ntype T struct{ mu sync.Mutex }\n"}, nil},
		{"mutex with a Locks heading", map[string]string{"a.go": "// Package a does a.\n//\n// # Locks\n//\n// T.mu nests with no other lock.\npackage a\n\nimport \"sync\"\n\ntype T struct{ mu sync.Mutex }\n"}, nil},
		{"locks mentioned, no order", map[string]string{"a.go": "// Package a does a; it locks T.mu.\npackage a\n\nimport \"sync\"\n\ntype T struct{ mu sync.Mutex }\n"},
			[]string{"states no lock order"}},
		{"mutex in main, no doc", map[string]string{"main.go": "package main\n\nimport \"sync\"\n\nvar mu sync.Mutex\n\nfunc main() {}\n"},
			[]string{"declares a mutex (mu, main.go) but its doc states no lock order"}},
		{"mutex in a test file", map[string]string{"a.go": "// Package a does a.\npackage a\n", "a_test.go": "package a\n\nimport \"sync\"\n\nvar mu sync.Mutex\n"}, nil},
		{"a local mutex", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport \"sync\"\n\nfunc f() { var mu sync.Mutex; mu.Lock() }\n"}, nil},
		{"a mutex parameter", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport \"sync\"\n\nfunc f(mu *sync.Mutex) { mu.Lock() }\n"}, nil},
		{"another package's Mutex", map[string]string{"a.go": "// Package a does a.\npackage a\n\nimport \"sync/atomic\"\n\ntype Mutex struct{ atomic.Int32 }\n\ntype T struct{ mu Mutex }\n"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := checkPackageDoc(t, dir)
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d like %q", got, len(tc.want), tc.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tc.want[i]) {
					t.Errorf("problem %q, want one containing %q", got[i], tc.want[i])
				}
			}
		})
	}
	dirs, err := packageDirs("testdata-none")
	if err == nil || len(dirs) != 0 {
		t.Errorf("packageDirs of a missing directory: %v, %v; want an error", dirs, err)
	}
}

// packageDirs returns the directories under root that hold Go files,
// skipping testdata and hidden directories.
func packageDirs(root string) ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dir := filepath.Dir(path)
			if len(dirs) == 0 || dirs[len(dirs)-1] != dir {
				dirs = append(dirs, dir)
			}
		}
		return nil
	})
	return dirs, err
}

// lockOrder finds where a doc states its lock order: the words "lock
// order" (or "lock ordering"), or a "# Locks" heading.
var lockOrder = regexp.MustCompile(`(?im)\block order|^# Locks?$`)

// checkPackageDoc parses the non-test Go files of dir and returns what is
// wrong with the package's doc comment.
func checkPackageDoc(t *testing.T, dir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pkg, doc string
	var mutexes []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		pkg = f.Name.Name
		if f.Doc != nil {
			doc += f.Doc.Text()
		}
		for _, m := range mutexDecls(f) {
			mutexes = append(mutexes, m+", "+name)
		}
	}
	var problems []string
	if pkg == "" {
		return nil
	}
	if pkg != "main" && strings.TrimSpace(doc) == "" {
		problems = append(problems, "package "+pkg+" has no package doc comment")
	}
	if len(mutexes) > 0 && !lockOrder.MatchString(doc) {
		sort.Strings(mutexes)
		problems = append(problems, "package "+pkg+" declares a mutex ("+strings.Join(mutexes, "; ")+
			`) but its doc states no lock order (a paragraph "Lock order: ..." or a "# Locks" section)`)
	}
	return problems
}

// mutexDecls names the struct fields (TYPE.FIELD) and package variables
// of f whose type is or holds a sync.Mutex or sync.RWMutex.
func mutexDecls(f *ast.File) []string {
	syncName := ""
	for _, imp := range f.Imports {
		if imp.Path.Value == `"sync"` {
			syncName = "sync"
			if imp.Name != nil {
				syncName = imp.Name.Name
			}
		}
	}
	if syncName == "" {
		return nil
	}
	holdsMutex := func(typ ast.Expr) bool {
		found := false
		ast.Inspect(typ, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncType:
				return false
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && x.Name == syncName && (n.Sel.Name == "Mutex" || n.Sel.Name == "RWMutex") {
					found = true
				}
			}
			return !found
		})
		return found
	}
	var out []string
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range gd.Specs {
			switch s := spec.(type) {
			case *ast.ValueSpec:
				if s.Type != nil && holdsMutex(s.Type) {
					for _, n := range s.Names {
						out = append(out, n.Name)
					}
				}
			case *ast.TypeSpec:
				st, ok := s.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, fld := range st.Fields.List {
					if !holdsMutex(fld.Type) {
						continue
					}
					if len(fld.Names) == 0 {
						out = append(out, s.Name.Name+".(embedded)")
					}
					for _, n := range fld.Names {
						out = append(out, s.Name.Name+"."+n.Name)
					}
				}
			}
		}
	}
	return out
}
