package install

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/cni/podstate"
)

// DefaultRepairGrace is how long after the plugin is first ready the agent waits before it repairs
// meshed pods that have no record: an ADD that was running at that moment has written its record by then.
const DefaultRepairGrace = 10 * time.Second

// What the agent makes of a pod of its node without a record (judgeUnrecorded).
type unrecordedVerdict int

const (
	unrecordedSkip    unrecordedVerdict = iota // not a pod the plugin captures, or not one started before readiness
	unrecordedUnknown                          // meshed, no record, but started before the plugin recorded pods: capture state unknown
	unrecordedRepair                           // meshed, no record, started while no plugin that records pods was installed
)

// unrecordedFacts are what judgeUnrecorded decides from besides the pod.
type unrecordedFacts struct {
	// recorded says whether the plugin has a record of the pod (by UID, else namespace/name).
	recorded func(uid types.UID, namespace, name string) bool
	// exclude are the namespaces the plugin never captures.
	exclude []string
	// since is the state directory's marker (podstate.Store.MarkRecording): from then on every pod
	// the plugin captured has a record.
	since time.Time
	// ready is when the agent first found its plugin installed and verified.
	ready time.Time
}

// judgeUnrecorded decides whether pod, as the agent's watch holds it, is a meshed pod that started
// without capture rules because no plugin was in the chain: Running, meshed as the plugin decides
// (cni/meshpod: host network, not injected, gateways are not), in a namespace the plugin captures,
// started after since and before ready, and without a record. One started before since may have been
// captured by a plugin that wrote no records (an upgrade from such a release): its capture state is
// unknown, it is never repaired. why says what was decided.
func judgeUnrecorded(pod *unstructured.Unstructured, f unrecordedFacts) (v unrecordedVerdict, why string) {
	if pod.GetDeletionTimestamp() != nil {
		return unrecordedSkip, "terminating"
	}
	if phase, _, _ := unstructured.NestedString(pod.Object, "status", "phase"); phase != "Running" {
		return unrecordedSkip, "not running (phase " + phase + ")"
	}
	if slices.Contains(f.exclude, pod.GetNamespace()) {
		return unrecordedSkip, "namespace " + pod.GetNamespace() + " is excluded"
	}
	var mp cni.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(pod.Object, &mp); err != nil {
		return unrecordedSkip, "unreadable: " + err.Error()
	}
	d, err := meshpod.Decide(&mp, nil)
	switch {
	case err != nil:
		return unrecordedSkip, "its capture settings are invalid: the plugin fails it (" + err.Error() + ")"
	case d.Skip != "":
		return unrecordedSkip, "not captured by the plugin: " + d.Skip
	}
	started, _, _ := unstructured.NestedString(pod.Object, "status", "startTime")
	start, err := time.Parse(time.RFC3339, started)
	if err != nil {
		return unrecordedSkip, "no start time"
	}
	// status.startTime is when the kubelet took the pod, before its sandbox, in whole seconds: a pod
	// whose start time is not before ready may have been set up by the plugin, and one whose start time
	// is not after since may have started before it (both err on the side of leaving the pod alone).
	if !start.Before(f.ready) {
		return unrecordedSkip, "started after the plugin was ready"
	}
	if f.recorded(pod.GetUID(), pod.GetNamespace(), pod.GetName()) {
		return unrecordedSkip, "recorded by the plugin"
	}
	if f.since.IsZero() || !start.After(f.since) {
		return unrecordedUnknown, fmt.Sprintf("started at %s, before the plugin recorded pods on this node (since %s): it may have been captured by a plugin that wrote no records",
			start.Format(time.RFC3339), formatSince(f.since))
	}
	return unrecordedRepair, fmt.Sprintf("started at %s, before the node agent was ready (%s) and without the plugin: it has no capture rules",
		start.Format(time.RFC3339), f.ready.UTC().Format(time.RFC3339))
}

func formatSince(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// unrecorded finds the meshed pods of the node that started without the plugin — before the agent was
// ready, while no plugin that records pods was in the chain (a node agent restarting, upgrading, or
// installing late) — and hands them to the repair loop; pods whose capture state cannot be known are
// reported only.
type unrecorded struct {
	store   podstate.Store
	exclude []string
	repair  *repairer
	log     *slog.Logger
	metrics *metrics

	facts atomic.Pointer[unrecordedFacts] // nil until the grace period after readiness is over

	mu          sync.Mutex
	unknown     map[types.UID]bool   // pods whose capture state is unknown (reported once)
	notCaptured map[types.UID]string // pods handed to the repair loop, namespace/name, until gone
}

// start marks the state directory (the plugin installed at ready records pods), waits grace, then
// checks every pod the watch holds; from then on repairer.check hands it each pod the watch brings.
func (u *unrecorded) start(ctx context.Context, ready time.Time, grace time.Duration, pods *nodePods) {
	since, err := u.store.MarkRecording(ready)
	if err != nil {
		u.log.Error("mark the state directory: pods started without the plugin are not repaired", "state_dir", u.store.Dir, "error", err)
		return
	}
	if since.Equal(ready.UTC()) {
		u.log.Info("the plugin records pods from now on: meshed pods already running have an unknown capture state and are not repaired",
			"state_dir", u.store.Dir, "since", since)
	}
	sleep(ctx, grace)
	if ctx.Err() != nil {
		return
	}
	u.facts.Store(&unrecordedFacts{exclude: u.exclude, since: since, ready: ready})
	for !pods.informer.HasSynced() {
		sleep(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return
		}
	}
	for _, obj := range pods.informer.GetStore().List() {
		if pod, ok := obj.(*unstructured.Unstructured); ok {
			u.check(ctx, pod)
		}
	}
}

// check judges pod, once the grace period is over, and repairs or reports it.
func (u *unrecorded) check(ctx context.Context, pod *unstructured.Unstructured) {
	base := u.facts.Load()
	if base == nil {
		return
	}
	if pod.GetDeletionTimestamp() != nil {
		u.forget(pod.GetUID())
		return
	}
	f := *base
	var listErr error
	f.recorded = func(uid types.UID, namespace, name string) bool {
		recs, err := u.store.List()
		listErr = err
		return slices.ContainsFunc(recs, func(r podstate.Record) bool {
			if r.UID != "" && uid != "" {
				return r.UID == string(uid)
			}
			return r.Namespace == namespace && r.Name == name
		})
	}
	v, why := judgeUnrecorded(pod, f)
	if listErr != nil {
		// A record that cannot be read may be this pod's.
		u.log.Warn("read the pod records: pods without one are not repaired", "state_dir", u.store.Dir, "error", listErr)
		return
	}
	uid, ns, name := pod.GetUID(), pod.GetNamespace(), pod.GetName()
	switch v {
	case unrecordedUnknown:
		u.mu.Lock()
		news := !u.unknown[uid]
		u.unknown[uid] = true
		n := len(u.unknown)
		u.mu.Unlock()
		u.metrics.captureUnknown.Set(float64(n))
		if news {
			u.log.Info("meshed pod of unknown capture state, not repaired", "namespace", ns, "pod", name, "uid", uid, "reason", why)
		}
	case unrecordedRepair:
		u.mu.Lock()
		u.notCaptured[uid] = ns + "/" + name
		u.mu.Unlock()
		u.repair.repair(ctx, pod, why)
	}
}

// forget drops a pod that is going away.
func (u *unrecorded) forget(uid types.UID) {
	u.mu.Lock()
	delete(u.notCaptured, uid)
	delete(u.unknown, uid)
	n := len(u.unknown)
	u.mu.Unlock()
	u.metrics.captureUnknown.Set(float64(n))
}

// pods names the pods handed to the repair loop that are still there: meshed and not captured.
func (u *unrecorded) pods() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]string, 0, len(u.notCaptured))
	for _, p := range u.notCaptured {
		out = append(out, p)
	}
	return out
}
