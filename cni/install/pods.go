package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/shuntmesh/shunt/cni"
)

// fetchTimeout bounds the agent's read of a pod it does not hold; under cni.AgentTimeout, so that the
// plugin gets the agent's answer (a 503 it retries) rather than its own timeout, which would send it
// to the API server itself.
const fetchTimeout = time.Second

// Sources and outcomes of shunt_cni_agent_pod_requests_total.
const (
	sourceCache = "cache"
	sourceAPI   = "api"

	outcomeFound    = "found"
	outcomeNotFound = "not_found"
	outcomeError    = "error"
)

// nodePods is the node agent's one watch of its node's pods: an informer whose store holds what the
// plugin and the repair loop read of each pod, and nothing else. It answers the plugin's questions
// about pods (see handler) and feeds the repair loop its events.
type nodePods struct {
	client   dynamic.Interface
	informer cache.SharedIndexInformer
	log      *slog.Logger
	metrics  *metrics // nil: not counted
	fetches  singleflight.Group
}

// newNodePods makes the informer of node's pods; run starts it. m, when not nil, counts the plugin's
// requests and exports the number of pods held.
func newNodePods(client dynamic.Interface, node string, log *slog.Logger, m *metrics) *nodePods {
	selector := fields.OneTermEqualSelector("spec.nodeName", node).String()
	pods := client.Resource(podsResource)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = selector
			return pods.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = selector
			return pods.Watch(ctx, opts)
		},
	}
	// The client says whether it streams the initial list (the API server does; a fake does not).
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), &unstructured.Unstructured{}, 0, cache.Indexers{})
	if err := inf.SetTransform(prunePod); err != nil {
		panic(err) // only after Run
	}
	p := &nodePods{client: client, informer: inf, log: log, metrics: m}
	if m != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shunt_cni_agent_pods",
			Help: "Pods of the node the agent holds from its watch.",
		}, func() float64 { return float64(len(inf.GetStore().ListKeys())) }))
	}
	return p
}

// run runs the informer until ctx is done.
func (p *nodePods) run(ctx context.Context) { p.informer.RunWithContext(ctx) }

// podFields are the fields kept of a pod: what cni.Pod reads, and the repair loop (labels, deletion,
// the validation container's exit codes, the phase and start time) and its Events (uid,
// resourceVersion).
var (
	metadataFields  = []string{"name", "namespace", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp"}
	specFields      = []string{"hostNetwork"}
	containerFields = []string{"name", "args", "env", "securityContext"}
	statusFields    = []string{"podIPs", "phase", "startTime"}
)

// prunePod is the informer's transform: it keeps of a pod only the fields the agent reads, so that the
// store of a node's pods stays small (managedFields, volumes, most of the status go).
func prunePod(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	return &unstructured.Unstructured{Object: prunedPod(u.Object)}, nil
}

func prunedPod(o map[string]any) map[string]any {
	keep := func(src any, keys []string) map[string]any {
		m, _ := src.(map[string]any)
		out := make(map[string]any, len(keys))
		for _, k := range keys {
			if v, ok := m[k]; ok {
				out[k] = v
			}
		}
		return out
	}
	containers := func(src any, keys []string) []any {
		list, _ := src.([]any)
		out := make([]any, len(list))
		for i, c := range list {
			out[i] = keep(c, keys)
		}
		return out
	}
	spec, _ := o["spec"].(map[string]any)
	status, _ := o["status"].(map[string]any)
	s := keep(spec, specFields)
	s["containers"] = containers(spec["containers"], containerFields)
	s["initContainers"] = containers(spec["initContainers"], containerFields)
	st := keep(status, statusFields)
	st["initContainerStatuses"] = containers(status["initContainerStatuses"], []string{"name", "state", "lastState"})
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   keep(o["metadata"], metadataFields),
		"spec":       s,
		"status":     st,
	}
}

// errPodNotFound is a pod the API server does not have.
var errPodNotFound = errors.New("pod not found")

// get returns the pod namespace/name whose uid is uid (any uid when empty) and where it came from:
// the informer's store once it has synced, else (not synced, not held, another uid: a pod newer than
// the store) one read from the API server, shared by concurrent requests for the same pod.
func (p *nodePods) get(namespace, name, uid string) (*unstructured.Unstructured, string, error) {
	if p.informer.HasSynced() {
		obj, ok, err := p.informer.GetStore().GetByKey(namespace + "/" + name)
		if err == nil && ok {
			if u, _ := obj.(*unstructured.Unstructured); u != nil && (uid == "" || string(u.GetUID()) == uid) {
				return u, sourceCache, nil
			}
		}
	}
	start := time.Now()
	v, err, _ := p.fetches.Do(namespace+"/"+name, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
		defer cancel()
		u, err := p.client.Resource(podsResource).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, errPodNotFound
		}
		if err != nil {
			return nil, err
		}
		return &unstructured.Unstructured{Object: prunedPod(u.Object)}, nil
	})
	if p.metrics != nil {
		p.metrics.agentFetchSeconds.Observe(time.Since(start).Seconds())
	}
	if err != nil {
		return nil, sourceAPI, err
	}
	return v.(*unstructured.Unstructured), sourceAPI, nil
}

// handler serves GET /v1/pods/{namespace}/{name}?uid=UID: the pod as the plugin reads it (cni.Pod),
// 404 for a pod the API server does not have, else the API server's status or 503 with the reason.
func (p *nodePods) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pods/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		ns, name := r.PathValue("namespace"), r.PathValue("name")
		u, source, err := p.get(ns, name, r.URL.Query().Get("uid"))
		var pod cni.Pod
		if err == nil {
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pod)
		}
		outcome := outcomeFound
		if err != nil {
			outcome = outcomeError
			code := http.StatusServiceUnavailable
			var st apierrors.APIStatus
			switch {
			case errors.Is(err, errPodNotFound):
				outcome, code = outcomeNotFound, http.StatusNotFound
				err = fmt.Errorf("pods %q not found in namespace %s", name, ns)
			case errors.As(err, &st) && st.Status().Code >= 400:
				code = int(st.Status().Code)
			}
			p.log.Debug("agent: pod not served", "namespace", ns, "pod", name, "source", source, "code", code, "error", err)
			writeStatus(w, code, err.Error())
		} else {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(&pod)
		}
		if p.metrics != nil {
			p.metrics.agentRequests.WithLabelValues(source, outcome).Inc()
		}
	})
	return mux
}

// writeStatus answers with code and a Status-shaped body, as the API server does: the plugin reads its
// message.
func writeStatus(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "code": code, "message": msg})
}

// listenAgent opens the agent's stream socket at path, replacing a stale one.
func listenAgent(path string) (net.Listener, error) {
	if err := prepareSocket("agent", path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	return ln, nil
}
