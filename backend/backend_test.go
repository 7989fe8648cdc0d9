package backend_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/backend/backendtest"
	"github.com/shuntmesh/shunt/redirect"
)

// TestSelectRefuses: settings that name no backend are refused, naming the field and value, before
// anything looks at a namespace.
func TestSelectRefuses(t *testing.T) {
	for _, s := range []backend.Settings{
		{IptablesVariant: "xtables", NetNS: "/nonexistent"},
		{NativeNFTables: true, IptablesVariant: "legacy", NetNS: "/nonexistent"},
	} {
		_, _, err := backend.Select(s)
		var fe *redirect.FieldError
		if !errors.As(err, &fe) || fe.Value != s.IptablesVariant || !strings.Contains(err.Error(), "iptables variant") {
			t.Errorf("Select(%+v) = %v, want a field error naming the variant", s, err)
		}
	}
}

// TestSelectShapesThePlan: each backend builds the plan shape it programs, whatever the Config says.
func TestSelectShapesThePlan(t *testing.T) {
	cfg := redirect.DefaultConfig()
	cfg.IPv6 = true
	for _, tc := range []struct {
		s    backend.Settings
		name string
		fams []redirect.Family
	}{
		{backend.Settings{NativeNFTables: true}, "nftables", []redirect.Family{redirect.Inet}},
		{backend.Settings{IptablesVariant: "legacy"}, "iptables-legacy", []redirect.Family{redirect.IPv4, redirect.IPv6}},
		{backend.Settings{IptablesVariant: "nft"}, "iptables-nft", []redirect.Family{redirect.IPv4, redirect.IPv6}},
	} {
		b, choice, err := backend.Select(tc.s)
		if err != nil {
			t.Fatal(err)
		}
		if b.Name() != tc.name || choice.Backend != tc.name || choice.Reason == "" {
			t.Errorf("Select(%+v) = %s (%+v), want %s with a reason", tc.s, b.Name(), choice, tc.name)
		}
		for _, native := range []bool{false, true} {
			c := cfg
			c.NativeNFTables = native
			plan, err := b.Plan(c)
			if err != nil {
				t.Fatal(err)
			}
			var got []redirect.Family
			for _, fp := range plan.Families {
				got = append(got, fp.Family)
			}
			if len(got) != len(tc.fams) || got[0] != tc.fams[0] {
				t.Errorf("%s plan with NativeNFTables=%v: families %v, want %v", b.Name(), native, got, tc.fams)
			}
		}
	}
}

// TestFake: the fake keeps plans per namespace as a backend keeps rules: a second apply of the same
// plan is fine, a different one is drift unless reconciled, check sees drift, remove forgets.
func TestFake(t *testing.T) {
	var f backendtest.Fake
	ctx := context.Background()
	b, _, err := f.Select(backend.Settings{NetNS: "/ns/a"})
	if err != nil {
		t.Fatal(err)
	}
	one, _ := b.Plan(redirect.DefaultConfig())
	cfg := redirect.DefaultConfig()
	cfg.OutboundPortsExclude = []uint16{9000}
	two, _ := b.Plan(cfg)
	if err := b.Apply(ctx, &one, backend.Mode{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, &one, backend.Mode{}); err != nil {
		t.Errorf("second apply: %v", err)
	}
	if err := b.Apply(ctx, &two, backend.Mode{}); !errors.Is(err, backend.ErrDrift) {
		t.Errorf("apply of another plan = %v, want drift", err)
	}
	if err := b.Check(ctx, &two); !errors.Is(err, backend.ErrDrift) {
		t.Errorf("check against another plan = %v, want drift", err)
	}
	if err := b.Apply(ctx, &two, backend.Mode{Reconcile: true}); err != nil || f.Installed("/ns/a") != &two {
		t.Errorf("reconcile = %v, want the new plan installed", err)
	}
	if cs, _ := b.Counters(ctx); len(cs) == 0 {
		t.Error("no counters for an installed plan")
	}
	if removed, err := f.Cleanup(ctx, backend.Scope{NetNS: "/ns/a"}); err != nil || len(removed) != 1 || f.Installed("/ns/a") != nil {
		t.Errorf("cleanup = %v, %v; want one removal", removed, err)
	}
}
