package guestlib_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// funcBody returns the source of the body of the function name in the Go
// source src, and the file's import paths.
func funcBody(t *testing.T, file, src, name string) (string, []string) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, 0)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var imports []string
	for _, im := range f.Imports {
		imports = append(imports, im.Path.Value)
	}
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == name {
			b := fd.Body
			return src[fset.Position(b.Lbrace).Offset+1 : fset.Position(b.Rbrace).Offset], imports
		}
	}
	t.Fatalf("%s: no func %s", file, name)
	return "", nil
}

// TestREADMEQuickStartIsTheExample: the README's guestlib program is a
// main whose body and imports are Example's, so it compiles as Example
// does and stays true.
func TestREADMEQuickStartIsTheExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "<!-- guestlib quick start: identical to guestlib.Example -->\n```go\n"
	r := string(readme)
	i := strings.Index(r, marker)
	if i < 0 {
		t.Fatalf("README.md has no %q block", strings.TrimSpace(marker))
	}
	prog := r[i+len(marker):]
	prog = prog[:strings.Index(prog, "```")]
	ex, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	want, wantImports := funcBody(t, "example_test.go", string(ex), "Example")
	got, gotImports := funcBody(t, "README.md", prog, "main")
	if got != want {
		t.Errorf("README's main differs from Example:\n--- README\n%s\n--- Example\n%s", got, want)
	}
	if strings.Join(gotImports, " ") != strings.Join(wantImports, " ") {
		t.Errorf("README imports %v, Example's file %v", gotImports, wantImports)
	}
	if !strings.HasPrefix(prog, "package main\n") {
		t.Errorf("README program is not package main")
	}
}
