package podstate

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/shuntmesh/shunt/backend"
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

// Check compares the rules in r's namespace with the plan of its settings on its backend, changing
// nothing.
func Check(ctx context.Context, r Record) Status {
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
