//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync/atomic"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// helperBin is a copy of the test binary that any uid can execute (go test's own lives in a
// directory only root can enter). Set by TestMain.
var helperBin string

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(runHelper(role, os.Args[1:]))
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		if err := testutil.RemoveStaleNetNS(); err != nil {
			fmt.Fprintln(os.Stderr, "remove stale namespaces:", err)
		}
		removeStale()
		dir, err := os.MkdirTemp("", "shunt-ebpf-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		helperBin = filepath.Join(dir, "helper")
		if err := copyExecutable(os.Args[0], helperBin); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Pin directories are named shunt-test-PID-N: removeStale unloads those of test processes that no
// longer run (killed before their cleanups). Cgroups are testutil's, which removes its own.
var (
	staleResource = regexp.MustCompile(`^shunt-test-(\d+)-\d+$`)
	resourceSeq   atomic.Int64
)

func resourceName() string {
	return fmt.Sprintf("shunt-test-%d-%d", os.Getpid(), resourceSeq.Add(1))
}

func removeStale() {
	entries, _ := os.ReadDir("/sys/fs/bpf")
	for _, e := range entries {
		m := staleResource.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", m[1])); err == nil {
			continue
		}
		_ = Unload(filepath.Join("/sys/fs/bpf", e.Name()))
	}
}
