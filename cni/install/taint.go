package install

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// DefaultTaintKey is the startup taint nodes carry until the plugin is installed: pods scheduled
// before would start without capture rules.
const DefaultTaintKey = "cni.shunt.io/not-ready"

var (
	nodesResource  = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	podsResource   = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	eventsResource = schema.GroupVersionResource{Version: "v1", Resource: "events"}
)

// taintAttempts bounds how often removeTaint re-reads the Node after a concurrent change.
const taintAttempts = 10

// removeTaint removes the NoSchedule taint key from the Node. The JSON patch tests the taints it
// read, so a concurrent change of the taints fails it rather than being overwritten; then it reads
// the Node again and retries. removed is false when the Node had no such taint.
func removeTaint(ctx context.Context, client dynamic.Interface, node, key string) (removed bool, err error) {
	nodes := client.Resource(nodesResource)
	for range taintAttempts {
		n, err := nodes.Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get node %s: %w", node, err)
		}
		taints, _, err := unstructured.NestedSlice(n.Object, "spec", "taints")
		if err != nil {
			return false, fmt.Errorf("node %s: %w", node, err)
		}
		keep := make([]any, 0, len(taints))
		for _, t := range taints {
			m, _ := t.(map[string]any)
			if m["key"] == key && m["effect"] == "NoSchedule" {
				continue
			}
			keep = append(keep, t)
		}
		if len(keep) == len(taints) {
			return false, nil
		}
		patch := []map[string]any{{"op": "test", "path": "/spec/taints", "value": taints}}
		if len(keep) == 0 {
			patch = append(patch, map[string]any{"op": "remove", "path": "/spec/taints"})
		} else {
			patch = append(patch, map[string]any{"op": "replace", "path": "/spec/taints", "value": keep})
		}
		body, err := json.Marshal(patch)
		if err != nil {
			return false, err
		}
		_, err = nodes.Patch(ctx, node, types.JSONPatchType, body, metav1.PatchOptions{})
		switch {
		case err == nil:
			return true, nil
		// A failed test op is 422 Invalid; Conflict for good measure.
		case apierrors.IsConflict(err) || apierrors.IsInvalid(err):
			continue
		default:
			return false, fmt.Errorf("patch node %s: %w", node, err)
		}
	}
	return false, fmt.Errorf("patch node %s: taints changed concurrently %d times", node, taintAttempts)
}

// untaint removes the node's startup taint, retrying until it succeeds or ctx is done.
func (in *Installer) untaint(ctx context.Context) {
	wait := backoff{min: time.Second, max: 30 * time.Second}
	for ctx.Err() == nil {
		removed, err := removeTaint(ctx, in.cfg.Client, in.cfg.NodeName, in.cfg.TaintKey)
		if err == nil {
			if removed {
				in.log.Info("removed the node's startup taint", "node", in.cfg.NodeName, "taint", in.cfg.TaintKey+":NoSchedule")
			} else {
				in.log.Info("node has no startup taint", "node", in.cfg.NodeName, "taint", in.cfg.TaintKey+":NoSchedule")
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		in.log.Warn("remove the node's startup taint", "node", in.cfg.NodeName, "error", err)
		sleep(ctx, wait.next())
	}
}
