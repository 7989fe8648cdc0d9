package nftables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// ipState is the routing state Apply may touch: ip rules, routes of every table, addresses.
func ipState(t *testing.T, n *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-4", "rule"}, {"-6", "rule"}, {"addr"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}} {
		b.WriteString(n.Run(t, append([]string{"ip"}, args...)...))
	}
	return b.String()
}

func nativeConfig(mode redirect.Mode, ipv6 bool) redirect.Config {
	c := redirect.DefaultConfig()
	c.NativeNFTables, c.Mode, c.IPv6 = true, mode, ipv6
	return c
}

// TestReconcileDropsWhatIsNoLongerNeeded checks that the settings needing less — IPv6 off, then
// REDIRECT instead of TPROXY — are drift, and that a reconcile leaves the tables, routes and
// addresses a fresh apply of the new settings leaves: the TPROXY routing and ::6 shunt added go.
func TestReconcileDropsWhatIsNoLongerNeeded(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	n := testutil.NewNetNS(t)
	if err := Apply(ctx, build(t, nativeConfig(redirect.ModeTProxy, true)), Options{NetNS: n.Path()}); err != nil {
		t.Fatal(err)
	}
	for _, next := range []redirect.Config{nativeConfig(redirect.ModeTProxy, false), nativeConfig(redirect.ModeRedirect, false)} {
		name := string(next.Mode) + map[bool]string{true: " IPv6", false: " IPv4"}[next.IPv6]
		before, beforeIP := ruleset(t, n), ipState(t, n)
		plan := build(t, next)
		if err := Apply(ctx, plan, Options{NetNS: n.Path()}); !errors.Is(err, ErrDrift) {
			t.Fatalf("%s without reconcile = %v, want ErrDrift", name, err)
		}
		if ruleset(t, n) != before || ipState(t, n) != beforeIP {
			t.Fatalf("%s: a refused apply changed the namespace", name)
		}
		if err := Apply(ctx, plan, Options{NetNS: n.Path(), Reconcile: true}); err != nil {
			t.Fatalf("%s: reconcile: %v", name, err)
		}
		fresh := testutil.NewNetNS(t)
		if err := Apply(ctx, plan, Options{NetNS: fresh.Path()}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(ruleset(t, fresh), ruleset(t, n)); diff != "" {
			t.Errorf("%s: reconciled tables differ from a fresh apply (-fresh +reconciled):\n%s", name, diff)
		}
		if diff := cmp.Diff(ipState(t, fresh), ipState(t, n)); diff != "" {
			t.Errorf("%s: reconciled routes and addresses differ from a fresh apply (-fresh +reconciled):\n%s", name, diff)
		}
	}
}

// TestFindAndRemove checks that Find names shunt's tables, changing nothing, and that Remove deletes
// them and nothing else.
func TestFindAndRemove(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	n.Run(t, "nft", "add table inet foreign; add chain inet foreign out { type filter hook output priority 10; }")
	opts := Options{NetNS: n.Path()}
	if names, err := Find(opts); err != nil || len(names) != 0 {
		t.Fatalf("Find in a namespace without our tables = %q, %v", names, err)
	}
	before := ruleset(t, n)
	if err := Apply(context.Background(), build(t, nativeConfig(redirect.ModeTProxy, true)), opts); err != nil {
		t.Fatal(err)
	}
	want := []string{"istio-proxy-mangle", "istio-proxy-nat"} // no DNS capture: no raw table
	names, err := Find(opts)
	slices.Sort(names)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("Find (-want +got):\n%s", diff)
	}
	removed, err := Remove(opts)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if diff := cmp.Diff(want, removed); diff != "" {
		t.Errorf("Remove (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, ruleset(t, n)); diff != "" {
		t.Errorf("Remove left the ruleset changed (-before +after):\n%s", diff)
	}
}
