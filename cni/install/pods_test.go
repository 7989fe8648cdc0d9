package install

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/shuntmesh/shunt/cni"
)

// fullPod is a meshed pod of node "n" as the API server serves it, with what the agent drops.
func fullPod(ns, name, uid string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{
			"namespace": ns, "name": name, "uid": uid, "resourceVersion": "7",
			"labels":        map[string]any{"app": "cart"},
			"annotations":   map[string]any{"sidecar.istio.io/status": "{}"},
			"managedFields": []any{map[string]any{"manager": "kubectl", "fieldsV1": map[string]any{"f:spec": map[string]any{}}}},
		},
		"spec": map[string]any{
			"nodeName": "n",
			"volumes":  []any{map[string]any{"name": "token"}},
			"containers": []any{
				map[string]any{"name": "app", "image": "app:1", "resources": map[string]any{}},
				map[string]any{"name": "istio-proxy", "image": "proxy:1", "args": []any{"proxy", "sidecar"},
					"env":             []any{map[string]any{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}},
					"securityContext": map[string]any{"runAsUser": int64(1337)}},
			},
		},
		"status": map[string]any{
			"phase":      "Pending",
			"conditions": []any{map[string]any{"type": "PodScheduled", "status": "True"}},
			"podIPs":     []any{map[string]any{"ip": "10.1.0.5"}},
		},
	}}
}

func TestPrunePod(t *testing.T) {
	got, err := prunePod(fullPod("shop", "cart-1", "u1"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{
			"namespace": "shop", "name": "cart-1", "uid": "u1", "resourceVersion": "7",
			"labels":      map[string]any{"app": "cart"},
			"annotations": map[string]any{"sidecar.istio.io/status": "{}"},
		},
		"spec": map[string]any{
			"containers": []any{
				map[string]any{"name": "app"},
				map[string]any{"name": "istio-proxy", "args": []any{"proxy", "sidecar"},
					"env":             []any{map[string]any{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}},
					"securityContext": map[string]any{"runAsUser": int64(1337)}},
			},
			"initContainers": []any{},
		},
		"status": map[string]any{"podIPs": []any{map[string]any{"ip": "10.1.0.5"}}, "initContainerStatuses": []any{}, "phase": "Pending"},
	}
	if diff := cmp.Diff(want, got.(*unstructured.Unstructured).Object); diff != "" {
		t.Errorf("pruned pod (-want +got):\n%s", diff)
	}
	// The repair loop reads the validation container's exit code from what is kept.
	p, _ := prunePod(pod("a", "failed", "u1", "istio-validation", 126, -1))
	if why := validationFailure(p.(*unstructured.Unstructured).Object, "istio-validation", 126); why == "" {
		t.Error("the pruned pod lost its init container's exit code")
	}
}

// startNodePods runs the agent's watch over c until the test ends and waits for it to sync.
func startNodePods(t *testing.T, c *dynfake.FakeDynamicClient) (*nodePods, *metrics) {
	t.Helper()
	m := newMetrics()
	p := newNodePods(c, "n", slog.New(slog.DiscardHandler), m)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, "the watch synced", p.informer.HasSynced)
	return p, m
}

// askAgent asks the agent's handler for namespace/name with uid.
func askAgent(t *testing.T, h http.Handler, namespace, name, uid string) (int, *cni.Pod) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/pods/"+namespace+"/"+name+"?uid="+uid, nil))
	if rec.Code != http.StatusOK {
		return rec.Code, nil
	}
	var pod cni.Pod
	if err := json.Unmarshal(rec.Body.Bytes(), &pod); err != nil {
		t.Fatal(err)
	}
	return rec.Code, &pod
}

// TestAgentServesPods: the agent answers from its watch with no API request; a pod it does not hold,
// or holds with another uid, it reads from the API server; a pod that does not exist is a 404.
func TestAgentServesPods(t *testing.T) {
	c := newFakeClient(fullPod("shop", "cart-1", "u1"))
	p, m := startNodePods(t, c)
	h := p.handler()
	gets := func() int { return len(actions(c, "get", "pods")) }

	code, got := askAgent(t, h, "shop", "cart-1", "u1")
	if code != http.StatusOK || got.Metadata.Name != "cart-1" || got.Metadata.Annotations["sidecar.istio.io/status"] != "{}" ||
		len(got.Spec.Containers) != 2 || got.Spec.Containers[1].SecurityContext == nil || len(got.Status.PodIPs) != 1 {
		t.Errorf("answer %d %+v, want the pod as the plugin reads it", code, got)
	}
	if gets() != 0 {
		t.Errorf("%d API reads for a pod the watch holds", gets())
	}

	// Created behind the watch's back (a reactor answers the GET, the watch never sees it): the ADD
	// raced the watch.
	late := fullPod("shop", "cart-2", "u2")
	c.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.GetAction).GetName() == "cart-2" {
			return true, late.DeepCopy(), nil
		}
		return false, nil, nil
	})
	if code, got := askAgent(t, h, "shop", "cart-2", "u2"); code != http.StatusOK || got.Metadata.Name != "cart-2" || gets() != 1 {
		t.Errorf("pod not watched yet: %d %+v after %d API reads, want it read once", code, got, gets())
	}
	// Another pod of the same name than the one held: the newer one, from the API server.
	if code, _ := askAgent(t, h, "shop", "cart-1", "u9"); code != http.StatusOK || gets() != 2 {
		t.Errorf("another uid: %d after %d API reads, want one more read", code, gets())
	}
	if code, _ := askAgent(t, h, "shop", "gone", "u3"); code != http.StatusNotFound {
		t.Errorf("missing pod: %d, want 404", code)
	}
	for _, tt := range []struct {
		source, outcome string
		want            float64
	}{
		{sourceCache, outcomeFound, 1}, {sourceAPI, outcomeFound, 2}, {sourceAPI, outcomeNotFound, 1},
	} {
		if got := counterValue(t, m.agentRequests.WithLabelValues(tt.source, tt.outcome)); got != tt.want {
			t.Errorf("shunt_cni_agent_pod_requests_total{source=%s,outcome=%s} = %v, want %v", tt.source, tt.outcome, got, tt.want)
		}
	}
}

// TestAgentFetchesOnce: concurrent requests for a pod the watch has not brought share one API read.
func TestAgentFetchesOnce(t *testing.T) {
	c := newFakeClient()
	p, _ := startNodePods(t, c)
	release := make(chan struct{})
	c.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return true, fullPod("shop", "new", "u1"), nil
	})
	const n = 20
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { codes[i], _ = askAgent(t, p.handler(), "shop", "new", "u1") })
	}
	time.Sleep(100 * time.Millisecond) // all waiting on the one read
	close(release)
	wg.Wait()
	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("request %d: %d", i, code)
		}
	}
	if got := len(actions(c, "get", "pods")); got != 1 {
		t.Errorf("%d API reads for %d concurrent requests, want 1", got, n)
	}
}

// TestInstallerServesAgentSocket: the installer serves the node's pods on its agent socket, from the
// same watch as its repair loop, and takes the socket away when it stops.
func TestInstallerServesAgentSocket(t *testing.T) {
	_, cfg := newTestNode(t)
	c := newFakeClient(node("n"), fullPod("shop", "cart-1", "u1"))
	cfg.Client, cfg.NodeName = c, "n"
	cfg.AgentSocket = filepath.Join(mustShortDir(t), "agent.sock")
	_, stop := start(t, cfg)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.AgentSocket)
	}}}
	var pod cni.Pod
	waitFor(t, "the pod served", func() bool {
		resp, err := client.Get("http://agent/v1/pods/shop/cart-1?uid=u1")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&pod) == nil
	})
	if pod.Metadata.Name != "cart-1" {
		t.Errorf("served %+v", pod)
	}
	if got := len(actions(c, "watch", "pods")); got != 1 {
		t.Errorf("%d watches of the node's pods, want one for the agent and the repair loop", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.AgentSocket); !os.IsNotExist(err) {
		t.Errorf("agent socket after stop: %v, want it gone", err)
	}
}

func TestPodReadsCounted(t *testing.T) {
	m := newMetrics()
	for _, source := range []string{cni.PodSourceAgent, cni.PodSourceAgent, cni.PodSourceAPI, "", "elsewhere"} {
		m.observe(cni.Report{Command: "ADD", Outcome: cni.OutcomeProgrammed, PodSource: source})
	}
	for source, want := range map[string]float64{cni.PodSourceAgent: 2, cni.PodSourceAPI: 1, "other": 1} {
		if got := counterValue(t, m.podReads.WithLabelValues(source)); got != want {
			t.Errorf("shunt_cni_pod_reads_total{source=%q} = %v, want %v", source, got, want)
		}
	}
}
