package install

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/shuntmesh/shunt/cni"
)

func newFakeClient(objs ...runtime.Object) *dynfake.FakeDynamicClient {
	return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		podsResource:   "PodList",
		nodesResource:  "NodeList",
		eventsResource: "EventList",
	}, objs...)
}

func taint(key, effect string) map[string]any {
	return map[string]any{"key": key, "effect": effect}
}

func node(name string, taints ...map[string]any) *unstructured.Unstructured {
	n := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": name}}}
	if taints != nil {
		list := make([]any, len(taints))
		for i, t := range taints {
			list[i] = t
		}
		n.Object["spec"] = map[string]any{"taints": list}
	}
	return n
}

// actions returns the client's actions of verb on resource.
func actions(c *dynfake.FakeDynamicClient, verb, resource string) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range c.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			out = append(out, a)
		}
	}
	return out
}

func TestRemoveTaint(t *testing.T) {
	ours := taint(DefaultTaintKey, "NoSchedule")
	other := taint("node.kubernetes.io/not-ready", "NoExecute")
	tests := []struct {
		name        string
		node        *unstructured.Unstructured
		conflicts   int // patches that fail with a conflict first
		wantRemoved bool
		wantTaints  []any // nil: spec.taints absent
		wantPatches int
	}{
		{name: "ours and another", node: node("n", ours, other), wantRemoved: true, wantTaints: []any{other}, wantPatches: 1},
		{name: "only ours", node: node("n", ours), wantRemoved: true, wantPatches: 1},
		{name: "absent", node: node("n", other), wantTaints: []any{other}},
		{name: "no taints", node: node("n")},
		{name: "our key, another effect", node: node("n", taint(DefaultTaintKey, "NoExecute")),
			wantTaints: []any{taint(DefaultTaintKey, "NoExecute")}},
		{name: "conflicts", node: node("n", other, ours), conflicts: 2, wantRemoved: true, wantTaints: []any{other}, wantPatches: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClient(tt.node)
			failures := tt.conflicts
			c.PrependReactor("patch", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
				if failures > 0 {
					failures--
					return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "nodes"}, "n", fmt.Errorf("taints changed"))
				}
				return false, nil, nil
			})
			removed, err := removeTaint(context.Background(), c, "n", DefaultTaintKey)
			if err != nil {
				t.Fatal(err)
			}
			if removed != tt.wantRemoved {
				t.Errorf("removed = %v, want %v", removed, tt.wantRemoved)
			}
			got, err := c.Resource(nodesResource).Get(context.Background(), "n", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			taints, _, _ := unstructured.NestedSlice(got.Object, "spec", "taints")
			if diff := cmp.Diff(tt.wantTaints, taints); diff != "" {
				t.Errorf("taints (-want +got):\n%s", diff)
			}
			patches := actions(c, "patch", "nodes")
			if len(patches) != tt.wantPatches {
				t.Fatalf("%d patches, want %d", len(patches), tt.wantPatches)
			}
			for _, a := range patches {
				p := a.(k8stesting.PatchAction)
				if p.GetPatchType() != types.JSONPatchType {
					t.Errorf("patch type %s, want a JSON patch", p.GetPatchType())
				}
				var ops []map[string]any
				if err := json.Unmarshal(p.GetPatch(), &ops); err != nil {
					t.Fatal(err)
				}
				if len(ops) < 2 || ops[0]["op"] != "test" || ops[0]["path"] != "/spec/taints" {
					t.Errorf("patch does not test the taints it read first: %s", p.GetPatch())
				}
			}
		})
	}
}

func TestRemoveTaintGivesUp(t *testing.T) {
	c := newFakeClient(node("n", taint(DefaultTaintKey, "NoSchedule")))
	c.PrependReactor("patch", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Node"}, "n", nil)
	})
	if _, err := removeTaint(context.Background(), c, "n", DefaultTaintKey); err == nil {
		t.Fatal("no error after endless conflicts")
	}
	if _, err := removeTaint(context.Background(), c, "missing", DefaultTaintKey); !apierrors.IsNotFound(err) {
		t.Errorf("missing node: error %v, want NotFound", err)
	}
}

// pod is a Pod on node "n" whose init container ic has the given state and last state exit codes
// (-1: none).
func pod(ns, name, uid, ic string, state, last int64) *unstructured.Unstructured {
	st := map[string]any{"name": ic}
	if state >= 0 {
		st["state"] = map[string]any{"terminated": map[string]any{"exitCode": state}}
	} else {
		st["state"] = map[string]any{"running": map[string]any{}}
	}
	if last >= 0 {
		st["lastState"] = map[string]any{"terminated": map[string]any{"exitCode": last}}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"namespace": ns, "name": name, "uid": uid},
		"spec":     map[string]any{"nodeName": "n"},
		"status":   map[string]any{"initContainerStatuses": []any{st}},
	}}
}

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// startRepair runs a repairer over c until the test ends, and waits for its watch.
func startRepair(t *testing.T, c *dynfake.FakeDynamicClient, cfg RepairConfig) *repairer {
	t.Helper()
	r := newRepairer(c, "n", cfg, slog.New(slog.DiscardHandler), newMetrics())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	// The list is handled before the watch starts.
	waitFor(t, "the pod watch", func() bool { return len(actions(c, "watch", "pods")) > 0 })
	return r
}

func names(acts []k8stesting.Action) []string {
	var out []string
	for _, a := range acts {
		switch a := a.(type) {
		case k8stesting.DeleteAction:
			out = append(out, a.GetNamespace()+"/"+a.GetName())
		case k8stesting.PatchAction:
			out = append(out, a.GetNamespace()+"/"+a.GetName())
		}
	}
	return out
}

// repairEvents returns the ShuntRepair events, as "namespace/pod: message".
func repairEvents(t *testing.T, c *dynfake.FakeDynamicClient) []string {
	t.Helper()
	list, err := c.Resource(eventsResource).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		o := e.Object
		name, _, _ := unstructured.NestedString(o, "involvedObject", "name")
		kind, _, _ := unstructured.NestedString(o, "involvedObject", "kind")
		if o["reason"] != repairEventReason || o["type"] != "Warning" || kind != "Pod" {
			t.Errorf("event %v", o)
		}
		out = append(out, e.GetNamespace()+"/"+name+": "+o["message"].(string))
	}
	return out
}

func TestRepairDeletes(t *testing.T) {
	deleting := pod("a", "deleting", "u5", "istio-validation", 126, -1)
	now := metav1.Now()
	deleting.SetDeletionTimestamp(&now)
	c := newFakeClient(
		pod("a", "failed", "u1", "istio-validation", 126, -1),
		pod("b", "failed-before", "u2", "istio-validation", -1, 126),
		pod("a", "ok", "u3", "istio-validation", 0, -1),
		pod("a", "other-code", "u4", "istio-validation", 1, 1),
		deleting,
		pod("a", "other-container", "u6", "istio-init", 126, -1),
	)
	r := startRepair(t, c, RepairConfig{Mode: RepairDelete, InitContainer: "istio-validation", ExitCode: 126})

	// Pods seen by the watch, and a failed CHECK reported by the plugin.
	if _, err := c.Resource(podsResource).Namespace("c").Create(context.Background(),
		pod("c", "later", "u7", "istio-validation", 126, -1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.checkFailed(cni.Report{Command: "CHECK", Namespace: "a", Name: "ok", UID: "u3", Outcome: cni.OutcomeCheckFailed, Reason: "chain ISTIO_OUTPUT differs"})
	r.checkFailed(cni.Report{Command: "CHECK", Namespace: "a", Name: "other-code", UID: "stale-uid", Outcome: cni.OutcomeCheckFailed})
	waitFor(t, "four pods deleted", func() bool { return len(actions(c, "delete", "pods")) >= 4 })
	waitFor(t, "four events", func() bool { return len(actions(c, "create", "events")) >= 4 })

	got := names(actions(c, "delete", "pods"))
	want := []string{"a/failed", "b/failed-before", "c/later", "a/ok"}
	if diff := cmp.Diff(want, got, sortStrings); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
	events := repairEvents(t, c)
	if len(events) != 4 {
		t.Fatalf("events: %q", events)
	}
	for _, e := range events {
		if !strings.Contains(e, "shunt deleted the pod") {
			t.Errorf("event %q does not say what was done", e)
		}
		if strings.HasPrefix(e, "a/ok:") != strings.Contains(e, "CHECK found its capture rules missing or different (chain ISTIO_OUTPUT differs)") {
			t.Errorf("event %q does not say why", e)
		}
		if !strings.HasPrefix(e, "a/ok:") && !strings.Contains(e, "init container istio-validation exited with code 126") {
			t.Errorf("event %q does not say why", e)
		}
	}
	if got := counterValue(t, r.metrics.repairs.WithLabelValues(RepairDelete)); got != 4 {
		t.Errorf("shunt_cni_repairs_total{action=delete} = %v, want 4", got)
	}
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestRepairLabelsOnce(t *testing.T) {
	c := newFakeClient(pod("a", "failed", "u1", "istio-validation", 126, -1))
	r := startRepair(t, c, RepairConfig{Mode: RepairLabel, LabelKey: "example.com/fix", InitContainer: "istio-validation", ExitCode: 126})
	waitFor(t, "the pod labeled", func() bool { return len(actions(c, "patch", "pods")) == 1 })
	pods := c.Resource(podsResource).Namespace("a")
	p, err := pods.Get(context.Background(), "failed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.GetLabels()["example.com/fix"]; got != "needed" {
		t.Errorf("label = %q, want needed", got)
	}
	// Someone takes the label off and the pod changes: it is not labeled again (same UID).
	p.SetLabels(nil)
	p.SetAnnotations(map[string]string{"changed": "yes"})
	if _, err := pods.Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A second failed pod: once it is labeled, the watch has handled the update before it.
	if _, err := pods.Create(context.Background(), pod("a", "second", "u2", "istio-validation", 126, -1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second pod labeled", func() bool { return len(actions(c, "patch", "pods")) >= 2 })
	if diff := cmp.Diff([]string{"a/failed", "a/second"}, names(actions(c, "patch", "pods"))); diff != "" {
		t.Errorf("labeled (-want +got):\n%s", diff)
	}
	if n := len(actions(c, "delete", "pods")); n != 0 {
		t.Errorf("%d pods deleted in label mode", n)
	}
	waitFor(t, "two events", func() bool { return len(actions(c, "create", "events")) == 2 })
	for _, e := range repairEvents(t, c) {
		if !strings.Contains(e, "shunt labeled the pod example.com/fix=needed") {
			t.Errorf("event %q does not say what was done", e)
		}
	}
	if got := counterValue(t, r.metrics.repairs.WithLabelValues(RepairLabel)); got != 2 {
		t.Errorf("shunt_cni_repairs_total{action=label} = %v, want 2", got)
	}
}

func TestInstallerRemovesTaintWhenReady(t *testing.T) {
	n, cfg := newTestNode(t)
	c := newFakeClient(node("node-1", taint(DefaultTaintKey, "NoSchedule")))
	cfg.Client, cfg.NodeName, cfg.Repair.Mode = c, "node-1", RepairOff
	in, _ := start(t, cfg)
	if len(actions(c, "patch", "nodes")) != 0 {
		t.Fatal("taint patched before the plugin is installed")
	}
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	waitReady(t, in)
	waitFor(t, "the taint is removed", func() bool {
		got, err := c.Resource(nodesResource).Get(context.Background(), "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		taints, _, _ := unstructured.NestedSlice(got.Object, "spec", "taints")
		return len(taints) == 0
	})
	waitFor(t, "the log says so", func() bool { return strings.Contains(n.log.String(), "removed the node's startup taint") })
}

func TestInstallerRepairsOnFailedCheckReport(t *testing.T) {
	n, cfg := newTestNode(t)
	c := newFakeClient(node("n"), pod("a", "p", "u1", "istio-validation", -1, -1))
	cfg.Client, cfg.NodeName = c, "n"
	in, _ := start(t, cfg)
	writeFile(t, n.path("10-calico.conflist"), calicoConflist, 0o644)
	waitReady(t, in)
	if err := cni.SendReport(n.socket, cni.Report{Command: "CHECK", Namespace: "a", Name: "p", UID: "u1", Outcome: cni.OutcomeCheckFailed}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pod is deleted", func() bool { return len(actions(c, "delete", "pods")) == 1 })
}
