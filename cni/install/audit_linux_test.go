package install

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"testing"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestAudit drives the drift audit over real namespaces, one per backend: a pod whose rules match its
// record is captured; rules changed behind the agent's back (another configuration's, reconciled in)
// are drifted — left as they are with repair off, reported in the metrics — and put back with
// reconcile; a record whose namespace is gone is removed and its series dropped.
func TestAudit(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	store := podstate.Store{Dir: t.TempDir()}
	cfg := redirect.DefaultConfig()
	cfg.IPv6 = true
	other := cfg
	other.OutboundPortsExclude = []uint16{9999} // what "another agent" leaves in the pod
	var recs []podstate.Record
	for _, name := range []string{"nftables", "iptables-nft", "iptables-legacy"} {
		ns := testutil.NewNetNS(t)
		b, err := backend.Named(name, backend.Settings{NetNS: ns.Path()})
		if err != nil {
			t.Fatal(err)
		}
		plan, err := b.Plan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(ctx, &plan, backend.Mode{}); err != nil {
			t.Fatal(err)
		}
		r := podstate.Record{ContainerID: "c-" + name, NetNS: ns.Path(), Namespace: "shop", Name: name, UID: "u-" + name, Backend: name, Config: cfg}
		if err := store.Put(r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	gone := podstate.Record{ContainerID: "c-gone", NetNS: "/run/netns/shunt-test-gone", Namespace: "shop", Name: "gone", Backend: "nftables", Config: cfg}
	if err := store.Put(gone); err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	a := &auditor{store: store, cfg: AuditConfig{Repair: DriftOff}, log: slog.New(slog.DiscardHandler), metrics: m, reported: map[string]string{}}
	states := func(sts []podstate.Status) map[string]string {
		got := map[string]string{}
		for _, st := range sts {
			got[st.ContainerID] = st.State
		}
		return got
	}
	got := states(a.audit(ctx))
	for _, r := range recs {
		if got[r.ContainerID] != podstate.Captured {
			t.Errorf("%s: %s, want captured", r.Backend, got[r.ContainerID])
		}
	}
	if got["c-gone"] != podstate.Gone {
		t.Errorf("gone pod: %s", got["c-gone"])
	}
	if _, err := store.Get("c-gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the gone pod's record stays: %v", err)
	}

	// Drift in every pod.
	for _, r := range recs {
		b, _ := backend.Named(r.Backend, backend.Settings{NetNS: r.NetNS})
		plan, _ := b.Plan(other)
		if err := b.Apply(ctx, &plan, backend.Mode{Reconcile: true}); err != nil {
			t.Fatal(err)
		}
	}
	sts := a.audit(ctx)
	for _, st := range sts {
		if st.State != podstate.Drifted || st.Drift == "" {
			t.Errorf("%s with repair off: %s %q, want drifted with the differences", st.Backend, st.State, st.Drift)
		}
	}
	if n := promtest.ToFloat64(m.podsDrifted); n != 3 {
		t.Errorf("shunt_cni_pods_drifted %v, want 3", n)
	}
	if n := promtest.ToFloat64(m.podDrifted.WithLabelValues("shop", "iptables-legacy")); n != 1 {
		t.Errorf("shunt_cni_pod_drifted{pod=iptables-legacy} %v, want 1", n)
	}

	a.cfg.Repair = DriftReconcile
	for _, st := range a.audit(ctx) {
		if st.State != podstate.Repaired {
			t.Errorf("%s with reconcile: %s (%s), want repaired", st.Backend, st.State, st.Err)
		}
	}
	for _, st := range a.audit(ctx) {
		if st.State != podstate.Captured {
			t.Errorf("%s after the repair: %s %s, want captured", st.Backend, st.State, st.Drift)
		}
	}
	if n := promtest.ToFloat64(m.driftRepairs.WithLabelValues(DriftReconcile, "done")); n != 3 {
		t.Errorf("shunt_cni_drift_repairs_total{reconcile,done} %v, want 3", n)
	}
	if n := promtest.ToFloat64(m.podsDrifted); n != 0 {
		t.Errorf("shunt_cni_pods_drifted %v after the repair, want 0", n)
	}

	// A pod deleted: its series go.
	if err := store.Delete(recs[0].ContainerID); err != nil {
		t.Fatal(err)
	}
	a.audit(ctx)
	if n := promtest.CollectAndCount(m.podDrifted); n != 2 {
		t.Errorf("%d shunt_cni_pod_drifted series, want 2", n)
	}
}
