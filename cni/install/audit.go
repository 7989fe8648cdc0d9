package install

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/podstate"
)

// What the drift audit does with a pod whose rules differ from its settings (AuditConfig.Repair).
const (
	DriftReconcile = "reconcile" // put its rules back in place, atomically per table: no capture gap
	DriftLabel     = "label"     // label it as the repair loop does (RepairConfig.LabelKey=needed)
	DriftDelete    = "delete"    // delete it, so that its controller creates it again
	DriftOff       = "off"       // report it only (Event, metrics, /pods)
)

// Drift audit defaults.
const (
	DefaultAuditInterval = 5 * time.Second
	driftEventReason     = "ShuntDrift"
)

// AuditConfig configures the drift audit.
type AuditConfig struct {
	// Interval between audits of every recorded pod; 0 audits only at start and on demand (POST
	// /audit).
	Interval time.Duration
	// Repair is DriftReconcile (the default when empty), DriftLabel, DriftDelete or DriftOff.
	Repair string
}

// auditor checks, again and again, that every pod the plugin recorded on the node still holds exactly
// the rules of its settings, and repairs those that do not.
type auditor struct {
	store   podstate.Store
	cfg     AuditConfig
	client  dynamic.Interface // nil: no Events, no label or delete
	node    string
	repair  *repairer // label and delete; nil without a client
	log     *slog.Logger
	metrics *metrics

	run      sync.Mutex // one audit at a time
	mu       sync.Mutex
	last     []podstate.Status
	reported map[string]string // container ID → the drift last reported in an Event
	// captured is the PodsCaptured condition last patched (nil: none yet).
	captured *nodeCondition
	// notCaptured, when set, names the pods known to be without rules besides the audited ones (the
	// meshed pods that started without the plugin).
	notCaptured func() []string
}

// audit checks every recorded pod once, repairs the drifted ones as configured, and returns what it
// found (a drifted pod that was reconciled is Repaired, with its Drift).
func (a *auditor) audit(ctx context.Context) []podstate.Status {
	a.run.Lock()
	defer a.run.Unlock()
	// A migration of the node's pods (`shunt migrate-pods`) holds the store's lock: a pod it moved
	// half-way would look drifted, and a reconcile would undo the move.
	unlock, err := a.store.Lock(ctx)
	if err != nil {
		a.log.Warn("audit: lock the pod records", "state_dir", a.store.Dir, "error", err)
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.last
	}
	defer unlock()
	start := time.Now()
	recs, listErr := a.store.List()
	if listErr != nil {
		a.log.Error("audit: read the pod records", "state_dir", a.store.Dir, "error", listErr)
	}
	statuses := make([]podstate.Status, 0, len(recs))
	drifted := 0
	seen := map[string]bool{}
	var checker podstate.Checker
	for _, r := range recs {
		if ctx.Err() != nil {
			break
		}
		st := checker.Check(ctx, r)
		switch st.State {
		case podstate.Gone:
			// DEL did not come (a runtime that lost the sandbox): the record is stale.
			if err := a.store.Delete(r.ContainerID); err != nil {
				a.log.Warn("audit: remove a stale record", "container_id", r.ContainerID, "error", err)
			}
		case podstate.Drifted:
			drifted++
			a.driftFound(ctx, r, &st)
		case podstate.Unknown:
			a.log.Warn("audit: cannot check pod", "pod", st.Pod, "netns", st.NetNS, "error", st.Err)
		}
		if st.State != podstate.Gone {
			seen[r.ContainerID] = true
			a.metrics.podDrifted.WithLabelValues(r.Namespace, r.Name).Set(boolGauge(st.State == podstate.Drifted))
		}
		statuses = append(statuses, st)
	}
	a.mu.Lock()
	for _, old := range a.last {
		if !seen[old.ContainerID] {
			ns, name := splitPod(old.Pod)
			a.metrics.podDrifted.DeleteLabelValues(ns, name)
			delete(a.reported, old.ContainerID)
		}
	}
	a.last = statuses
	a.mu.Unlock()
	a.metrics.podsAudited.Set(float64(len(seen)))
	a.metrics.podsDrifted.Set(float64(drifted))
	a.metrics.auditSeconds.Set(time.Since(start).Seconds())
	a.metrics.auditTime.SetToCurrentTime()
	if ctx.Err() == nil && listErr == nil {
		// A record that could not be read leaves the condition as it was: its pod is not known.
		a.publishCaptured(ctx, statuses)
	}
	return statuses
}

// driftFound repairs a drifted pod as configured and reports it: a log line, and an Event when the
// drift differs from the one last reported for the pod (an unrepaired pod is not reported again every
// audit).
func (a *auditor) driftFound(ctx context.Context, r podstate.Record, st *podstate.Status) {
	action := a.cfg.Repair
	var did string
	switch action {
	case DriftReconcile, "":
		action = DriftReconcile
		if err := reconcile(ctx, r); err != nil {
			did = "could not put them back: " + err.Error()
			a.metrics.driftRepairs.WithLabelValues(action, "failed").Inc()
		} else {
			did = "put them back in place (atomically, no capture gap)"
			st.State = podstate.Repaired
			a.metrics.driftRepairs.WithLabelValues(action, "done").Inc()
		}
	case DriftLabel, DriftDelete:
		did = a.handOver(ctx, r, st.Drift)
	case DriftOff:
		did = "left them (drift repair off)"
	}
	a.log.Warn("pod's capture rules drifted", "pod", st.Pod, "container_id", r.ContainerID, "backend", r.Backend,
		"action", action, "result", did, "drift", st.Drift)
	a.mu.Lock()
	same := a.reported[r.ContainerID] == st.Drift && st.State == podstate.Drifted
	a.reported[r.ContainerID] = st.Drift
	a.mu.Unlock()
	if same || a.client == nil {
		return
	}
	msg := fmt.Sprintf("shunt found the pod's capture rules (%s) differing from its settings and %s: %s", r.Backend, did, st.Drift)
	if len(msg) > 1024 {
		msg = msg[:1021] + "..."
	}
	ref := podRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID}
	if err := recordEvent(ctx, a.client, a.node, ref, driftEventReason, msg); err != nil {
		a.log.Warn("audit: record event", "pod", st.Pod, "error", err)
	}
}

// reconcile puts r's rules back in place and, for an eBPF pod, its registration with the node's agent.
func reconcile(ctx context.Context, r podstate.Record) error {
	if err := podstate.Reconcile(ctx, r); err != nil {
		return err
	}
	if !r.EBPF {
		return nil
	}
	return cni.EBPFLayer(r.EBPFPinDir).Register(cni.EBPFPod{NetNS: r.NetNS, Config: r.Config, IPs: r.IPs, SockMsg: r.SockMsg})
}

// handOver gives a drifted pod to the repair loop's label or delete action.
func (a *auditor) handOver(ctx context.Context, r podstate.Record, drift string) string {
	if a.repair == nil {
		return "left them: label and delete need the API server"
	}
	pod, err := a.client.Resource(podsResource).Namespace(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && r.UID != "" && string(pod.GetUID()) != r.UID {
		return "left them: the pod is gone"
	}
	if err != nil {
		return "left them: " + err.Error()
	}
	a.repair.repair(ctx, pod, "its capture rules drifted: "+drift)
	return "handed the pod to the repair loop (" + a.cfg.Repair + ")"
}

// loop audits at start — after a reboot or a restart the pods whose namespaces still exist are
// checked first of all — and then every Interval, until ctx is done, when it sets the PodsCaptured
// condition Unknown.
func (a *auditor) loop(ctx context.Context) {
	defer a.stopped()
	a.audit(ctx)
	if a.cfg.Interval <= 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.audit(ctx)
		}
	}
}

// serve answers GET /pods with the last audit's statuses and POST /audit with a new audit's.
func (a *auditor) serve(mux *http.ServeMux) {
	write := func(w http.ResponseWriter, sts []podstate.Status) {
		w.Header().Set("Content-Type", "application/json")
		if sts == nil {
			sts = []podstate.Status{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(sts)
	}
	mux.HandleFunc("GET /pods", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		sts := a.last
		a.mu.Unlock()
		write(w, sts)
	})
	mux.HandleFunc("POST /audit", func(w http.ResponseWriter, r *http.Request) {
		write(w, a.audit(r.Context()))
	})
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func splitPod(pod string) (namespace, name string) {
	namespace, name, _ = strings.Cut(pod, "/")
	return namespace, name
}
