//go:build linux

// Package e2e proves the rules shunt programs with real packets: each test
// builds a "pod" network namespace joined to a "remote" one by two veth
// pairs, runs `shunt iptables` in the pod, starts a reference sidecar
// (./refproxy) and apps (./echoserver), and reads from every reply the path
// its connection took. See docs/flows.md for the flows F1–F9.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

var bins *testutil.Binaries

var shuntBinary = flag.String("shunt", "", "run this shunt binary instead of building ./cmd/shunt")

func TestMain(m *testing.M) {
	flag.Parse()
	shunt := *shuntBinary
	if shunt != "" {
		// Absolute: the tests run it from other directories.
		var err error
		if shunt, err = filepath.Abs(shunt); err == nil {
			_, err = os.Stat(shunt)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "-shunt:", err)
			os.Exit(2)
		}
	}
	// As root the run is traced: no process named shunt* may execute an iptables, nft or ip tool.
	var stopTrace func() bool
	if os.Geteuid() == 0 {
		if err := testutil.RemoveStaleNetNS(); err != nil {
			fmt.Fprintln(os.Stderr, "remove stale namespaces:", err)
		}
		var err error
		if stopTrace, err = traceExecs(os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "shunt-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Readable and executable by all, like binaries in a container image:
	// processes run as the app's and the proxy's uids exec them.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins = testutil.NewBinaries(dir)
	if shunt != "" {
		// A copy in dir: the given path may sit in a directory the proxy's and the app's uids cannot
		// enter (a checkout under a 0700 temp dir), and the validation runs the binary as the proxy.
		copied := filepath.Join(dir, filepath.Base(shunt))
		if err := copyExecutable(shunt, copied); err != nil {
			fmt.Fprintln(os.Stderr, "-shunt:", err)
			os.Exit(1)
		}
		bins.Use(pkgShunt, copied)
	}
	code := m.Run()
	if stopTrace != nil && !stopTrace() && code == 0 {
		code = 1
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

const (
	pkgShunt      = "github.com/shuntmesh/shunt/cmd/shunt"
	pkgShim       = "github.com/shuntmesh/shunt/cmd/shunt-cni"
	pkgRefproxy   = "github.com/shuntmesh/shunt/e2e/refproxy"
	pkgEchoserver = "github.com/shuntmesh/shunt/e2e/echoserver"
)

// copyExecutable copies the file src to dst, mode 0755.
func copyExecutable(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}
