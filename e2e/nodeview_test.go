//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeCondition returns node's condition of type typ, or nil.
func nodeCondition(t *testing.T, n *cniNode, typ string) *corev1.NodeCondition {
	t.Helper()
	node, err := n.cluster.Client.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	for i := range node.Status.Conditions {
		if string(node.Status.Conditions[i].Type) == typ {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// waitReadyz waits for the agent's /readyz on health to answer 200.
func waitReadyz(t *testing.T, n *cniNode, health string) {
	t.Helper()
	web := n.nodeHTTP()
	waitFor(t, "/readyz 200", func() bool {
		resp, err := web.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// clusterStatus runs `shunt status --cluster` with the admin's kubeconfig, from the node's network
// namespace (where the API server listens), and returns its output and exit code.
func clusterStatus(t *testing.T, n *cniNode, args ...string) (string, int) {
	t.Helper()
	cmd := n.ns.AgentCommand(append([]string{bins.Path(t, pkgShunt), "status", "--cluster", "--kubeconfig", n.cluster.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := exitCode(err)
	if code != 0 && code != 2 {
		t.Fatalf("shunt status --cluster: exit %d: %v\n%s", code, err, stderr.String())
	}
	return string(out), code
}

// TestClusterView runs the node agent with --drift-repair off against a real kube-apiserver: once a
// meshed pod's rules drift behind its back, the node's cni.shunt.io/PodsCaptured condition goes False
// naming the pod, and `shunt status --cluster` exits 2 naming it with the agent's ShuntDrift Event;
// with the rules put back by hand the condition is True again and the command exits 0; once the agent
// stops, the command exits 2 again (the agent is not ready) and PodsCaptured is Unknown.
func TestClusterView(t *testing.T) {
	n := newCNINode(t)
	ctx := context.Background()
	token, tokenFile, caFile := installerAccess(t, n)
	createNode(t, n)
	binDir, netDir := hostCNIDirs(t)
	writeFile(t, filepath.Join(netDir, "10-bridge.conflist"),
		[]byte(fmt.Sprintf(primaryConflist, filepath.Join(n.dataDir, "ipam-view"))), 0o644)
	health := "127.0.0.1:19106"
	agent := startInstallCNI(t, n, append(installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, health),
		"--drift-repair", "off", "--audit-interval", "1s"))
	waitReadyz(t, n, health)
	list, err := libcni.LoadConfList(netDir, "k8s-pod-network")
	if err != nil {
		t.Fatal(err)
	}
	chainedAfterBridge(t, list.Bytes)
	meshed := n.podSandbox(t, meshedPod("shop", "drifting", nil))
	cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(n.dataDir, "cache-view"), nil)
	if err := n.inNode(t, func() error {
		_, err := cfg.AddNetworkList(ctx, list, meshed.runtimeConf())
		return err
	}); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	captured := func(status corev1.ConditionStatus, msg string) func() bool {
		return func() bool {
			c := nodeCondition(t, n, "cni.shunt.io/PodsCaptured")
			return c != nil && c.Status == status && strings.Contains(c.Message, msg)
		}
	}
	waitFor(t, "PodsCaptured True", captured(corev1.ConditionTrue, ""))
	if out, code := clusterStatus(t, n); code != 0 || !strings.Contains(out, nodeName) || !strings.Contains(out, "True (PodsCaptured)") {
		t.Errorf("every pod captured: exit %d, want 0:\n%s", code, out)
	}

	saved := meshed.ns.Run(t, "iptables-nft-save", "-t", "nat")
	meshed.ns.Run(t, "iptables-nft", "-t", "nat", "-F", "ISTIO_OUTPUT")
	waitFor(t, "PodsCaptured False naming the pod", captured(corev1.ConditionFalse, "1 meshed pod(s) not captured: shop/drifting"))
	if c := nodeCondition(t, n, "cni.shunt.io/PodsCaptured"); c.Reason != "PodsNotCaptured" || c.LastTransitionTime.IsZero() {
		t.Errorf("condition %+v", c)
	}
	waitFor(t, "the ShuntDrift event", func() bool {
		evs, err := n.cluster.Client.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "reason=ShuntDrift"})
		return err == nil && len(evs.Items) > 0
	})
	out, code := clusterStatus(t, n, "--json")
	var view struct {
		Nodes []struct {
			Node         string
			Ready        struct{ Status string }
			PodsCaptured struct{ Status, Reason string } `json:"pods_captured"`
			NotCaptured  []string                        `json:"not_captured"`
		}
		Events []struct{ Pod, Node, Message string }
	}
	if err := json.Unmarshal([]byte(out), &view); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if code != 2 || len(view.Nodes) != 1 || view.Nodes[0].Ready.Status != "True" || view.Nodes[0].PodsCaptured.Status != "False" ||
		!slices.Equal(view.Nodes[0].NotCaptured, []string{"shop/drifting"}) {
		t.Errorf("drifted: exit %d (want 2), view %+v", code, view.Nodes)
	}
	if len(view.Events) == 0 || view.Events[0].Pod != "shop/drifting" || view.Events[0].Node != nodeName ||
		!strings.Contains(view.Events[0].Message, "left them (drift repair off)") {
		t.Errorf("events %+v, want the agent's ShuntDrift on shop/drifting", view.Events)
	}
	if out, code := clusterStatus(t, n); code != 2 || !strings.Contains(out, "shop/drifting") || !strings.Contains(out, "False (PodsNotCaptured)") {
		t.Errorf("drifted, as a table: exit %d:\n%s", code, out)
	} else {
		t.Logf("shunt status --cluster:\n%s", out)
	}

	// Put back by hand (the agent repairs nothing here).
	restore := meshed.ns.Command(nil, "iptables-nft-restore")
	restore.Stdin = strings.NewReader(saved)
	if b, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("iptables-nft-restore: %v\n%s", err, b)
	}
	waitFor(t, "PodsCaptured True again", captured(corev1.ConditionTrue, ""))
	if out, code := clusterStatus(t, n); code != 0 {
		t.Errorf("repaired: exit %d, want 0:\n%s", code, out)
	}

	agent.stop(t)
	if c := nodeCondition(t, n, "cni.shunt.io/PodsCaptured"); c == nil || c.Status != corev1.ConditionUnknown || c.Reason != "AgentStopped" {
		t.Errorf("PodsCaptured after the agent stopped: %+v, want Unknown AgentStopped", c)
	}
	if out, code := clusterStatus(t, n); code != 2 || !strings.Contains(out, "False (AgentStopped)") {
		t.Errorf("agent stopped: exit %d, want 2:\n%s", code, out)
	}
}

// TestRepairPodsStartedWithoutPlugin stops the node agent — its plugin uninstalled — and starts pods
// meanwhile (created, ADDed with the primary network alone: no rules, no record, Running): the agent,
// started again, deletes the meshed one (its marker, from the first run, is older than the pod) and
// leaves the unmeshed one. With no marker — a node whose plugin wrote no records, before an upgrade —
// a meshed pod started the same way is reported of unknown capture state and left alone.
func TestRepairPodsStartedWithoutPlugin(t *testing.T) {
	n := newCNINode(t)
	ctx := context.Background()
	c := n.cluster.Client
	token, tokenFile, caFile := installerAccess(t, n)
	createNode(t, n)
	binDir, netDir := hostCNIDirs(t)
	writeFile(t, filepath.Join(netDir, "10-bridge.conflist"),
		[]byte(fmt.Sprintf(primaryConflist, filepath.Join(n.dataDir, "ipam-early"))), 0o644)
	health := "127.0.0.1:19107"
	args := append(installCNIArgs(t, n, binDir, netDir, token, tokenFile, caFile, health), "--repair-grace", "1s")
	marker := filepath.Join(n.dataDir, "pods", ".recording-since")

	first := startInstallCNI(t, n, args)
	waitReadyz(t, n, health)
	waitFor(t, "the state directory's marker", func() bool { _, err := os.Stat(marker); return err == nil })
	first.stop(t)
	time.Sleep(1100 * time.Millisecond) // pods' start times are whole seconds: after the marker's

	cache := filepath.Join(n.dataDir, "cache-early")
	// startedWithout creates pod, ADDs it with the node's CNI config as it is (the primary network
	// alone) and marks it Running, as its kubelet would.
	startedWithout := func(t *testing.T, pod *corev1.Pod) *cniPod {
		t.Helper()
		list, err := libcni.LoadConfList(netDir, "k8s-pod-network")
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Plugins) != 1 {
			t.Fatalf("the node's CNI config has %d plugins, want the primary alone", len(list.Plugins))
		}
		p := n.podSandbox(t, pod)
		cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cache, nil)
		if err := n.inNode(t, func() error {
			_, err := cfg.AddNetworkList(ctx, list, p.runtimeConf())
			return err
		}); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if rules := ourRules(save(t, p.ns, false)); rules != "" {
			t.Fatalf("rules in a pod started without the plugin:\n%s", rules)
		}
		got, err := c.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got.Status.Phase = corev1.PodRunning
		got.Status.StartTime = &metav1.Time{Time: time.Now()}
		if _, err := c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	deleted := func(name string) bool {
		p, err := c.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		return err != nil || p.DeletionTimestamp != nil // no kubelet: the pod stays, terminating
	}
	startedWithout(t, meshedPod("shop", "early", nil))
	startedWithout(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "plain"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}})

	t.Run("repaired", func(t *testing.T) {
		second := startInstallCNI(t, n, args)
		waitFor(t, "the meshed pod started without the plugin deleted", func() bool { return deleted("early") })
		waitFor(t, "a ShuntRepair event on it", func() bool {
			evs, err := c.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=early"})
			if err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Reason == "ShuntRepair" && strings.Contains(e.Message, "before the node agent was ready") {
					return true
				}
			}
			return false
		})
		time.Sleep(time.Second)
		if deleted("plain") {
			t.Error("the unmeshed pod was deleted")
		}
		second.stop(t)
	})

	t.Run("upgrade_not_repaired", func(t *testing.T) {
		time.Sleep(1100 * time.Millisecond)
		startedWithout(t, meshedPod("shop", "legacy", nil))
		if err := os.Remove(marker); err != nil {
			t.Fatal(err)
		}
		third := startInstallCNI(t, n, args)
		waitReadyz(t, n, health)
		waitFor(t, "the pod reported of unknown capture state", func() bool {
			return strings.Contains(third.logs.String(), `"msg":"meshed pod of unknown capture state, not repaired","namespace":"shop","pod":"legacy"`)
		})
		resp, err := n.nodeHTTP().Get("http://" + health + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(metrics), "shunt_cni_pods_capture_unknown 1") {
			t.Errorf("metrics (%v): %s", err, grepLines(string(metrics), "shunt_cni_pods_capture_unknown"))
		}
		time.Sleep(2 * time.Second)
		if deleted("legacy") {
			t.Error("a pod of unknown capture state was deleted")
		}
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("the agent wrote no new marker: %v", err)
		}
		third.stop(t)
	})
}
