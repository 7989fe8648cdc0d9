package kube

import (
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// Version is the kube-apiserver version that e2e/tools/kube pins.
const Version = "v1.36.3"

const apiserver = "k8s.io/kubernetes/cmd/kube-apiserver"

// buildFlags are go build's flags but -o. The version variables are what
// Kubernetes' own build sets (hack/lib/version.sh); without them /version
// reports v0.0.0-master.
var buildFlags = []string{
	"-trimpath",
	"-ldflags=-s -w" +
		" -X k8s.io/component-base/version.gitVersion=" + Version +
		" -X k8s.io/component-base/version.gitMajor=1" +
		" -X k8s.io/component-base/version.gitMinor=36" +
		" -X k8s.io/component-base/version.gitTreeState=clean",
}

// APIServerBinary returns the path of kube-apiserver Version, built from the
// module e2e/tools/kube into bin/kube/ under the repository root unless a build
// of the same go.mod, go.sum and flags is there (see testutil.ToolBinary). A
// cold build takes minutes; a failed build fails t.
func APIServerBinary(t testing.TB) string {
	t.Helper()
	return testutil.ToolBinary(t, "e2e/tools/kube", apiserver, "bin/kube/kube-apiserver-"+Version, buildFlags...)
}
