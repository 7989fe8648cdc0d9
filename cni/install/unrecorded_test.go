package install

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/redirect"
)

// runningPod is a pod as the agent's watch holds it: meshed (istio-proxy and the injector's status
// annotation) unless changed, Running since start.
func runningPod(namespace, name, uid string, start time.Time, change func(o map[string]any)) *unstructured.Unstructured {
	o := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"namespace": namespace, "name": name, "uid": uid,
			"annotations": map[string]any{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}},
		"spec": map[string]any{"containers": []any{
			map[string]any{"name": "app"}, map[string]any{"name": "istio-proxy", "args": []any{"proxy", "sidecar"}},
		}},
		"status": map[string]any{"phase": "Running", "startTime": start.UTC().Format(time.RFC3339)},
	}
	if change != nil {
		change(o)
	}
	return &unstructured.Unstructured{Object: prunedPod(o)}
}

// TestJudgeUnrecorded decides on the pods an agent finds once ready: only a meshed, running pod
// without a record, started after the marker and before readiness, is repaired; one started before the
// marker (or with no marker: an upgrade from a release whose plugin wrote no records) is of unknown
// capture state; everything the plugin would not capture is left alone.
func TestJudgeUnrecorded(t *testing.T) {
	since := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	ready := since.Add(time.Hour)
	between := since.Add(30 * time.Minute)
	tests := []struct {
		name     string
		pod      *unstructured.Unstructured
		since    time.Time // zero: no marker
		recorded bool
		want     unrecordedVerdict
		why      string
	}{
		{name: "started without the plugin", pod: runningPod("shop", "a", "u1", between, nil), want: unrecordedRepair, why: "without the plugin"},
		{name: "recorded", pod: runningPod("shop", "a", "u1", between, nil), recorded: true, want: unrecordedSkip, why: "recorded"},
		{name: "before the marker", pod: runningPod("shop", "a", "u1", since.Add(-time.Minute), nil), want: unrecordedUnknown, why: "before the plugin recorded pods"},
		{name: "at the marker's second", pod: runningPod("shop", "a", "u1", since, nil), want: unrecordedUnknown},
		{name: "no marker (upgrade)", pod: runningPod("shop", "a", "u1", between, nil), since: time.Time{}, want: unrecordedUnknown, why: "since never"},
		{name: "after readiness", pod: runningPod("shop", "a", "u1", ready, nil), want: unrecordedSkip, why: "after the plugin was ready"},
		{name: "not running", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["status"].(map[string]any)["phase"] = "Pending"
		}), want: unrecordedSkip, why: "not running"},
		{name: "no start time", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			delete(o["status"].(map[string]any), "startTime")
		}), want: unrecordedSkip, why: "no start time"},
		{name: "terminating", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["metadata"].(map[string]any)["deletionTimestamp"] = ready.Format(time.RFC3339)
		}), want: unrecordedSkip, why: "terminating"},
		{name: "excluded namespace", pod: runningPod("kube-system", "a", "u1", between, nil), want: unrecordedSkip, why: "excluded"},
		{name: "host network", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["spec"].(map[string]any)["hostNetwork"] = true
		}), want: unrecordedSkip, why: "host network"},
		{name: "not injected", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["metadata"].(map[string]any)["annotations"] = map[string]any{}
		}), want: unrecordedSkip, why: "not injected"},
		{name: "gateway", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["spec"].(map[string]any)["containers"] = []any{map[string]any{"name": "istio-proxy", "args": []any{"proxy", "router"}}}
		}), want: unrecordedSkip, why: "gateway"},
		{name: "settings the plugin refuses", pod: runningPod("shop", "a", "u1", between, func(o map[string]any) {
			o["metadata"].(map[string]any)["annotations"].(map[string]any)["traffic.sidecar.istio.io/excludeOutboundPorts"] = "http"
		}), want: unrecordedSkip, why: "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := since
			if strings.Contains(tt.name, "no marker") {
				s = tt.since
			}
			f := unrecordedFacts{exclude: []string{"kube-system"}, since: s, ready: ready,
				recorded: func(types.UID, string, string) bool { return tt.recorded }}
			got, why := judgeUnrecorded(tt.pod, f)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("judgeUnrecorded = %d %q, want %d (%q)", got, why, tt.want, tt.why)
			}
		})
	}
}

// TestUnrecordedRepair runs the repair loop (label mode) with a marker from an earlier run: the meshed
// pod that started between the marker and readiness without a record is labeled, with an Event, and
// named as not captured until it is gone; the recorded one and the one older than the marker are not
// (the latter counted unknown).
func TestUnrecordedRepair(t *testing.T) {
	ready := time.Now().Add(-time.Minute).Truncate(time.Second)
	since := ready.Add(-time.Hour)
	store := podstate.Store{Dir: t.TempDir()}
	if _, err := store.MarkRecording(since); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(podstate.Record{ContainerID: "c1", NetNS: "/run/netns/x", Namespace: "shop", Name: "recorded", UID: "u2",
		Backend: "nftables", Config: redirect.DefaultConfig()}); err != nil {
		t.Fatal(err)
	}
	c := newFakeClient(
		runningPod("shop", "early", "u1", ready.Add(-time.Minute), nil),
		runningPod("shop", "recorded", "u2", ready.Add(-time.Minute), nil),
		runningPod("shop", "legacy", "u3", since.Add(-time.Minute), nil),
	)
	m := newMetrics()
	r := newRepairer(c, "n", RepairConfig{Mode: RepairLabel, LabelKey: DefaultRepairLabelKey}, slog.New(slog.DiscardHandler), m)
	u := &unrecorded{store: store, repair: r, log: slog.New(slog.DiscardHandler), metrics: m,
		unknown: map[types.UID]bool{}, notCaptured: map[types.UID]string{}}
	r.unrecorded = u
	r.pods = newNodePods(c, "n", slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.pods.run(ctx) })
	wg.Go(func() { r.run(ctx) })
	wg.Go(func() { u.start(ctx, ready, time.Millisecond, r.pods) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	waitFor(t, "a pod labeled", func() bool { return len(actions(c, "patch", "pods")) >= 1 })
	waitFor(t, "the unknown pod counted", func() bool { return promtest.ToFloat64(m.captureUnknown) == 1 })
	if diff := cmp.Diff([]string{"shop/early"}, names(actions(c, "patch", "pods"))); diff != "" {
		t.Errorf("labeled (-want +got):\n%s", diff)
	}
	events := repairEvents(t, c)
	if len(events) != 1 || !strings.Contains(events[0], "before the node agent was ready") {
		t.Errorf("events %q, want one saying the pod started before the agent was ready", events)
	}
	if diff := cmp.Diff([]string{"shop/early"}, u.pods()); diff != "" {
		t.Errorf("not captured (-want +got):\n%s", diff)
	}
	// Gone: no longer named.
	if err := c.Resource(podsResource).Namespace("shop").Delete(ctx, "early", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted pod forgotten", func() bool { return len(u.pods()) == 0 })
}

// TestUnrecordedUpgrade: with no marker (the node's plugin wrote no records), the agent writes one at
// readiness and repairs none of the pods already running.
func TestUnrecordedUpgrade(t *testing.T) {
	ready := time.Now()
	store := podstate.Store{Dir: t.TempDir()}
	c := newFakeClient(runningPod("shop", "old", "u1", ready.Add(-time.Minute), nil))
	m := newMetrics()
	r := newRepairer(c, "n", RepairConfig{Mode: RepairDelete}, slog.New(slog.DiscardHandler), m)
	u := &unrecorded{store: store, repair: r, log: slog.New(slog.DiscardHandler), metrics: m,
		unknown: map[types.UID]bool{}, notCaptured: map[types.UID]string{}}
	pods := newNodePods(c, "n", slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { pods.run(ctx) })
	wg.Go(func() { u.start(ctx, ready, time.Millisecond, pods) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, "the pod of unknown capture state counted", func() bool { return promtest.ToFloat64(m.captureUnknown) == 1 })
	if since, ok, err := store.RecordingSince(); !ok || err != nil || !since.Equal(ready) {
		t.Errorf("marker %v %v %v, want the readiness time %v", since, ok, err, ready)
	}
	if got := actions(c, "delete", "pods"); len(got) != 0 {
		t.Errorf("deleted %v on an upgrade", names(got))
	}
}

func TestNotCapturedMessage(t *testing.T) {
	var many []string
	for i := range 25 {
		many = append(many, "shop/p"+string(rune('a'+i)))
	}
	tests := []struct {
		pods      []string
		want      string
		wantPods  []string
		wantExtra int
	}{
		{pods: []string{"shop/web", "shop/cart", "shop/web"}, want: "2 meshed pod(s) not captured: shop/cart, shop/web", wantPods: []string{"shop/cart", "shop/web"}},
		{pods: many, want: "25 meshed pod(s) not captured: " + strings.Join(many[:20], ", ") + " and 5 more", wantPods: many[:20], wantExtra: 5},
	}
	for _, tt := range tests {
		got := NotCapturedMessage(tt.pods)
		if got != tt.want {
			t.Errorf("NotCapturedMessage(%q) =\n%q\nwant\n%q", tt.pods, got, tt.want)
		}
		pods, more := ParseNotCaptured(got)
		if diff := cmp.Diff(tt.wantPods, pods); diff != "" || more != tt.wantExtra {
			t.Errorf("ParseNotCaptured: more %d (want %d), pods (-want +got):\n%s", more, tt.wantExtra, diff)
		}
	}
	if pods, more := ParseNotCaptured(capturedMessage); pods != nil || more != 0 {
		t.Errorf("ParseNotCaptured(the True message) = %q, %d", pods, more)
	}
}

// TestCapturedCondition: the condition after an audit names the drifted and unreadable pods and the
// pods without rules; captured and repaired pods are captured. It is patched only when it changes.
func TestCapturedCondition(t *testing.T) {
	sts := []podstate.Status{
		{Pod: "shop/a", State: podstate.Captured}, {Pod: "shop/b", State: podstate.Drifted},
		{Pod: "shop/c", State: podstate.Repaired}, {Pod: "shop/d", State: podstate.Unknown},
	}
	got := capturedCondition(sts, []string{"shop/e"})
	want := nodeCondition{Type: PodsCapturedConditionType, Status: "False", Reason: ReasonPodsNotCaptured,
		Message: "3 meshed pod(s) not captured: shop/b, shop/d, shop/e"}
	if got != want {
		t.Errorf("capturedCondition = %+v, want %+v", got, want)
	}
	if got := capturedCondition(sts[:1], nil); got.Status != "True" || got.Reason != ReasonPodsCaptured {
		t.Errorf("all captured: %+v", got)
	}

	c := newFakeClient(node("n"))
	a := &auditor{client: c, node: "n", log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	a.publishCaptured(ctx, sts)
	a.publishCaptured(ctx, sts)
	a.publishCaptured(ctx, sts[:1])
	if got := len(actions(c, "patch", "nodes")); got != 2 {
		t.Errorf("%d patches of the node, want 2 (one per change)", got)
	}
	patches := actions(c, "patch", "nodes")
	last := string(patches[len(patches)-1].(k8stesting.PatchAction).GetPatch())
	if !strings.Contains(last, `"status":"True"`) || !strings.Contains(last, `"type":"`+PodsCapturedConditionType+`"`) ||
		patches[0].GetSubresource() != "status" {
		t.Errorf("last patch %s of %s, want the condition True on the status", last, patches[0].GetSubresource())
	}
}
