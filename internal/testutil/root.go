// Package testutil holds helpers for privileged tests: root checks, network
// namespaces, processes started inside them and binaries built once per run.
// It is imported by _test.go files only.
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root")
	}
}
