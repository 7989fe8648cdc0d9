//go:build linux && (amd64 || arm64 || loong64 || ppc64le || riscv64)

package exectrace

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestTracer runs a shell named shunt-exectest that executes a program twice (from a forked child, then
// in its own process) and a missing file once, a shell of another name and the test binary that
// execute the same, and checks that the tracer recorded the shunt shell's start and its calls only.
func TestTracer(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	shell := filepath.Join(dir, "shunt-exectest")
	other := filepath.Join(dir, "other-exectest")
	target := filepath.Join(dir, "target")
	missing := filepath.Join(dir, "missing")
	mustCopy(t, "/bin/sh", shell)
	mustCopy(t, "/bin/sh", other)
	mustCopy(t, "/bin/true", target)
	script := missing + " 2>/dev/null; " + target + "; exec " + target

	tr, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			tr.Stop()
		}
	})
	cmd := exec.Command(shell, "-c", script)
	mustRun(t, cmd)
	mustRun(t, exec.Command(other, "-c", script))
	mustRun(t, exec.Command(target))
	execs, err := tr.Stop()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}

	// The tracer sees the whole machine: keep the events of this test's files.
	ours := []string{shell, other, target, missing}
	var got []Exec
	for _, e := range execs {
		if slices.Contains(ours, e.Filename) {
			got = append(got, Exec{Kind: e.Kind, Comm: e.Comm, Filename: e.Filename})
		}
		if e.Kind == KindStart && e.Filename == shell && e.PID != uint32(cmd.Process.Pid) {
			t.Errorf("start of %s: pid %d, want %d", shell, e.PID, cmd.Process.Pid)
		}
	}
	want := []Exec{
		{Kind: KindStart, Comm: "shunt-exectest", Filename: shell},
		{Kind: KindCall, Comm: "shunt-exectest", Filename: missing},
		{Kind: KindCall, Comm: "shunt-exectest", Filename: target},
		{Kind: KindCall, Comm: "shunt-exectest", Filename: target},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recorded execs (-want +got):\n%s", diff)
	}
}

func mustCopy(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
}
