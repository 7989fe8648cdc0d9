package install

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/podstate"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestAuditEBPF: an eBPF pod is captured only while the node's eBPF agent holds it as well as its
// rules. Taken out of the agent's maps it is drifted; reconcile registers it again. A pod whose agent
// is not loaded is drifted, its rules being the safety net.
func TestAuditEBPF(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	pinDir := filepath.Join(testutil.NewPinDir(t), "agent")
	node, err := shuntebpf.Load(shuntebpf.Options{Cgroup: testutil.NewCgroup(t).Path, PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	node.Close()
	t.Cleanup(func() { _ = shuntebpf.Unload(pinDir) })

	ns := testutil.NewNetNS(t)
	cfg := redirect.DefaultConfig()
	b, err := backend.Named("iptables-nft", backend.Settings{NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	plan, _ := b.Plan(cfg)
	if err := b.Apply(ctx, &plan, backend.Mode{}); err != nil {
		t.Fatal(err)
	}
	ips := []netip.Addr{netip.MustParseAddr("10.1.0.5")}
	if err := cni.EBPFLayer(pinDir).Register(cni.EBPFPod{NetNS: ns.Path(), Config: cfg, IPs: ips}); err != nil {
		t.Fatal(err)
	}
	store := podstate.Store{Dir: t.TempDir()}
	rec := podstate.Record{ContainerID: "c1", NetNS: ns.Path(), Namespace: "shop", Name: "cart", Backend: "iptables-nft",
		Config: cfg, EBPF: true, EBPFPinDir: pinDir, IPs: ips}
	if err := store.Put(rec); err != nil {
		t.Fatal(err)
	}
	a := &auditor{store: store, cfg: AuditConfig{Repair: DriftOff}, log: slog.New(slog.DiscardHandler), metrics: newMetrics(), reported: map[string]string{}}
	one := func() podstate.Status {
		t.Helper()
		sts := a.audit(ctx)
		if len(sts) != 1 {
			t.Fatalf("%d statuses", len(sts))
		}
		return sts[0]
	}
	if st := one(); st.State != podstate.Captured {
		t.Fatalf("registered pod: %s %s%s", st.State, st.Drift, st.Err)
	}
	if err := cni.EBPFLayer(pinDir).Unregister(ns.Path()); err != nil {
		t.Fatal(err)
	}
	if st := one(); st.State != podstate.Drifted || !strings.Contains(st.Drift, "not registered with the node's eBPF agent") {
		t.Errorf("unregistered pod: %s %q", st.State, st.Drift)
	}
	a.cfg.Repair = DriftReconcile
	if st := one(); st.State != podstate.Repaired {
		t.Errorf("reconcile: %s %s", st.State, st.Err)
	}
	if st := one(); st.State != podstate.Captured {
		t.Errorf("after the reconcile: %s %s%s", st.State, st.Drift, st.Err)
	}

	rec.EBPFPinDir = filepath.Join(filepath.Dir(pinDir), "no-agent")
	if err := store.Put(rec); err != nil {
		t.Fatal(err)
	}
	a.cfg.Repair = DriftOff
	if st := one(); st.State != podstate.Drifted || !strings.Contains(st.Drift, "eBPF agent is not loaded") {
		t.Errorf("no agent: %s %q", st.State, st.Drift)
	}
}
