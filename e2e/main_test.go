//go:build linux

// Package e2e proves the rules shunt programs with real packets: each test
// builds a "pod" network namespace joined to a "remote" one by two veth
// pairs, runs `shunt iptables` in the pod, starts a reference sidecar
// (./refproxy) and apps (./echoserver), and reads from every reply the path
// its connection took. See FLOWS.md for the flows F1–F9.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

var bins *testutil.Binaries

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		if err := testutil.RemoveStaleNetNS(); err != nil {
			fmt.Fprintln(os.Stderr, "remove stale namespaces:", err)
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
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

const (
	pkgShunt      = "github.com/shuntmesh/shunt/cmd/shunt"
	pkgRefproxy   = "github.com/shuntmesh/shunt/e2e/refproxy"
	pkgEchoserver = "github.com/shuntmesh/shunt/e2e/echoserver"
)
