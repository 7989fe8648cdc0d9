package install

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/shuntmesh/shunt/cni/shim"
)

// A shim beside the binary: the shim is the plugin, the binary its standalone plugin; both are kept in
// place and both go on uninstall.
func TestShimInstalledWithStandalone(t *testing.T) {
	n, cfg := newTestNode(t)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	// The shim beside the binary hands VERSION to the standalone plugin, as the real one does.
	shimScript := "#!/bin/sh\nexec \"$(dirname \"$0\")/" + shim.StandaloneName + "\"\n"
	writeFile(t, filepath.Join(filepath.Dir(cfg.Binary), shim.DefaultName), shimScript, 0o755)
	in, stop := start(t, cfg)
	waitReady(t, in)
	plugin, standalone := filepath.Join(n.binDir, "shunt-cni"), filepath.Join(n.binDir, shim.StandaloneName)
	if got := readFile(t, plugin); got != shimScript {
		t.Errorf("shunt-cni is %q, want the shim", got)
	}
	if got := readFile(t, standalone); got != fakePluginScript {
		t.Errorf("%s is %q, want the binary", shim.StandaloneName, got)
	}
	if in.notServing == "" {
		t.Error("agent serves commands with ServeCNI unset")
	}

	if err := os.Remove(standalone); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the standalone plugin is back", func() bool { return readFile0(standalone) == fakePluginScript })
	waitReady(t, in)

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{plugin, standalone} {
		if exists(f) {
			t.Errorf("%s left after uninstall", f)
		}
	}
}

// Without a shim beside it, the binary is the plugin, as before shims existed.
func TestNoShimInstallsBinaryAsPlugin(t *testing.T) {
	n, cfg := newTestNode(t)
	cfg.ServeCNI = true
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	in, _ := start(t, cfg)
	waitReady(t, in)
	if got := readFile(t, filepath.Join(n.binDir, "shunt-cni")); got != fakePluginScript {
		t.Errorf("shunt-cni is %q, want the binary", got)
	}
	if exists(filepath.Join(n.binDir, shim.StandaloneName)) {
		t.Error("a standalone plugin installed without a shim")
	}
	if in.notServing != "no shim installed" {
		t.Errorf("agent without a shim: notServing %q", in.notServing)
	}
}

func readFile0(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
