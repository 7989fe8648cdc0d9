package podstate

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestMigrateAll programs pods' namespaces as ADD does — with iptables-nft, iptables-legacy, native
// nftables, one in TPROXY mode — records them, adds the record of a sandbox whose namespace is gone,
// and migrates the node to nftables: every pod ends on nftables alone, with exactly the rules of its
// settings (the TPROXY pod's migration guard gone), and its record says so; the stale record is
// removed. A second pass changes nothing.
func TestMigrateAll(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	s := Store{Dir: t.TempDir()}
	pods := []struct {
		id, from string
		mode     redirect.Mode
		want     string // outcome
		wantOn   []string
	}{
		{"nft", "iptables-nft", redirect.ModeRedirect, Migrated, []string{"nftables"}},
		{"legacy", "iptables-legacy", redirect.ModeRedirect, Migrated, []string{"nftables"}},
		{"native", "nftables", redirect.ModeRedirect, Unchanged, []string{"nftables"}},
		{"tproxy", "iptables-legacy", redirect.ModeTProxy, Migrated, []string{"nftables"}},
	}
	nss := map[string]string{}
	for _, p := range pods {
		ns := testutil.NewNetNS(t)
		nss[p.id] = ns.Path()
		cfg := redirect.DefaultConfig()
		cfg.Mode, cfg.IPv6 = p.mode, true
		b, err := backend.Named(p.from, backend.Settings{NetNS: ns.Path()})
		if err != nil {
			t.Fatal(err)
		}
		plan, err := b.Plan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(ctx, &plan, backend.Mode{}); err != nil {
			t.Fatalf("%s: %v", p.id, err)
		}
		r := record(p.id, "pod-"+p.id)
		r.NetNS, r.Backend, r.Config = ns.Path(), p.from, cfg
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	gone := record("gone", "pod-gone")
	gone.NetNS = "/run/netns/shunt-test-no-such-namespace"
	if err := s.Put(gone); err != nil {
		t.Fatal(err)
	}

	results, err := MigrateAll(ctx, s, "nftables", nil)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]Result{}
	for _, r := range results {
		byID[r.ContainerID] = r
	}
	if len(results) != len(pods)+1 {
		t.Errorf("%d results, want %d: %+v", len(results), len(pods)+1, results)
	}
	for _, p := range pods {
		res := byID[p.id]
		if res.Outcome != p.want || res.Err != "" {
			t.Errorf("%s: outcome %s (%s%s), want %s", p.id, res.Outcome, res.Reason, res.Err, p.want)
		}
		if !slices.Equal(res.From, []string{p.from}) {
			t.Errorf("%s: from %v, want [%s]", p.id, res.From, p.from)
		}
		found, err := backend.Installed(ctx, nss[p.id])
		if err != nil {
			t.Fatal(err)
		}
		var on []string
		for _, f := range found {
			on = append(on, f.Backend)
		}
		if diff := cmp.Diff(p.wantOn, on); diff != "" {
			t.Errorf("%s: backends holding rules (-want +got):\n%s", p.id, diff)
		}
		rec, err := s.Get(p.id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Backend != p.wantOn[0] {
			t.Errorf("%s: record names %s, want %s", p.id, rec.Backend, p.wantOn[0])
		}
		b, _ := backend.Named("nftables", backend.Settings{NetNS: nss[p.id]})
		plan, _ := b.Plan(rec.Config)
		if err := b.Check(ctx, &plan); err != nil {
			t.Errorf("%s: the nftables rules differ from the record's settings: %v", p.id, err)
		}
	}
	if res := byID["gone"]; res.Outcome != Forgotten {
		t.Errorf("stale record: outcome %s, want %s", res.Outcome, Forgotten)
	}
	if _, err := s.Get("gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale record still there: %v", err)
	}

	again, err := MigrateAll(ctx, s, "nftables", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range again {
		if r.Outcome != Unchanged {
			t.Errorf("second pass: %s %s (%s)", r.ContainerID, r.Outcome, r.Err)
		}
	}
	if _, err := MigrateAll(ctx, s, "ip6tables", nil); err == nil {
		t.Error("MigrateAll to an unknown backend: no error")
	}
}
