package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// execAllowed holds every function of this module, in the packages shunt, shunt-init and shunt-cni link, that may
// start a program, with the reason it never runs an iptables, nft or ip binary. The e2e suite checks the
// same at run time: it traces every exec of the processes named shunt* (internal/exectrace).
var execAllowed = map[string]string{
	testutil.RootModule + "/iptables.execRunner.Run": "the restore and save tools, used only with " +
		"iptables.Options.UseTools, an option of Go callers (tests) that no flag or variable sets: " +
		"Options.runner returns it, and every tool path is behind a !UseTools branch",
	testutil.RootModule + "/iptables.lockFileSupported": "iptables-legacy --version, evaluated only " +
		"when UseTools (o.UseTools && !lockFileSupported() in Options.lockEnv)",
	testutil.RootModule + "/validation.(*Probe).connect": "the validation's probe client as the proxy's " +
		"uid: ClientCommand, which the capture commands set to shunt's own executable " +
		"(os.Executable, __validate-client)",
	testutil.RootModule + "/cni/install.verifyPlugin": "the shunt CNI plugin just installed, with " +
		"CNI_COMMAND=VERSION, as a runtime would",
	testutil.RootModule + "/cni/shim.exitStandalone": "the shim (shunt-cni) replaces itself with the " +
		"standalone plugin installed beside it (shunt-cni-standalone, the shunt binary), never a tool",
}

// execFuncs are the functions, variables and types that start a program, by package.
var execFuncs = map[string][]string{
	"os/exec":               {"Command", "CommandContext", "Cmd{}"}, // Cmd{}: a literal, to run
	"os":                    {"StartProcess"},
	"syscall":               {"Exec", "ForkExec", "StartProcess", "SYS_EXECVE", "SYS_EXECVEAT"},
	"golang.org/x/sys/unix": {"Exec", "SYS_EXECVE", "SYS_EXECVEAT"},
}

// TestNoExecOutsideAllowlist walks the source of every package of this module that shunt or
// shunt-init links (their files for every platform) and checks that the functions that start programs
// are those of execAllowed: a new one fails until it is listed with its reason, and a listed one that
// no longer starts a program fails until it is removed.
func TestNoExecOutsideAllowlist(t *testing.T) {
	root, err := testutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,GoFiles,CgoFiles,IgnoredGoFiles,Module",
		"./cmd/shunt", "./cmd/shunt-init", "./cmd/shunt-cni")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	sites := map[string][]string{} // function → positions
	dec := json.NewDecoder(bytes.NewReader(out))
	packages := 0
	for {
		var pkg struct {
			ImportPath, Dir                   string
			GoFiles, CgoFiles, IgnoredGoFiles []string
			Module                            *struct{ Path string }
		}
		if err := dec.Decode(&pkg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list: %v", err)
		}
		if pkg.Module == nil || pkg.Module.Path != testutil.RootModule {
			continue
		}
		packages++
		fset := token.NewFileSet()
		for _, name := range slices.Concat(pkg.GoFiles, pkg.CgoFiles, pkg.IgnoredGoFiles) {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			path := filepath.Join(pkg.Dir, name)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if rel, err := filepath.Rel(root, path); err == nil {
				path = rel // for the messages
			}
			f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			for fn, pos := range execSites(fset, pkg.ImportPath, f) {
				sites[fn] = append(sites[fn], pos...)
			}
		}
	}
	if packages == 0 {
		t.Fatalf("go list -deps listed no package of %s", testutil.RootModule)
	}
	for _, fn := range slices.Sorted(maps.Keys(sites)) {
		if _, ok := execAllowed[fn]; !ok {
			t.Errorf("%s starts a program (%s); shunt and shunt-init must never run an iptables, nft or ip binary: "+
				"remove it, or add it to execAllowed with the reason it cannot", fn, strings.Join(sites[fn], ", "))
		}
	}
	for _, fn := range slices.Sorted(maps.Keys(execAllowed)) {
		if _, ok := sites[fn]; !ok {
			t.Errorf("execAllowed lists %s, which no longer starts a program: remove it", fn)
		}
	}
}

// execSites returns the positions of the references to execFuncs in f, by enclosing declaration:
// "<pkg>.<func>", "<pkg>.<Type>.<method>" or "<pkg>.(*<Type>).<method>", "<pkg>.<var>" for a
// package-level variable's initialiser.
func execSites(fset *token.FileSet, pkg string, f *ast.File) map[string][]string {
	names := map[string][]string{} // name in f → execFuncs of its package
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		funcs, ok := execFuncs[path]
		if !ok {
			continue
		}
		name := filepath.Base(path)
		if imp.Name != nil {
			name = imp.Name.Name
		}
		if name == "." {
			// Unqualified references would escape the walk.
			return map[string][]string{pkg + " (dot import)": {fset.Position(imp.Pos()).String()}}
		}
		names[name] = funcs
	}
	sites := map[string][]string{}
	for _, decl := range f.Decls {
		ast.Inspect(decl, func(n ast.Node) bool {
			sel, suffix := (*ast.SelectorExpr)(nil), ""
			switch n := n.(type) {
			case *ast.SelectorExpr:
				sel = n
			case *ast.CompositeLit:
				sel, _ = n.Type.(*ast.SelectorExpr)
				suffix = "{}"
			}
			if sel == nil {
				return true
			}
			x, ok := sel.X.(*ast.Ident)
			if !ok || !slices.Contains(names[x.Name], sel.Sel.Name+suffix) {
				return true
			}
			fn := pkg + "." + declName(decl, sel.Pos())
			sites[fn] = append(sites[fn], fmt.Sprintf("%s %s.%s%s", fset.Position(sel.Pos()), x.Name, sel.Sel.Name, suffix))
			return true
		})
	}
	return sites
}

// declName names the top-level declaration decl for the reference at pos: a function or method, or
// the package-level variable whose value holds pos.
func declName(decl ast.Decl, pos token.Pos) string {
	switch d := decl.(type) {
	case *ast.FuncDecl:
		if d.Recv == nil || len(d.Recv.List) == 0 {
			return d.Name.Name
		}
		switch typ := d.Recv.List[0].Type.(type) {
		case *ast.StarExpr:
			return fmt.Sprintf("(*%s).%s", recvName(typ.X), d.Name.Name)
		default:
			return recvName(typ) + "." + d.Name.Name
		}
	case *ast.GenDecl:
		for _, spec := range d.Specs {
			if spec.Pos() <= pos && pos < spec.End() {
				if vs, ok := spec.(*ast.ValueSpec); ok {
					var names []string
					for _, n := range vs.Names {
						names = append(names, n.Name)
					}
					return strings.Join(names, ",")
				}
				if ts, ok := spec.(*ast.TypeSpec); ok {
					return ts.Name.Name
				}
			}
		}
	}
	return "(unnamed declaration)"
}

// recvName is the type name of a receiver, without type parameters.
func recvName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.IndexExpr:
		return recvName(e.X)
	case *ast.IndexListExpr:
		return recvName(e.X)
	}
	return fmt.Sprintf("%T", e)
}
