package backend_test

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestSeam drives every backend through the seam in a namespace of its own, as the callers do: select,
// plan, apply, apply again, check, read back, detect drift, reconcile, then Cleanup of every backend
// leaves nothing. TPROXY mode, so that the routes are part of what is cleaned.
func TestSeam(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	for _, s := range []backend.Settings{{NativeNFTables: true}, {IptablesVariant: "nft"}, {IptablesVariant: "legacy"}} {
		name := "nftables"
		if !s.NativeNFTables {
			name = "iptables-" + s.IptablesVariant
			if _, err := exec.LookPath(name + "-save"); err != nil {
				t.Logf("%s: no %s-save here", name, name)
				continue
			}
		}
		t.Run(name, func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			s.NetNS = ns.Path()
			b, _, err := backend.Select(s)
			if err != nil {
				t.Fatal(err)
			}
			cfg := redirect.DefaultConfig()
			cfg.Mode, cfg.IPv6 = redirect.ModeTProxy, true
			plan, err := b.Plan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if err := b.Apply(ctx, &plan, backend.Mode{}); err != nil {
					t.Fatalf("apply %d: %v", i+1, err)
				}
			}
			if err := b.Check(ctx, &plan); err != nil {
				t.Errorf("check after apply: %v", err)
			}
			chains, err := b.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(chains, func(c backend.Chain) bool {
				return c.Table == "nat" && c.Chain == redirect.ChainOutput && len(c.Rules) > 0
			}) {
				t.Errorf("read back %+v, want nat %s with rules", chains, redirect.ChainOutput)
			}
			counters, err := b.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n := ruleCount(&plan); len(counters) != n {
				t.Errorf("%d counters, want one for each of the plan's %d rules", len(counters), n)
			}
			cfg.OutboundPortsExclude = []uint16{9000}
			other, _ := b.Plan(cfg)
			if err := b.Check(ctx, &other); !errors.Is(err, backend.ErrDrift) || !strings.Contains(err.Error(), "9000") {
				t.Errorf("check against another plan = %v, want drift naming port 9000", err)
			}
			if err := b.Apply(ctx, &other, backend.Mode{}); !errors.Is(err, backend.ErrDrift) {
				t.Errorf("apply of another plan = %v, want drift", err)
			}
			if err := b.Apply(ctx, &other, backend.Mode{Reconcile: true}); err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			if err := b.Check(ctx, &other); err != nil {
				t.Errorf("check after reconcile: %v", err)
			}
			removed, err := backend.Cleanup(ctx, backend.Scope{NetNS: ns.Path()})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(removed, func(l string) bool { return strings.Contains(l, "fwmark") }) {
				t.Errorf("cleanup removed %q, want the rules and the TPROXY routing", removed)
			}
			if chains, err := b.Read(ctx); err != nil || len(chains) > 0 {
				t.Errorf("after cleanup: %+v, %v; want nothing", chains, err)
			}
			if again, err := backend.Cleanup(ctx, backend.Scope{NetNS: ns.Path()}); err != nil || !slices.Equal(again, []string{"nothing of shunt's found"}) {
				t.Errorf("second cleanup: %q, %v", again, err)
			}
		})
	}
}

func ruleCount(plan *redirect.Plan) int {
	n := 0
	for _, fp := range plan.Families {
		for _, t := range fp.Tables {
			for _, c := range t.Chains {
				n += len(c.Rules)
			}
		}
	}
	return n
}
