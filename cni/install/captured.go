package install

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shuntmesh/shunt/cni/podstate"
)

// PodsCapturedConditionType is the Node condition the agent writes after each drift audit: True while
// every meshed pod of the node it knows holds its capture rules, False while some does not — drifted
// and not (yet) repaired, a repair that failed, a namespace it cannot read, or a pod that started
// without the plugin — with the pods named in its message (see NotCapturedMessage). Read across the
// cluster (`shunt status --cluster`), it answers which pods are meshed but not captured right now.
const PodsCapturedConditionType = "cni.shunt.io/PodsCaptured"

// Reasons of the PodsCaptured condition.
const (
	ReasonPodsCaptured    = "PodsCaptured"
	ReasonPodsNotCaptured = "PodsNotCaptured"
	ReasonAgentStopped    = conditionStopped
)

// MaxNamedPods bounds the pods the PodsCaptured condition's message names; the others are counted.
const MaxNamedPods = 20

const (
	notCapturedPrefix = " meshed pod(s) not captured: "
	capturedMessage   = "every meshed pod of the node the agent knows holds its capture rules"
)

// NotCapturedMessage is the message of a False PodsCaptured condition: the number of pods, then their
// namespace/name, sorted, MaxNamedPods at most and "and N more" after them:
// "3 meshed pod(s) not captured: shop/cart, shop/web and 1 more".
func NotCapturedMessage(pods []string) string {
	pods = slices.Clone(pods)
	slices.Sort(pods)
	pods = slices.Compact(pods)
	named := pods
	if len(named) > MaxNamedPods {
		named = named[:MaxNamedPods]
	}
	msg := strconv.Itoa(len(pods)) + notCapturedPrefix + strings.Join(named, ", ")
	if more := len(pods) - len(named); more > 0 {
		msg += fmt.Sprintf(" and %d more", more)
	}
	return msg
}

// ParseNotCaptured reads NotCapturedMessage's message back: the pods named and how many more there
// are. A message of another form gives none.
func ParseNotCaptured(msg string) (pods []string, more int) {
	count, list, ok := strings.Cut(msg, notCapturedPrefix)
	if !ok {
		return nil, 0
	}
	total, err := strconv.Atoi(count)
	if err != nil {
		return nil, 0
	}
	if i := strings.LastIndex(list, " and "); i >= 0 && strings.HasSuffix(list, " more") {
		list = list[:i]
	}
	for p := range strings.SplitSeq(list, ", ") {
		if p != "" {
			pods = append(pods, p)
		}
	}
	return pods, max(total-len(pods), 0)
}

// capturedCondition is the PodsCaptured condition for an audit's statuses and the other pods known to
// be without rules (extra, namespace/name).
func capturedCondition(statuses []podstate.Status, extra []string) nodeCondition {
	var bad []string
	for _, st := range statuses {
		if st.State == podstate.Drifted || st.State == podstate.Unknown {
			bad = append(bad, st.Pod)
		}
	}
	bad = append(bad, extra...)
	if len(bad) == 0 {
		return nodeCondition{Type: PodsCapturedConditionType, Status: "True", Reason: ReasonPodsCaptured, Message: capturedMessage}
	}
	return nodeCondition{Type: PodsCapturedConditionType, Status: "False", Reason: ReasonPodsNotCaptured, Message: NotCapturedMessage(bad)}
}

// publishCaptured patches the PodsCaptured condition when it differs from the one last patched; a
// failed patch is tried again after the next audit.
func (a *auditor) publishCaptured(ctx context.Context, statuses []podstate.Status) {
	if a.client == nil {
		return
	}
	var extra []string
	if a.notCaptured != nil {
		extra = a.notCaptured()
	}
	c := capturedCondition(statuses, extra)
	a.setCaptured(ctx, c)
}

func (a *auditor) setCaptured(ctx context.Context, c nodeCondition) {
	a.mu.Lock()
	last := a.captured
	a.mu.Unlock()
	if last != nil && *last == c {
		return
	}
	if err := patchNodeCondition(ctx, a.client, a.node, c, last == nil || last.Status != c.Status); err != nil {
		a.log.Warn("set the node condition", "node", a.node, "condition", PodsCapturedConditionType, "error", err)
		return
	}
	a.log.Info("node condition", "node", a.node, "condition", PodsCapturedConditionType, "status", c.Status,
		"reason", c.Reason, "message", c.Message)
	a.mu.Lock()
	a.captured = &c
	a.mu.Unlock()
}

// stopped sets the PodsCaptured condition Unknown: the agent stops, nobody audits the pods.
func (a *auditor) stopped() {
	if a.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.setCaptured(ctx, nodeCondition{Type: PodsCapturedConditionType, Status: "Unknown", Reason: ReasonAgentStopped,
		Message: "the shunt node agent stopped: nobody audits the node's pods"})
}
