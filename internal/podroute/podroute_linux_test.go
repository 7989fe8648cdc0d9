package podroute

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

func mustPlan(t *testing.T, mode redirect.Mode, ipv6 bool) *redirect.Plan {
	t.Helper()
	c := redirect.DefaultConfig()
	c.Mode, c.IPv6 = mode, ipv6
	p, err := redirect.Build(c)
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

// in runs fn in n.
func in(t *testing.T, n *testutil.NetNS, fn func() error) {
	t.Helper()
	if err := netns.Do(n.Path(), fn); err != nil {
		t.Fatal(err)
	}
}

func sync(t *testing.T, n *testutil.NetNS, plan *redirect.Plan) {
	t.Helper()
	in(t, n, func() error { return Sync(plan) })
}

func cleanup(t *testing.T, n *testutil.NetNS) []string {
	t.Helper()
	removed, err := CleanupAt(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return removed
}

// marked lists the addresses of lo that carry our IFA_PROTO (iproute2 6.1 does not print it).
func marked(t *testing.T, n *testutil.NetNS) []string {
	t.Helper()
	var out []string
	in(t, n, func() error {
		h, lo, err := routeHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		addrs, err := ourAddrs(lo)
		for _, a := range addrs {
			out = append(out, a.String())
		}
		return err
	})
	return out
}

// ipState is what the package may touch: ip rules, routes of every table, addresses, both families.
func ipState(t *testing.T, n *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-4", "rule"}, {"-6", "rule"}, {"addr"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}} {
		b.WriteString("## ip " + strings.Join(args, " ") + "\n")
		b.WriteString(n.Run(t, append([]string{"ip"}, args...)...))
	}
	return b.String()
}

func TestSyncMarksOursAndCleanupRemovesThem(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	before := ipState(t, n)
	plan := mustPlan(t, redirect.ModeTProxy, true)
	sync(t, n, plan)
	applied := ipState(t, n)
	for _, want := range []string{"fwmark 0x539 lookup 133 proto 83", "local default dev lo table 133 proto 83"} {
		if !strings.Contains(applied, want) {
			t.Errorf("no %q after Sync:\n%s", want, applied)
		}
	}
	if got := marked(t, n); !slices.Equal(got, []string{"::6/128"}) {
		t.Errorf("addresses of ours after Sync: %q, want ::6/128", got)
	}
	// Usable at once: never tentative.
	if a := n.Run(t, "ip", "-6", "addr", "show", "dev", "lo"); !strings.Contains(a, "inet6 ::6/128 scope global nodad") || strings.Contains(a, "tentative") {
		t.Errorf("::6 on lo is not nodad, or tentative:\n%s", a)
	}
	sync(t, n, plan)
	if again := ipState(t, n); again != applied {
		t.Errorf("a second Sync changed the namespace:\n%s", cmp.Diff(applied, again))
	}
	removed := cleanup(t, n)
	want := []string{
		"removed ip rule fwmark 0x539 lookup 133 (IPv4)",
		"removed route local default dev lo table 133 (IPv4)",
		"removed ip rule fwmark 0x539 lookup 133 (IPv6)",
		"removed route local default dev lo table 133 (IPv6)",
		"removed ::6/128 from lo",
	}
	if diff := cmp.Diff(want, removed); diff != "" {
		t.Errorf("Cleanup reported (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, ipState(t, n)); diff != "" {
		t.Errorf("Cleanup left the namespace changed (-before +after):\n%s", diff)
	}
	if removed := cleanup(t, n); len(removed) != 0 {
		t.Errorf("second Cleanup removed %q", removed)
	}
}

// TestCleanupLeavesWhatWasThere checks that objects that existed before shunt — Istio's ::6, an
// identical TPROXY rule and route, a foreign fwmark rule whose table holds only a local default route
// via lo — are neither claimed by Sync nor removed by Cleanup.
func TestCleanupLeavesWhatWasThere(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	for _, cmd := range [][]string{
		{"ip", "-6", "addr", "add", "::6/128", "dev", "lo"},
		{"ip", "-4", "rule", "add", "fwmark", "0x539", "lookup", "133"},
		{"ip", "-4", "route", "add", "local", "default", "dev", "lo", "table", "133"},
		{"ip", "-6", "rule", "add", "fwmark", "0x77", "lookup", "77"},
		{"ip", "-6", "route", "add", "local", "default", "dev", "lo", "table", "77"},
		{"ip", "-4", "rule", "add", "fwmark", "0x78", "lookup", "78"},
		{"ip", "-4", "route", "add", "local", "default", "dev", "lo", "table", "78"},
		{"ip", "-4", "addr", "add", "127.0.0.6/32", "dev", "lo"},
	} {
		n.Run(t, cmd...)
	}
	before := ipState(t, n)
	sync(t, n, mustPlan(t, redirect.ModeTProxy, true))
	applied := ipState(t, n)
	// Only the IPv6 rule and route were missing.
	if got := marked(t, n); len(got) != 0 {
		t.Errorf("Sync claimed the ::6 that was there: addresses of ours %q", got)
	}
	if got := strings.Count(applied, "proto 83"); got != 2 {
		t.Errorf("Sync marked %d objects, want 2 (the IPv6 rule and route):\n%s", got, applied)
	}
	removed := cleanup(t, n)
	if want := []string{"removed ip rule fwmark 0x539 lookup 133 (IPv6)", "removed route local default dev lo table 133 (IPv6)"}; !slices.Equal(removed, want) {
		t.Errorf("Cleanup removed %q, want %q", removed, want)
	}
	if diff := cmp.Diff(before, ipState(t, n)); diff != "" {
		t.Errorf("Cleanup touched what was there before (-before +after):\n%s", diff)
	}
}

// TestSyncRemovesWhatIsNoLongerNeeded checks that moving from TPROXY with IPv6 to REDIRECT, IPv4 only,
// removes the rules, routes and ::6 shunt added, and only those.
func TestSyncRemovesWhatIsNoLongerNeeded(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	n.Run(t, "ip", "-4", "rule", "add", "fwmark", "0x78", "lookup", "78")
	n.Run(t, "ip", "-4", "route", "add", "local", "default", "dev", "lo", "table", "78")
	before := ipState(t, n)
	sync(t, n, mustPlan(t, redirect.ModeTProxy, true))
	sync(t, n, mustPlan(t, redirect.ModeTProxy, false))
	if s := ipState(t, n); strings.Contains(s, "::6") || strings.Count(s, "proto 83") != 2 {
		t.Errorf("after IPv6 → IPv4: want only the IPv4 rule and route of ours:\n%s", s)
	}
	sync(t, n, mustPlan(t, redirect.ModeRedirect, false))
	if diff := cmp.Diff(before, ipState(t, n)); diff != "" {
		t.Errorf("TPROXY → REDIRECT left something (-before +after):\n%s", diff)
	}
	sync(t, n, mustPlan(t, redirect.ModeRedirect, true))
	if got := marked(t, n); !slices.Equal(got, []string{"::6/128"}) {
		t.Errorf("REDIRECT with IPv6: addresses of ours %q, want ::6/128", got)
	}
}

// TestDetectIPv6: a namespace is IPv6 by its first address that is not loopback or link-local, or,
// with dualStack, by any IPv6 one; the kernel lists an interface's IPv4 addresses first.
func TestDetectIPv6(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	check := func(dualStack, want bool) {
		t.Helper()
		if got, err := DetectIPv6(ns.Path(), dualStack); err != nil || got != want {
			t.Errorf("DetectIPv6(dualStack=%v) = %v, %v; want %v", dualStack, got, err, want)
		}
	}
	check(false, false) // lo only
	ns.Run(t, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.Run(t, "ip", "link", "set", "d0", "up")
	ns.Run(t, "ip", "addr", "add", "fd00::5/64", "dev", "d0", "nodad")
	check(false, true)
	ns.Run(t, "ip", "addr", "add", "10.0.0.5/24", "dev", "d0")
	check(false, false)
	check(true, true)
}
