package node

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shuntmesh/shunt/cni/install"
)

var (
	nodesResource  = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	eventsResource = schema.GroupVersionResource{Version: "v1", Resource: "events"}
)

// driftEventReason is the reason of the node agents' Events on a drifted pod.
const driftEventReason = "ShuntDrift"

// ClusterStatus is the cluster view of `shunt status --cluster`: what every node's agent reports in
// its Node conditions, and the agents' recent drift Events.
type ClusterStatus struct {
	Nodes  []NodeStatus `json:"nodes"`
	Events []DriftEvent `json:"events"`
}

// NodeStatus is one node's agent conditions.
type NodeStatus struct {
	Node string `json:"node"`
	// Ready is the cni.shunt.io/Ready condition; nil when the node has none (no shunt agent ever ran
	// there).
	Ready *Condition `json:"ready,omitempty"`
	// PodsCaptured is the cni.shunt.io/PodsCaptured condition; nil when the node has none (no drift
	// audit, or an agent of a release that does not write it).
	PodsCaptured *Condition `json:"pods_captured,omitempty"`
	// NotCaptured are the pods (namespace/name) PodsCaptured names as meshed but not captured; More
	// counts those its message does not name.
	NotCaptured []string `json:"not_captured,omitempty"`
	More        int      `json:"more,omitempty"`
}

// Condition is a Node condition.
type Condition struct {
	Status             string `json:"status"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	LastTransitionTime string `json:"last_transition_time,omitempty"`
}

// DriftEvent is an agent's ShuntDrift Event on a pod.
type DriftEvent struct {
	Pod      string    `json:"pod"`
	Node     string    `json:"node,omitempty"`
	Message  string    `json:"message"`
	Count    int64     `json:"count,omitempty"`
	LastSeen time.Time `json:"last_seen"`
}

// agentNotReady says whether the node's agent reports itself not ready; a node without the condition
// has no agent and is not counted.
func (n NodeStatus) agentNotReady() bool { return n.Ready != nil && n.Ready.Status != "True" }

// podsNotCaptured says whether the node's agent reports meshed pods not captured.
func (n NodeStatus) podsNotCaptured() bool {
	return n.PodsCaptured != nil && n.PodsCaptured.Status == "False"
}

// clusterClient is a client of the API server of kubeconfig (empty: $KUBECONFIG, ~/.kube/config, as
// kubectl finds it).
func clusterClient(kubeconfig string) (dynamic.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "shunt-status"
	return dynamic.NewForConfig(cfg)
}

// clusterStatus reads every node's agent conditions and the ShuntDrift Events seen since.
func clusterStatus(ctx context.Context, client dynamic.Interface, since time.Time) (*ClusterStatus, error) {
	nodes, err := client.Resource(nodesResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	cs := &ClusterStatus{Nodes: []NodeStatus{}, Events: []DriftEvent{}}
	for _, n := range nodes.Items {
		var obj struct {
			Status struct {
				Conditions []struct {
					Type               string `json:"type"`
					Status             string `json:"status"`
					Reason             string `json:"reason"`
					Message            string `json:"message"`
					LastTransitionTime string `json:"lastTransitionTime"`
				} `json:"conditions"`
			} `json:"status"`
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(n.Object, &obj); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.GetName(), err)
		}
		ns := NodeStatus{Node: n.GetName()}
		for _, c := range obj.Status.Conditions {
			cond := &Condition{Status: c.Status, Reason: c.Reason, Message: c.Message, LastTransitionTime: c.LastTransitionTime}
			switch c.Type {
			case install.NodeConditionType:
				ns.Ready = cond
			case install.PodsCapturedConditionType:
				ns.PodsCaptured = cond
				if c.Status == "False" {
					ns.NotCaptured, ns.More = install.ParseNotCaptured(c.Message)
				}
			}
		}
		cs.Nodes = append(cs.Nodes, ns)
	}
	slices.SortFunc(cs.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })

	events, err := client.Resource(eventsResource).Namespace(metav1.NamespaceAll).List(ctx,
		metav1.ListOptions{FieldSelector: "reason=" + driftEventReason})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	for _, e := range events.Items {
		var ev struct {
			Reason         string `json:"reason"`
			Message        string `json:"message"`
			Count          int64  `json:"count"`
			FirstTimestamp string `json:"firstTimestamp"`
			LastTimestamp  string `json:"lastTimestamp"`
			EventTime      string `json:"eventTime"`
			InvolvedObject struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"involvedObject"`
			Source struct {
				Host string `json:"host"`
			} `json:"source"`
			ReportingInstance string `json:"reportingInstance"`
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(e.Object, &ev); err != nil || ev.Reason != driftEventReason {
			continue
		}
		var seen time.Time
		for _, ts := range []string{ev.LastTimestamp, ev.EventTime, ev.FirstTimestamp} {
			if t, err := time.Parse(time.RFC3339, ts); err == nil {
				seen = t
				break
			}
		}
		if seen.Before(since) {
			continue
		}
		de := DriftEvent{Pod: ev.InvolvedObject.Namespace + "/" + ev.InvolvedObject.Name, Node: cmp.Or(ev.Source.Host, ev.ReportingInstance),
			Message: ev.Message, Count: ev.Count, LastSeen: seen.UTC()}
		cs.Events = append(cs.Events, de)
	}
	slices.SortStableFunc(cs.Events, func(a, b DriftEvent) int { return a.LastSeen.Compare(b.LastSeen) })
	return cs, nil
}

// notCaptured counts the nodes whose agent is not ready and those reporting pods not captured.
func (cs *ClusterStatus) notCaptured() (notReady, podsNotCaptured int) {
	for _, n := range cs.Nodes {
		if n.agentNotReady() {
			notReady++
		}
		if n.podsNotCaptured() {
			podsNotCaptured++
		}
	}
	return notReady, podsNotCaptured
}

// maxEventMessage bounds an Event's message in the table (--json has it whole).
const maxEventMessage = 160

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// write prints cs as JSON or as tables: one line per node, then the events.
func (cs *ClusterStatus) write(w io.Writer, asJSON bool, since time.Duration) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(cs)
	}
	cond := func(c *Condition) string {
		if c == nil {
			return "-"
		}
		return c.Status + " (" + c.Reason + ")"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAGENT READY\tPODS CAPTURED\tNOT CAPTURED")
	for _, n := range cs.Nodes {
		detail := strings.Join(n.NotCaptured, ", ")
		switch {
		case n.More > 0:
			detail += fmt.Sprintf(" and %d more", n.More)
		case n.Ready == nil:
			detail = "no shunt agent on the node"
		case n.agentNotReady():
			detail = oneLine(n.Ready.Message)
		case n.PodsCaptured != nil && n.PodsCaptured.Status != "True" && detail == "":
			detail = oneLine(n.PodsCaptured.Message)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, cond(n.Ready), cond(n.PodsCaptured), detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d %s Event(s) in the last %s\n", len(cs.Events), driftEventReason, since)
	if len(cs.Events) == 0 {
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAST SEEN\tPOD\tNODE\tMESSAGE")
	for _, e := range cs.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.LastSeen.Format(time.RFC3339), e.Pod, e.Node, truncate(oneLine(e.Message), maxEventMessage))
	}
	return tw.Flush()
}
