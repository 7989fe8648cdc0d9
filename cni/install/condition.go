package install

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// NodeConditionType is the Node condition the agent keeps: True while the plugin is installed and
// verified on the node, False (with the reason) while it is not and once the agent stops. Controllers
// that gate scheduling on node conditions (the Kubernetes node-readiness controller, a cluster
// autoscaler's readiness checks) can wait for it, as the startup taint makes the scheduler wait.
const NodeConditionType = "cni.shunt.io/Ready"

// Reasons of the condition.
const (
	conditionInstalled = "PluginInstalled"
	conditionNotReady  = "PluginNotReady"
	conditionStopped   = "AgentStopped"
)

type readyState struct {
	ok     bool
	reason string
	msg    string
}

// publishReady hands the plugin's readiness to the goroutine that keeps the Node condition, starting
// it on the first call. Only the latest state is published: a slow API server never holds the
// installer's loop back.
func (in *Installer) publishReady(ctx context.Context, ok bool, why string) {
	if in.cfg.Client == nil {
		return
	}
	in.mu.Lock()
	states := in.status.conditions
	if states == nil {
		states = make(chan readyState, 1)
		in.status.conditions = states
		in.wg.Go(func() { in.keepCondition(ctx, states) })
	}
	in.mu.Unlock()
	st := readyState{ok: ok, reason: conditionNotReady, msg: why}
	if ok {
		st.reason = conditionInstalled
	}
	select {
	case <-states: // replaced by the newer state
	default:
	}
	states <- st
}

// keepCondition patches the Node condition with each new state, retrying a failed patch, and sets it
// False when ctx ends (the agent is stopping: the plugin is being uninstalled).
func (in *Installer) keepCondition(ctx context.Context, states <-chan readyState) {
	var last *readyState
	var pending *readyState
	wait := backoff{min: time.Second, max: 30 * time.Second}
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			stop, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st := readyState{reason: conditionStopped, msg: "the shunt node agent stopped; the plugin is uninstalled"}
			if err := in.patchCondition(stop, st, last); err != nil {
				in.log.Warn("set the node condition on stop", "node", in.cfg.NodeName, "condition", NodeConditionType, "error", err)
			}
			cancel()
			return
		case st := <-states:
			pending = &st
		case <-retry:
		}
		if pending == nil {
			continue
		}
		if err := in.patchCondition(ctx, *pending, last); err != nil {
			in.log.Warn("set the node condition", "node", in.cfg.NodeName, "condition", NodeConditionType, "error", err)
			retry = time.After(wait.next())
			continue
		}
		wait.reset()
		retry = nil
		last, pending = pending, nil
	}
}

// patchCondition sets the condition to st with a strategic-merge patch of the Node's status (the
// conditions merge by type: other conditions are untouched). The transition time moves only when the
// status changes.
func (in *Installer) patchCondition(ctx context.Context, st readyState, last *readyState) error {
	c := nodeCondition{Type: NodeConditionType, Status: conditionStatus(st.ok), Reason: st.reason, Message: st.msg}
	return patchNodeCondition(ctx, in.cfg.Client, in.cfg.NodeName, c, last == nil || last.ok != st.ok)
}

// nodeCondition is one of the Node conditions the agent keeps.
type nodeCondition struct {
	Type, Status, Reason, Message string
}

func conditionStatus(ok bool) string {
	if ok {
		return "True"
	}
	return "False"
}

// patchNodeCondition sets the condition c on node with a strategic-merge patch of the Node's status:
// the conditions merge by type, other conditions are untouched. transition moves the condition's
// lastTransitionTime (its status changed).
func patchNodeCondition(ctx context.Context, client dynamic.Interface, node string, c nodeCondition, transition bool) error {
	now := time.Now().UTC().Format(time.RFC3339)
	cond := map[string]any{
		"type":              c.Type,
		"status":            c.Status,
		"reason":            c.Reason,
		"message":           c.Message,
		"lastHeartbeatTime": now,
	}
	if transition {
		cond["lastTransitionTime"] = now
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []any{cond}}})
	if err != nil {
		return err
	}
	_, err = client.Resource(nodesResource).Patch(ctx, node, types.StrategicMergePatchType, body, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patch node %s status: %w", node, err)
	}
	return nil
}
