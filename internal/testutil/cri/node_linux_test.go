package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestStart runs a sandbox on bridge + host-local and a container in it as a given user, reads its
// log and execs in it; then checks that the node's cleanup leaves no process, mount or directory.
func TestStart(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	bins := testutil.NewBinaries(dir)
	binDir, confDir := t.TempDir(), t.TempDir()
	for _, pkg := range []string{"bridge", "loopback"} {
		src := bins.Path(t, "github.com/containernetworking/plugins/plugins/main/"+pkg)
		if err := os.Symlink(src, filepath.Join(binDir, pkg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(bins.Path(t, "github.com/containernetworking/plugins/plugins/ipam/host-local"), filepath.Join(binDir, "host-local")); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bridge", "bridge": "cni0",
  "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/24"}]], "dataDir": %q}}]}`,
		filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(confDir, "10-net.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	images := NewImages(dir)
	var nodeDir string
	var shims []process
	t.Run("node", func(t *testing.T) {
		n := Start(t, Options{CNIBinDir: binDir, CNIConfDir: confDir, Images: images})
		nodeDir = n.Dir
		n.WaitNetworkReady(t)
		p := n.MustRunPod(t, n.SandboxConfig(PodMeta{Namespace: "ns", Name: "pod", UID: "uid-1"}))
		if !strings.HasPrefix(p.IP, "10.89.0.") {
			t.Errorf("pod IP %q, want one of 10.89.0.0/24", p.IP)
		}
		if !strings.HasPrefix(p.NetNSPath, n.Dir+"/") {
			t.Errorf("pod namespace %s is not under the node's directory %s", p.NetNSPath, n.Dir)
		}
		c := Container{Name: "pause", Image: images.Pause(t), RunAsUser: Int64(1337), RunAsGroup: Int64(1337)}
		id := p.Start(t, c)
		if out := p.NetNS.Run(t, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, p.IP+"/") {
			t.Errorf("eth0 in %s: %s, want %s", p.NetNS.Name, out, p.IP)
		}
		if st := n.containerStatus(t, id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s: %v", id, st.State)
		}
		if procs := containerdProcesses(n.Dir); len(procs) < 2 {
			t.Errorf("containerd processes naming %s: %v, want containerd and a shim", n.Dir, procs)
		} else {
			shims = procs
		}
	})
	if _, err := os.Stat(nodeDir); !os.IsNotExist(err) {
		t.Errorf("node directory %s after cleanup: %v", nodeDir, err)
	}
	if left := containerdProcesses(nodeDir); len(left) > 0 {
		t.Errorf("containerd processes naming %s after cleanup: %v", nodeDir, left)
	}
	for _, p := range shims {
		if sock := p.shimSocket(); sock != "" {
			if _, err := os.Stat(sock); !os.IsNotExist(err) {
				t.Errorf("the socket %s of shim %v is left: %v", sock, p.args, err)
			}
		}
	}
}
