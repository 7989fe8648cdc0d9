package ebpf

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestGeneratedUpToDate compiles the programs as `go generate` does (gen.go's directive, with
// Debian's clang as `make generate` runs it) into a temporary directory and compares the result
// with the committed redirect_bpfel.go and redirect_bpfel.o, byte for byte: bpf2go's output is
// deterministic for a given clang (it strips DWARF and maps the source directory away), so any
// difference is a stale commit. It skips only when that clang is not installed; CI installs it
// (.ci/deps).
func TestGeneratedUpToDate(t *testing.T) {
	clang := os.Getenv("CLANG")
	if clang == "" {
		clang = "clang-14" // as the Makefile's CLANG
	}
	if _, err := exec.LookPath(clang); err != nil {
		t.Skipf("%s not on PATH: cannot check the generated eBPF files", clang)
	}
	for _, args := range generateArgs(t) {
		src := slices.Index(args, "redirect.c")
		if src < 1 {
			t.Fatalf("gen.go: no redirect.c in %q", args)
		}
		ident := strings.ToLower(args[src-1])
		out := t.TempDir()
		cmd := exec.Command(args[0], slices.Concat(args[1:3], []string{"-output-dir", out}, args[3:])...)
		cmd.Env = append(os.Environ(), "GOPACKAGE=ebpf", "BPF2GO_CC="+clang)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
		}
		for _, name := range []string{ident + "_bpfel.go", ident + "_bpfel.o"} {
			want, err := os.ReadFile(filepath.Join(out, name))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is not what %s makes of redirect.c: run 'make generate' and commit ebpf/", name, clang)
			}
		}
	}
}

// generateArgs returns the arguments of each of gen.go's go:generate directives ("go", "tool",
// "bpf2go", ...).
func generateArgs(t *testing.T) [][]string {
	t.Helper()
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var all [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "//go:generate "); ok {
			args := strings.Fields(rest)
			if len(args) < 4 || !slices.Equal(args[:3], []string{"go", "tool", "bpf2go"}) {
				t.Fatalf("gen.go: unexpected directive %q", rest)
			}
			all = append(all, args)
		}
	}
	if len(all) == 0 {
		t.Fatal("gen.go: no go:generate directive")
	}
	return all
}
