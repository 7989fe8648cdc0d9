//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerdInstallCNI runs `shunt install-cni` on a containerd node as the DaemonSet does: the
// conflist it writes into containerd's conf dir is the one containerd loads (its verbose Status shows
// shunt-cni chained after bridge), and a meshed pod's sandbox then gets Istio's rules through it;
// `shunt status` on the node lists the pods captured and `shunt migrate-pods --to nftables` moves them
// to native nftables, still captured; after SIGTERM containerd loads the primary network alone again
// and a new pod gets none.
func TestContainerdInstallCNI(t *testing.T) {
	n := newCRINode(t)
	token, tokenFile, caFile := installerAccess(t, n.cni)
	// The primary network as another agent writes it, in the spec version containerd 1.6 reads.
	primary := strings.Replace(fmt.Sprintf(primaryConflist, filepath.Join(n.cni.dataDir, "ipam")), `"1.1.0"`, `"1.0.0"`, 1)
	writeFile(t, filepath.Join(n.confDir, "10-bridge.conflist"), []byte(primary), 0o644)
	n.WaitNetworkReady(t)
	loaded := func(plugin string) bool { return slices.Contains(loadedPlugins(t, n.CNIConfig(t)), plugin) }
	waitFor(t, "containerd to load the primary network", func() bool { return loaded("bridge") })
	if loaded("shunt-cni") {
		t.Fatalf("containerd loaded shunt-cni before the installer ran:\n%s", n.CNIConfig(t))
	}

	health := "127.0.0.1:19102"
	// An audit every 100 ms: `shunt migrate-pods` moves the pods behind the agent's back, holding the
	// records' lock, which the audit waits for: it never finds a pod moved half-way drifted.
	inst := startInstallCNI(t, n.cni, append(installCNIArgs(t, n.cni, n.binDir, n.confDir, token, tokenFile, caFile, health),
		"--audit-interval", "100ms"))
	web := n.cni.nodeHTTP()
	waitFor(t, "/readyz 200", func() bool {
		resp, err := web.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitFor(t, "containerd to load the installer's conflist", func() bool { return loaded("shunt-cni") })
	written, err := os.ReadFile(filepath.Join(n.confDir, "10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	chainedAfterBridge(t, written)
	t.Logf("containerd's loaded CNI configuration:\n%s", n.CNIConfig(t))

	meshed := n.runPod(t, injectedPod(t, "native-sidecar.yaml", "installed"))
	if got, want := ourRules(save(t, meshed.NetNS, false)), istioCNIRules(t, "basic.v4"); got != want {
		t.Errorf("rules of a meshed pod through the installer's conflist:\n got:\n%s\nwant:\n%s", got, want)
	}
	log, err := os.ReadFile(n.cni.logFile)
	if err != nil || !strings.Contains(string(log), meshed.ID) {
		t.Errorf("shunt-cni's log does not name sandbox %s: %v\n%s", meshed.ID, err, tail(string(log), 20))
	}

	excludes := n.runPod(t, injectedPod(t, "native-sidecar-excludes.yaml", "installed"))
	testNodeStatusAndMigration(t, filepath.Join(n.cni.dataDir, "pods"), meshed, excludes)
	time.Sleep(300 * time.Millisecond) // audits of the migrated pods
	if resp, err := web.Get("http://" + health + "/metrics"); err != nil {
		t.Error(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := string(b); !strings.Contains(m, "shunt_cni_pods_audited 2") || strings.Contains(m, "shunt_cni_drift_repairs_total{") {
			t.Errorf("the audit during and after the migration: %s; %s", grepLines(m, "shunt_cni_pods_audited"), grepLines(m, "shunt_cni_drift_repairs_total{"))
		}
	}

	if err := inst.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := inst.wait(t); err != nil {
		t.Errorf("install-cni exit: %v", err)
	}
	if got := readBytes(t, filepath.Join(n.confDir, "10-bridge.conflist")); string(got) != primary {
		t.Errorf("after SIGTERM the conflist is not the primary's:\n%s", got)
	}
	waitFor(t, "containerd to load the primary network alone", func() bool { return !loaded("shunt-cni") })
	after := n.runPod(t, injectedPod(t, "classic-sidecar.yaml", "installed"))
	if got := ourRules(save(t, after.NetNS, false)); got != "" {
		t.Errorf("a pod started after the installer stopped got rules:\n%s", got)
	}
	if err := meshed.Stop(t); err != nil {
		t.Errorf("StopPodSandbox of the meshed pod without shunt-cni in the chain: %v", err)
	}
}

// loadedPlugins returns the plugin types of every network in containerd's loaded CNI configuration
// (go-cni's, as CRI's verbose Status shows it), in order.
func loadedPlugins(t *testing.T, cniConfig string) []string {
	t.Helper()
	var c struct {
		Networks []struct {
			Config struct {
				Plugins []struct {
					Network struct {
						Type string `json:"type"`
					}
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(cniConfig), &c); err != nil {
		t.Fatalf("containerd's CNI configuration: %v\n%s", err, cniConfig)
	}
	var types []string
	for _, n := range c.Networks {
		for _, p := range n.Config.Plugins {
			types = append(types, p.Network.Type)
		}
	}
	return types
}
