package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"

	"github.com/shuntmesh/shunt/cni/install"
	"github.com/shuntmesh/shunt/command/capture"
)

func nodeWith(name string, conds ...map[string]any) *unstructured.Unstructured {
	list := make([]any, len(conds))
	for i, c := range conds {
		list[i] = c
	}
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": name}, "status": map[string]any{"conditions": list}}}
}

func cond(typ, status, reason, msg string) map[string]any {
	return map[string]any{"type": typ, "status": status, "reason": reason, "message": msg}
}

func driftEvent(ns, pod, name, node, reason string, at time.Time) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"namespace": ns, "name": name},
		"involvedObject": map[string]any{"kind": "Pod", "namespace": ns, "name": pod},
		"reason":         reason, "message": "rules differ", "type": "Warning", "count": int64(1),
		"source":        map[string]any{"component": "shunt-install-cni", "host": node},
		"lastTimestamp": at.UTC().Format(time.RFC3339)}}
}

// TestClusterStatus reads the cluster view from the nodes' conditions and the drift Events: a node
// whose PodsCaptured is False names its pods and fails the command, as does one whose agent is not
// ready; a node without the agent's conditions is listed only; Events older than --since and of other
// reasons are left out.
func TestClusterStatus(t *testing.T) {
	now := time.Now()
	ready := cond(install.NodeConditionType, "True", "PluginInstalled", "installed")
	captured := cond(install.PodsCapturedConditionType, "True", install.ReasonPodsCaptured, "all")
	drifted := cond(install.PodsCapturedConditionType, "False", install.ReasonPodsNotCaptured,
		install.NotCapturedMessage([]string{"shop/cart", "shop/web"}))
	objs := []runtime.Object{
		nodeWith("a-good", ready, captured),
		nodeWith("b-drifted", ready, drifted),
		nodeWith("c-plain", cond("Ready", "True", "KubeletReady", "")),
		driftEvent("shop", "cart", "e1", "b-drifted", "ShuntDrift", now.Add(-time.Minute)),
		driftEvent("shop", "old", "e2", "b-drifted", "ShuntDrift", now.Add(-2*time.Hour)),
		driftEvent("shop", "cart", "e3", "b-drifted", "ShuntRepair", now),
	}
	client := func(objs ...runtime.Object) *dynfake.FakeDynamicClient {
		return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
			nodesResource: "NodeList", eventsResource: "EventList",
		}, objs...)
	}
	ctx := context.Background()

	var out bytes.Buffer
	err := runClusterStatus(ctx, client(objs...), &out, true, time.Hour)
	var ee *capture.ExitError
	if !errors.As(err, &ee) || ee.Code != ExitStatusNotCaptured || !strings.Contains(err.Error(), "1 node(s) report meshed pods not captured") {
		t.Errorf("err = %v, want exit %d for the drifted node", err, ExitStatusNotCaptured)
	}
	var cs ClusterStatus
	if err := json.Unmarshal(out.Bytes(), &cs); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var got []string
	for _, n := range cs.Nodes {
		got = append(got, n.Node+" "+strings.Join(n.NotCaptured, ","))
	}
	if diff := cmp.Diff([]string{"a-good ", "b-drifted shop/cart,shop/web", "c-plain "}, got); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	if cs.Nodes[2].Ready != nil || cs.Nodes[1].PodsCaptured.Reason != install.ReasonPodsNotCaptured {
		t.Errorf("conditions: %+v", cs.Nodes)
	}
	if len(cs.Events) != 1 || cs.Events[0].Pod != "shop/cart" || cs.Events[0].Node != "b-drifted" {
		t.Errorf("events %+v, want the recent ShuntDrift on shop/cart only", cs.Events)
	}

	out.Reset()
	_ = runClusterStatus(ctx, client(objs...), &out, false, time.Hour)
	for _, want := range []string{"b-drifted", "False (PodsNotCaptured)", "shop/cart, shop/web", "no shunt agent", "1 ShuntDrift Event(s)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}

	// An agent not ready fails it too; all good passes.
	notReady := nodeWith("d", cond(install.NodeConditionType, "False", "AgentStopped", "stopped"), captured)
	if err := runClusterStatus(ctx, client(notReady), &out, false, time.Hour); !errors.As(err, &ee) || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("agent not ready: %v", err)
	}
	if err := runClusterStatus(ctx, client(objs[0], objs[2]), &out, false, time.Hour); err != nil {
		t.Errorf("all captured: %v", err)
	}
}
