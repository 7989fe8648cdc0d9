package install

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/shuntmesh/shunt/cni"
)

// Repair modes: what is done to a pod that started without capture rules.
const (
	RepairDelete = "delete" // delete it, so that its controller creates it again, with rules
	RepairLabel  = "label"  // label it (RepairConfig.LabelKey=needed) for someone else to act
	RepairOff    = "off"    // nothing: the repair loop does not run
)

// Repair defaults, as Istio's repair controller has them.
const (
	DefaultRepairLabelKey      = "cni.shunt.io/repair"
	DefaultRepairInitContainer = "istio-validation"
	DefaultRepairExitCode      = 126
	repairLabelValue           = "needed"
	repairEventReason          = "ShuntRepair"
	eventSource                = "shunt-install-cni"
)

// RepairConfig configures the repair loop.
type RepairConfig struct {
	// Mode is RepairDelete, RepairLabel or RepairOff.
	Mode string
	// LabelKey is the label set in RepairLabel mode.
	LabelKey string
	// InitContainer is the validation init container, and ExitCode its exit code when the pod's
	// traffic is not captured.
	InitContainer string
	ExitCode      int64
	// Grace is how long after the plugin is first ready the agent waits before it repairs the meshed
	// pods that started without it (no record); 0 means DefaultRepairGrace.
	Grace time.Duration
}

// repairer watches the pods of its node and repairs those that started without capture rules: their
// validation init container failed, or the plugin's CHECK found their rules differ. Each pod is
// repaired once.
type repairer struct {
	client  dynamic.Interface
	node    string
	cfg     RepairConfig
	log     *slog.Logger
	metrics *metrics
	checks  chan cni.Report
	// pods is the agent's watch of the node's pods; nil: run watches them itself.
	pods *nodePods
	// unrecorded, when set, also checks each pod for having started without the plugin.
	unrecorded *unrecorded

	mu   sync.Mutex
	done map[types.UID]bool
}

func newRepairer(client dynamic.Interface, node string, cfg RepairConfig, log *slog.Logger, m *metrics) *repairer {
	return &repairer{client: client, node: node, cfg: cfg, log: log, metrics: m,
		checks: make(chan cni.Report, 256), done: make(map[types.UID]bool)}
}

// run repairs until ctx is done. It takes the node's pods from the agent's watch (r.pods), or else
// from a watch of its own.
func (r *repairer) run(ctx context.Context) {
	var wg sync.WaitGroup
	pods := r.pods
	if pods == nil {
		pods = newNodePods(r.client, r.node, r.log, nil)
		wg.Go(func() { pods.run(ctx) })
	}
	wg.Go(func() { r.handleChecks(ctx) })
	r.watch(ctx, pods)
	wg.Wait()
}

// checkFailed queues a pod whose CHECK failed; it never blocks the report reader.
func (r *repairer) checkFailed(rep cni.Report) {
	select {
	case r.checks <- rep:
	default:
		r.log.Warn("repair queue full, dropping a failed CHECK", "namespace", rep.Namespace, "pod", rep.Name)
	}
}

func (r *repairer) handleChecks(ctx context.Context) {
	pods := r.client.Resource(podsResource)
	for {
		select {
		case <-ctx.Done():
			return
		case rep := <-r.checks:
			pod, err := pods.Namespace(rep.Namespace).Get(ctx, rep.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				r.log.Error("repair: get pod", "namespace", rep.Namespace, "pod", rep.Name, "error", err)
				continue
			}
			if rep.UID != "" && string(pod.GetUID()) != rep.UID {
				continue // another pod of the same name
			}
			why := "the CNI plugin's CHECK found its capture rules missing or different"
			if rep.Reason != "" {
				why += " (" + rep.Reason + ")"
			}
			r.repair(ctx, pod, why)
		}
	}
}

// watch hands the node's pods to check as the informer brings them, and forgets the repaired ones
// that are gone, until ctx is done.
func (r *repairer) watch(ctx context.Context, pods *nodePods) {
	reg, err := pods.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if pod, ok := obj.(*unstructured.Unstructured); ok {
				r.check(ctx, pod)
			}
		},
		UpdateFunc: func(_, obj any) {
			if pod, ok := obj.(*unstructured.Unstructured); ok {
				r.check(ctx, pod)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*unstructured.Unstructured); ok {
				r.mu.Lock()
				delete(r.done, pod.GetUID())
				r.mu.Unlock()
				if r.unrecorded != nil {
					r.unrecorded.forget(pod.GetUID())
				}
			}
		},
	})
	if err != nil {
		r.log.Error("repair: watch pods", "node", r.node, "error", err)
		return
	}
	<-ctx.Done()
	_ = pods.informer.RemoveEventHandler(reg)
}

// check repairs pod if its validation init container says its traffic is not captured, or if it
// started without the plugin (see unrecorded).
func (r *repairer) check(ctx context.Context, pod *unstructured.Unstructured) {
	if r.unrecorded != nil {
		r.unrecorded.check(ctx, pod)
	}
	if pod.GetDeletionTimestamp() != nil {
		return
	}
	if why := validationFailure(pod.Object, r.cfg.InitContainer, r.cfg.ExitCode); why != "" {
		r.repair(ctx, pod, why)
	}
}

// validationFailure says why the pod's validation init container shows it started without capture
// rules (it terminated, now or last time, with exitCode), or "".
func validationFailure(pod map[string]any, container string, exitCode int64) string {
	statuses, _, _ := unstructured.NestedSlice(pod, "status", "initContainerStatuses")
	for _, s := range statuses {
		m, _ := s.(map[string]any)
		if m["name"] != container {
			continue
		}
		for _, state := range []string{"state", "lastState"} {
			if code, ok, _ := unstructured.NestedInt64(m, state, "terminated", "exitCode"); ok && code == exitCode {
				return fmt.Sprintf("init container %s exited with code %d: the pod started without capture rules", container, exitCode)
			}
		}
	}
	return ""
}

// repair acts on pod once, records an Event on it and counts it.
func (r *repairer) repair(ctx context.Context, pod *unstructured.Unstructured, why string) {
	uid, ns, name := pod.GetUID(), pod.GetNamespace(), pod.GetName()
	if r.cfg.Mode == RepairLabel && pod.GetLabels()[r.cfg.LabelKey] == repairLabelValue {
		return // labeled already, by an earlier run
	}
	r.mu.Lock()
	if r.done[uid] {
		r.mu.Unlock()
		return
	}
	r.done[uid] = true
	r.mu.Unlock()

	pods := r.client.Resource(podsResource).Namespace(ns)
	var (
		did string
		err error
	)
	switch r.cfg.Mode {
	case RepairDelete:
		did = "deleted the pod, so that it is created again with capture rules"
		err = pods.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return // gone already, or replaced by a pod of the same name
		}
	case RepairLabel:
		did = fmt.Sprintf("labeled the pod %s=%s", r.cfg.LabelKey, repairLabelValue)
		var patch []byte
		patch, err = json.Marshal(map[string]any{"metadata": map[string]any{
			"uid":    uid, // a precondition: the patch fails on another pod of the same name
			"labels": map[string]string{r.cfg.LabelKey: repairLabelValue},
		}})
		if err == nil {
			_, err = pods.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		}
	default:
		return
	}
	if err != nil {
		r.mu.Lock()
		delete(r.done, uid) // try again on the pod's next change
		r.mu.Unlock()
		r.log.Error("repair pod", "namespace", ns, "pod", name, "action", r.cfg.Mode, "error", err)
		return
	}
	r.metrics.repairs.WithLabelValues(r.cfg.Mode).Inc()
	msg := "shunt " + did + ": " + why
	r.log.Info("repaired pod", "namespace", ns, "pod", name, "uid", uid, "action", r.cfg.Mode, "reason", why)
	if err := r.event(ctx, pod, msg); err != nil {
		r.log.Warn("repair: record event", "namespace", ns, "pod", name, "error", err)
	}
}

// event records a Warning Event on pod.
func (r *repairer) event(ctx context.Context, pod *unstructured.Unstructured, msg string) error {
	ref := podRef{Namespace: pod.GetNamespace(), Name: pod.GetName(), UID: string(pod.GetUID()), ResourceVersion: pod.GetResourceVersion()}
	return recordEvent(ctx, r.client, r.node, ref, repairEventReason, msg)
}

// podRef names the pod an Event is about.
type podRef struct {
	Namespace, Name, UID, ResourceVersion string
}

// recordEvent records a Warning Event with reason and msg on the pod ref, from node's agent.
func recordEvent(ctx context.Context, client dynamic.Interface, node string, ref podRef, reason, msg string) error {
	now := time.Now().UTC()
	ts := now.Format(time.RFC3339)
	involved := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"namespace":  ref.Namespace,
		"name":       ref.Name,
		"uid":        ref.UID,
	}
	if ref.ResourceVersion != "" {
		involved["resourceVersion"] = ref.ResourceVersion
	}
	ev := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "Event",
		"metadata": map[string]any{
			// As client-go's recorder names events.
			"name":      fmt.Sprintf("%s.%x", ref.Name, now.UnixNano()),
			"namespace": ref.Namespace,
		},
		"involvedObject":     involved,
		"reason":             reason,
		"message":            msg,
		"type":               "Warning",
		"source":             map[string]any{"component": eventSource, "host": node},
		"firstTimestamp":     ts,
		"lastTimestamp":      ts,
		"count":              int64(1),
		"reportingComponent": eventSource,
		"reportingInstance":  node,
	}}
	_, err := client.Resource(eventsResource).Namespace(ref.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}

// backoff is an exponential delay between min and max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
