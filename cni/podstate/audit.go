package podstate

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/shuntmesh/shunt/backend"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/redirect"
)

// States of a pod after a check.
const (
	Captured = "captured" // its backend holds exactly the rules of its settings
	Drifted  = "drifted"  // rules of ours differ from its settings, or are missing
	Repaired = "repaired" // drifted, and reconciled back to its settings
	Gone     = "gone"     // its sandbox's namespace no longer exists
	Unknown  = "unknown"  // the namespace could not be read (Err)
)

// Status is what a check found in one pod's namespace.
type Status struct {
	Pod         string    `json:"pod"`
	UID         string    `json:"uid,omitempty"`
	ContainerID string    `json:"container_id"`
	NetNS       string    `json:"netns"`
	Backend     string    `json:"backend"`
	State       string    `json:"state"`
	Drift       string    `json:"drift,omitempty"` // the differences, as the backend's check names them
	Err         string    `json:"error,omitempty"`
	Checked     time.Time `json:"checked"`
}

// Check compares the rules in r's namespace with the plan of its settings on its backend and, for an
// eBPF pod, looks for it in the node's eBPF agent, changing nothing.
func Check(ctx context.Context, r Record) Status {
	var c Checker
	return c.Check(ctx, r)
}

// Checker checks pods as Check does, reading each eBPF agent's registrations once: one per pass over
// the node's pods. The zero value is ready.
type Checker struct {
	layers map[string]ebpfPods
}

// ebpfPods are the namespace cookies an eBPF agent holds, or why they could not be read.
type ebpfPods struct {
	cookies map[uint64]bool
	err     error
}

// Check checks r, as the package's Check.
func (c *Checker) Check(ctx context.Context, r Record) Status {
	st := c.checkRules(ctx, r)
	if st.State == Captured && r.EBPF {
		c.checkEBPF(r, &st)
	}
	return st
}

// checkEBPF finds an eBPF pod whose rules are in place drifted when the node's eBPF agent (at the
// record's pin directory) does not hold it: its connections then take the rules' slower path, or no
// agent is loaded at all.
func (c *Checker) checkEBPF(r Record, st *Status) {
	if c.layers == nil {
		c.layers = map[string]ebpfPods{}
	}
	l, ok := c.layers[r.EBPFPinDir]
	if !ok {
		l.cookies, l.err = registeredPods(r.EBPFPinDir)
		c.layers[r.EBPFPinDir] = l
	}
	switch {
	case errors.Is(l.err, shuntebpf.ErrNotLoaded):
		st.State, st.Drift = Drifted, "the node's eBPF agent is not loaded ("+r.EBPFPinDir+"): the pod runs on its rules alone"
		return
	case l.err != nil:
		st.State, st.Err = Unknown, l.err.Error()
		return
	}
	cookie, err := shuntebpf.NetNSCookie(r.NetNS)
	if err != nil {
		st.State, st.Err = Unknown, err.Error()
		return
	}
	if !l.cookies[cookie] {
		st.State, st.Drift = Drifted, "not registered with the node's eBPF agent ("+r.EBPFPinDir+"): the pod runs on its rules alone"
	}
}

func registeredPods(pinDir string) (map[uint64]bool, error) {
	node, err := shuntebpf.Open(pinDir)
	if err != nil {
		return nil, err
	}
	defer node.Close()
	cookies, err := node.Pods()
	if err != nil {
		return nil, err
	}
	set := make(map[uint64]bool, len(cookies))
	for _, c := range cookies {
		set[c] = true
	}
	return set, nil
}

func (c *Checker) checkRules(ctx context.Context, r Record) Status {
	st := Status{Pod: r.Pod(), UID: r.UID, ContainerID: r.ContainerID, NetNS: r.NetNS, Backend: r.Backend, Checked: time.Now().UTC()}
	b, plan, err := r.plan()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.State = Gone
		return st
	case err != nil:
		st.State, st.Err = Unknown, err.Error()
		return st
	}
	err = b.Check(ctx, &plan)
	switch {
	case err == nil:
		st.State = Captured
	case errors.Is(err, backend.ErrDrift):
		st.State, st.Drift = Drifted, err.Error()
	default:
		if _, serr := os.Stat(r.NetNS); errors.Is(serr, fs.ErrNotExist) {
			st.State = Gone // went away during the check
		} else {
			st.State, st.Err = Unknown, err.Error()
		}
	}
	return st
}

// Reconcile puts the rules of r's settings back in its namespace, replacing rules of ours that differ
// atomically per table (no capture gap), and checks the result.
func Reconcile(ctx context.Context, r Record) error {
	b, plan, err := r.plan()
	if err != nil {
		return err
	}
	if err := b.Apply(ctx, &plan, backend.Mode{Reconcile: true}); err != nil {
		return err
	}
	return b.Check(ctx, &plan)
}

// plan returns r's backend in its namespace and the plan of its settings; fs.ErrNotExist when the
// namespace is gone.
func (r Record) plan() (backend.Backend, redirect.Plan, error) {
	if _, err := os.Stat(r.NetNS); err != nil {
		return nil, redirect.Plan{}, err
	}
	b, err := backend.Named(r.Backend, backend.Settings{NetNS: r.NetNS})
	if err != nil {
		return nil, redirect.Plan{}, err
	}
	plan, err := b.Plan(r.Config)
	return b, plan, err
}
