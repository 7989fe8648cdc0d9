//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// primaryConflist is the primary plugin's config as another agent writes it, formatted its way.
const primaryConflist = `{
    "cniVersion": "1.1.0",
    "name": "k8s-pod-network",
    "x-agent": {"generation": 7},
    "plugins": [
        {
            "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": %q}
        }
    ]
}
`

// TestInstallCNI runs `shunt install-cni` on a node as the DaemonSet does — with its service
// account's RBAC, against a real kube-apiserver — and checks that it chains shunt-cni into the
// primary conflist, that a pod then gets its rules through the config it wrote, that it puts its
// entry back after another agent rewrites the file, that it removes the node's startup taint,
// that its repair loop deletes a pod that started without rules, and that on SIGTERM it leaves
// the conflist byte-identical and removes the binary and kubeconfig. Started again with the nftables
// backend and --migrate-pods, it moves the running pod to native nftables.
func TestInstallCNI(t *testing.T) {
	n := newCNINode(t)
	ctx := context.Background()
	c := n.cluster.Client

	token, tokenFile, caFile := installerAccess(t, n)

	// A new node, tainted by its provisioning until the plugin is in the chain.
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{
			{Key: "cni.shunt.io/not-ready", Effect: corev1.TaintEffectNoSchedule},
			{Key: "example.com/other", Effect: corev1.TaintEffectNoSchedule},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The host's CNI dirs, with the primary plugin's binaries and config.
	binDir, netDir := hostCNIDirs(t)
	conflistPath := filepath.Join(netDir, "10-bridge.conflist")
	original := []byte(fmt.Sprintf(primaryConflist, filepath.Join(n.dataDir, "ipam-installer")))
	writeFile(t, conflistPath, original, 0o644)

	health := "127.0.0.1:19102"
	cmd := n.ns.Command(nil, installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, health)...)
	// The chart's downward-API variables: the plugin learns the agent's own pods from them.
	cmd.Env = append(cmd.Env, "POD_NAME=shunt-cni-x7k2p", "POD_NAMESPACE=kube-system")
	var logs testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("install-cni log:\n%s", tail(logs.String(), 80))
		}
	})

	web := n.nodeHTTP()
	get := func(path string) (int, string) {
		resp, err := web.Get("http://" + health + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "/readyz 200", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })

	t.Run("installed", func(t *testing.T) {
		b, err := os.ReadFile(conflistPath)
		if err != nil {
			t.Fatal(err)
		}
		list := chainedAfterBridge(t, b)
		if !bytes.Contains(b, []byte(`"x-agent"`)) {
			t.Error("the installer dropped a field of the primary config")
		}
		var entry struct {
			Namespace string `json:"agent_namespace"`
			Prefix    string `json:"agent_pod_prefix"`
		}
		if err := json.Unmarshal(list.Plugins[len(list.Plugins)-1].Bytes, &entry); err != nil ||
			entry.Namespace != "kube-system" || entry.Prefix != "shunt-cni-" {
			t.Errorf("the entry names the agent's pods %+v (%v), want kube-system and shunt-cni- from $POD_NAMESPACE and $POD_NAME", entry, err)
		}
		for file, mode := range map[string]os.FileMode{
			conflistPath:                              0o644,
			filepath.Join(binDir, "shunt-cni"):        0o755,
			filepath.Join(netDir, "shunt-kubeconfig"): 0o600,
		} {
			st, err := os.Stat(file)
			if err != nil || st.Mode().Perm() != mode {
				t.Errorf("%s: %v, mode %v; want %v", file, err, st.Mode().Perm(), mode)
			}
		}
	})

	t.Run("taint_removed", func(t *testing.T) {
		waitFor(t, "the startup taint gone", func() bool {
			node, err := c.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
			if err != nil {
				return false
			}
			other := false
			for _, taint := range node.Spec.Taints {
				switch taint.Key {
				case "cni.shunt.io/not-ready":
					return false
				case "example.com/other":
					other = true
				}
			}
			if !other {
				t.Fatalf("another taint went too: %v", node.Spec.Taints)
			}
			return true
		})
	})

	// Readiness as a Node condition, for controllers that gate on conditions rather than taints.
	condition := func() *corev1.NodeCondition {
		node, err := c.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		for i := range node.Status.Conditions {
			if node.Status.Conditions[i].Type == "cni.shunt.io/Ready" {
				return &node.Status.Conditions[i]
			}
		}
		return nil
	}
	t.Run("node_condition", func(t *testing.T) {
		waitFor(t, "the node condition cni.shunt.io/Ready True", func() bool {
			cond := condition()
			return cond != nil && cond.Status == corev1.ConditionTrue && cond.Reason == "PluginInstalled" && !cond.LastTransitionTime.IsZero()
		})
	})

	// Created here: the pod outlives the subtest, for migrate_pods.
	meshed := n.podSandbox(t, meshedPod("shop", "through-installer", nil))
	added := false
	t.Run("pod_through_installed_config", func(t *testing.T) {
		list, err := libcni.LoadConfList(netDir, "k8s-pod-network")
		if err != nil {
			t.Fatal(err)
		}
		cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(n.dataDir, "cache-installer"), nil)
		p := meshed
		err = n.inNode(t, func() error {
			_, err := cfg.AddNetworkList(ctx, list, p.runtimeConf())
			return err
		})
		if err != nil {
			t.Fatalf("ADD with the installed config and the service account's kubeconfig: %v", err)
		}
		if ourRules(save(t, p.ns, false)) == "" {
			t.Error("no rules in the pod")
		}
		added = true
		waitFor(t, "the ADD counted in /metrics", func() bool {
			_, body := get("/metrics")
			return strings.Contains(body, "shunt_cni_pods_programmed_total 1")
		})
	})

	t.Run("survives_rewrite", func(t *testing.T) {
		// Another agent rewrites its config, without our entry.
		writeFile(t, conflistPath, original, 0o644)
		waitFor(t, "our entry back", func() bool {
			b, _ := os.ReadFile(conflistPath)
			return bytes.Contains(b, []byte(`"shunt-cni"`))
		})
		waitFor(t, "the fight counted", func() bool {
			_, body := get("/metrics")
			return strings.Contains(body, "shunt_cni_conflist_rewrites_total 1")
		})
	})

	t.Run("repair_deletes_pod_without_rules", func(t *testing.T) {
		pod := meshedPod("shop", "unmeshed", nil)
		pod.Spec.InitContainers = []corev1.Container{{Name: "istio-validation"}}
		created := n.createPod(t, pod)
		created.Status.InitContainerStatuses = []corev1.ContainerStatus{{
			Name: "istio-validation", Image: "example.invalid/proxy", ImageID: "x",
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 126, Reason: "Error"}},
		}}
		if _, err := c.CoreV1().Pods("shop").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pod deleted", func() bool {
			p, err := c.CoreV1().Pods("shop").Get(ctx, "unmeshed", metav1.GetOptions{})
			// No kubelet confirms the deletion: the pod stays, terminating.
			return err != nil || p.DeletionTimestamp != nil
		})
		waitFor(t, "an event on the pod", func() bool {
			evs, err := c.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=unmeshed"})
			return err == nil && len(evs.Items) > 0 && evs.Items[0].Reason == "ShuntRepair"
		})
		waitFor(t, "the repair counted", func() bool {
			_, body := get("/metrics")
			return strings.Contains(body, `shunt_cni_repairs_total{action="delete"} 1`)
		})
	})

	// Another agent flushes the pod's ISTIO_OUTPUT and adds a rule to its ISTIO_INBOUND: the drift
	// audit (every 5s by default) finds both, puts the pod's rules back exactly and says so in an Event
	// on the pod, its metrics and GET /pods.
	t.Run("drift_repaired", func(t *testing.T) {
		if !added {
			t.Fatal("no pod: pod_through_installed_config failed")
		}
		want := ourRules(save(t, meshed.ns, false))
		meshed.ns.Run(t, "iptables-nft", "-t", "nat", "-F", "ISTIO_OUTPUT")
		meshed.ns.Run(t, "iptables-nft", "-t", "nat", "-I", "ISTIO_INBOUND", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
		waitFor(t, "the drift repaired", func() bool {
			_, body := get("/metrics")
			return strings.Contains(body, `shunt_cni_drift_repairs_total{action="reconcile",outcome="done"} 1`)
		})
		if got := ourRules(save(t, meshed.ns, false)); got != want {
			t.Errorf("rules after the repair:\n%s\nwant:\n%s", got, want)
		}
		waitFor(t, "a ShuntDrift event on the pod", func() bool {
			evs, err := c.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=through-installer"})
			if err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Reason == "ShuntDrift" && e.Type == "Warning" && strings.Contains(e.Message, "ISTIO_OUTPUT") &&
					strings.Contains(e.Message, "put them back") && e.InvolvedObject.UID == types.UID(meshed.uid) {
					return true
				}
			}
			return false
		})
		// On demand: an audit now finds the pod captured.
		resp, err := web.Post("http://"+health+"/audit", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sts []struct{ Pod, State string }
		if err := json.NewDecoder(resp.Body).Decode(&sts); err != nil || len(sts) != 1 || sts[0].Pod != "shop/through-installer" || sts[0].State != "captured" {
			t.Errorf("POST /audit: %v %+v, want the pod captured", err, sts)
		}
	})

	t.Run("uninstall_on_sigterm", func(t *testing.T) {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			stopped = true
			if err != nil {
				t.Errorf("install-cni exit: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("install-cni did not exit within 30s of SIGTERM")
		}
		b, err := os.ReadFile(conflistPath)
		if err != nil || !bytes.Equal(b, original) {
			t.Errorf("conflist after uninstall differs from the original (%v):\n%s", err, b)
		}
		if cond := condition(); cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "AgentStopped" {
			t.Errorf("node condition after the agent stopped: %+v, want False AgentStopped", cond)
		}
		for _, f := range []string{filepath.Join(binDir, "shunt-cni"), filepath.Join(netDir, "shunt-kubeconfig")} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				t.Errorf("%s still there after uninstall (%v)", f, err)
			}
		}
	})

	// The operator switches the node to native nftables, with --migrate-pods: the new agent moves the
	// pod that runs with iptables rules, from the plugin's record of it, with no API call.
	t.Run("migrate_pods", func(t *testing.T) {
		if !added {
			t.Fatal("no pod: pod_through_installed_config failed")
		}
		args := append(installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, "127.0.0.1:19103"),
			"--backend", "nftables", "--migrate-pods")
		p := startInstallCNI(t, n, args)
		waitFor(t, "the pod migrated", func() bool {
			return strings.Contains(p.logs.String(), `"msg":"node's pods migrated"`)
		})
		logs := p.logs.String()
		if !strings.Contains(logs, `"migrated":1`) || !strings.Contains(logs, `"failed":0`) {
			t.Errorf("migration log: %s", tail(logs, 10))
		}
		if rules := ourRules(save(t, meshed.ns, false)); rules != "" {
			t.Errorf("iptables rules remain in the pod after the migration:\n%s", rules)
		}
		if out := meshed.ns.Run(t, "nft", "list", "table", "inet", "istio-proxy-nat"); !strings.Contains(out, "istio-output") {
			t.Errorf("no native nftables rules in the pod after the migration:\n%s", out)
		}
		p.stop(t)
	})
}

// loneConf is the primary network's config as an agent writes it: one plugin, in a .conf, formatted
// its way, mode 0600.
const loneConf = `{
	"cniVersion": "1.0.0",
	"name": "k8s-pod-network",
	"type": "bridge", "bridge": "cni0", "isGateway": true,
	"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": %q}
}

`

// TestInstallCNIKilledAndRestarted kills `shunt install-cni` (SIGKILL: no uninstall) after it has
// turned the node's lone .conf into a conflist with its entry, starts it again, as the DaemonSet's
// controller does, and stops it with SIGTERM: the config dir must then be as it was before the first
// start, byte for byte and mode for mode, and nothing of shunt's left on the node.
func TestInstallCNIKilledAndRestarted(t *testing.T) {
	n := newCNINode(t)
	token, tokenFile, caFile := installerAccess(t, n)
	createNode(t, n)
	binDir, netDir := hostCNIDirs(t)
	confPath, listPath := filepath.Join(netDir, "10-bridge.conf"), filepath.Join(netDir, "10-bridge.conflist")
	writeFile(t, confPath, []byte(fmt.Sprintf(loneConf, filepath.Join(n.dataDir, "ipam-restart"))), 0o600)
	writeFile(t, filepath.Join(netDir, "99-loopback.conflist"), []byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`), 0o644)
	wantNet, wantBin := testutil.DirFiles(t, netDir), testutil.DirFiles(t, binDir)

	health := "127.0.0.1:19103"
	args := installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, health)
	web := n.nodeHTTP()
	ready := func() bool {
		resp, err := web.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	// installed: the conflist made of the .conf has our entry, once, and the .conf is gone.
	installed := func(t *testing.T) []byte {
		t.Helper()
		b, err := os.ReadFile(listPath)
		if err != nil {
			t.Fatal(err)
		}
		chainedAfterBridge(t, b)
		if _, err := os.Stat(confPath); !os.IsNotExist(err) {
			t.Errorf("the .conf is still there (%v): runtimes would read it before the conflist", err)
		}
		return b
	}

	first := startInstallCNI(t, n, args)
	waitFor(t, "the first run ready", ready)
	before := installed(t)
	first.kill(t)
	waitFor(t, "the first run's health server gone", func() bool {
		_, err := web.Get("http://" + health + "/healthz")
		return err != nil
	})
	if !bytes.Equal(readBytes(t, listPath), before) {
		t.Error("the conflist changed when the installer was killed")
	}

	second := startInstallCNI(t, n, args)
	waitFor(t, "the second run ready", ready)
	waitFor(t, "the second run found its entry in place", func() bool {
		return strings.Contains(second.logs.String(), "our entry is in the primary CNI config")
	})
	if after := installed(t); !bytes.Equal(after, before) {
		t.Errorf("the second run rewrote the conflist it found in place:\n%s\nwas:\n%s", after, before)
	}
	second.stop(t)

	if diff := cmp.Diff(wantNet, testutil.DirFiles(t, netDir)); diff != "" {
		t.Errorf("CNI config dir after the restarted installer stopped (-before the first start +after):\n%s", diff)
	}
	if diff := cmp.Diff(wantBin, testutil.DirFiles(t, binDir)); diff != "" {
		t.Errorf("CNI bin dir (-before +after):\n%s", diff)
	}
}

// installCNIProc is a running `shunt install-cni`.
type installCNIProc struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *testutil.LockedBuffer
	done   bool
}

// startInstallCNI starts `shunt install-cni` in node n with args; the test's end kills it if still
// running.
func startInstallCNI(t *testing.T, n *cniNode, args []string) *installCNIProc {
	t.Helper()
	p := &installCNIProc{cmd: n.ns.AgentCommand(args...), exited: make(chan error, 1), logs: &testutil.LockedBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if !p.done {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("install-cni (pid %d) log:\n%s", p.cmd.Process.Pid, tail(p.logs.String(), 60))
		}
	})
	return p
}

// kill ends the installer with SIGKILL, as the node's OOM killer or a crash does: it uninstalls
// nothing.
func (p *installCNIProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("install-cni was not killed: %v", p.cmd.ProcessState)
	}
}

// stop ends the installer with SIGTERM, as the kubelet does, and checks it uninstalled cleanly.
func (p *installCNIProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Errorf("install-cni exit: %v", err)
	}
}

func (p *installCNIProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.exited:
		p.done = true
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("install-cni did not exit within 30s")
		return nil
	}
}

// chainedAfterBridge loads the conflist the installer wrote, as libcni does, and checks that shunt-cni
// follows the bridge plugin.
func chainedAfterBridge(t *testing.T, conflist []byte) *libcni.NetworkConfigList {
	t.Helper()
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		t.Fatalf("the conflist the installer wrote does not load: %v", err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if strings.Join(types, ",") != "bridge,shunt-cni" {
		t.Errorf("plugins %v, want bridge then shunt-cni", types)
	}
	return list
}

func readBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// installerAccess gives the installer the DaemonSet's service account on node n: its RBAC
// (deploy/shunt-cni/templates/clusterrole.yaml, repair mode delete), its token and the cluster CA,
// in files as the kubelet mounts them.
func installerAccess(t *testing.T, n *cniNode) (token, tokenFile, caFile string) {
	t.Helper()
	ctx := context.Background()
	c := n.cluster.Client
	sa := "shunt-cni"
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "delete"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: sa},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kube-system", Name: sa}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token = n.cluster.TokenFor(t, "kube-system", sa)
	secrets := t.TempDir()
	tokenFile, caFile = filepath.Join(secrets, "token"), filepath.Join(secrets, "ca.crt")
	writeFile(t, tokenFile, []byte(token), 0o600)
	writeFile(t, caFile, n.cluster.CAData, 0o644)
	return token, tokenFile, caFile
}

// hostCNIDirs makes the host's CNI bin dir, with the primary plugin's binaries, and config dir.
func hostCNIDirs(t *testing.T) (binDir, netDir string) {
	t.Helper()
	binDir, netDir = t.TempDir(), t.TempDir()
	for _, pkg := range []string{pkgBridge, pkgHostLocal} {
		src := bins.Path(t, pkg)
		if err := os.Symlink(src, filepath.Join(binDir, filepath.Base(src))); err != nil {
			t.Fatal(err)
		}
	}
	return binDir, netDir
}

// createNode registers the node the installer runs on, untainted.
func createNode(t *testing.T, n *cniNode) {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	if _, err := n.cluster.Client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// installCNIArgs is the command line of `shunt install-cni` as the DaemonSet runs it on node n.
func installCNIArgs(t *testing.T, n *cniNode, binDir, netDir, token, tokenFile, caFile, health string) []string {
	t.Helper()
	return []string{bins.Path(t, pkgShunt), "install-cni", "--shim", bins.Path(t, pkgShim),
		"--cni-bin-dir", binDir, "--cni-net-dir", netDir,
		"--kubeconfig-file", filepath.Join(netDir, "shunt-kubeconfig"),
		"--host-kubeconfig-path", filepath.Join(netDir, "shunt-kubeconfig"),
		"--token-file", tokenFile, "--ca-file", caFile, "--api-server", n.cluster.URL,
		"--kubeconfig", n.cluster.KubeconfigFor(t, token),
		"--node-name", nodeName, "--report-socket", filepath.Join(t.TempDir(), "cni.sock"),
		"--cni-log-file", n.logFile, "--cni-log-level", "debug", "--state-dir", filepath.Join(n.dataDir, "pods"),
		"--agent-socket", filepath.Join(n.dataDir, "agent.sock"),
		"--health-addr", health, "--log-format", "json", "--log-level", "debug"}
}

// waitFor polls cond every 50 ms until it holds, failing t after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
