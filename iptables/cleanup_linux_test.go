package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestApplyWithoutIPv6OverIPv6 checks that --ipv6=false over installed IPv6 rules is drift: refused
// without Reconcile, changing nothing; with it, the ip6tables rules and the ::6 shunt added go, leaving
// what a fresh IPv4-only apply leaves.
func TestApplyWithoutIPv6OverIPv6(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			opts := Options{Variant: v, NetNS: ns.Path()}
			if err := Apply(ctx, mustBuild(t, fullConfig()), opts); err != nil {
				t.Fatal(err)
			}
			before, beforeIP := save(t, ns, v), ipState(t, ns)
			v4 := fullConfig()
			v4.IPv6 = false
			v4.DNSServers = v4.DNSServers[:1]
			plan := mustBuild(t, v4)
			err := Apply(ctx, plan, opts)
			if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "IPv6") || !strings.Contains(err.Error(), "chain ISTIO_INBOUND is not part of this configuration") {
				t.Fatalf("IPv4-only apply over IPv6 rules = %v, want ErrDrift naming the IPv6 rules", err)
			}
			if diff := cmp.Diff(before, save(t, ns, v)); diff != "" {
				t.Errorf("a refused apply changed the rules (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(beforeIP, ipState(t, ns)); diff != "" {
				t.Errorf("a refused apply changed routes or addresses (-before +after):\n%s", diff)
			}
			if err := Check(ctx, plan, opts); !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "IPv6 nat: chain ISTIO_INBOUND") {
				t.Errorf("Check of the IPv4-only plan = %v, want ErrDrift naming the IPv6 rules", err)
			}

			opts.Reconcile = true
			if err := Apply(ctx, plan, opts); err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			fresh := testutil.NewNetNS(t)
			if err := Apply(ctx, plan, Options{Variant: v, NetNS: fresh.Path()}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(dropEmptyTables(save(t, fresh, v)), dropEmptyTables(save(t, ns, v))); diff != "" {
				t.Errorf("reconciled rules differ from a fresh IPv4-only apply (-fresh +reconciled):\n%s", diff)
			}
			if diff := cmp.Diff(ipState(t, fresh), ipState(t, ns)); diff != "" {
				t.Errorf("reconciled routes differ from a fresh IPv4-only apply (-fresh +reconciled):\n%s", diff)
			}
			if err := Check(ctx, plan, Options{Variant: v, NetNS: ns.Path()}); err != nil {
				t.Errorf("Check after reconcile: %v", err)
			}
		})
	}
}

// TestFindAndRemoveByVariant checks that Find reports our rules per variant and family, changing
// nothing, and that Remove narrowed to one variant leaves the other's.
func TestFindAndRemoveByVariant(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	ns := testutil.NewNetNS(t)
	opts := Options{NetNS: ns.Path()}
	if found, err := Find(ctx, opts); err != nil || len(found) != 0 {
		t.Fatalf("Find in a fresh namespace = %v, %v; want nothing", found, err)
	}
	if data, err := ns.Exec(nil, nil, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"); err != nil || len(data) != 0 {
		t.Errorf("Find instantiated legacy tables: %q %v", data, err)
	}
	plan := mustBuild(t, fullConfig())
	for _, v := range variants {
		if err := Apply(ctx, plan, Options{Variant: v, NetNS: ns.Path()}); err != nil {
			t.Fatal(err)
		}
	}
	found, err := Find(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range found {
		got = append(got, in.String())
	}
	for i, want := range []string{"iptables-nft IPv4: ", "iptables-nft IPv6: ", "iptables-legacy IPv4: ", "iptables-legacy IPv6: "} {
		if i >= len(got) || !strings.HasPrefix(got[i], want) || !strings.Contains(got[i], "jumps") {
			t.Errorf("Find()[%d] = %q, want %q…", i, got, want)
		}
	}
	if len(got) > 0 && !strings.Contains(got[0], "chains ISTIO_DIVERT, ISTIO_DROP, ISTIO_INBOUND, ") {
		t.Errorf("Find()[0] = %q does not name our chains", got[0])
	}
	before := save(t, ns, VariantLegacy)
	removed, err := Remove(ctx, Options{Variant: VariantNFT, NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || removed[0].Variant != VariantNFT || removed[1].Family != redirect.IPv6 {
		t.Errorf("Remove(nft) = %v", removed)
	}
	if s := save(t, ns, VariantNFT); strings.Contains(s, "ISTIO") {
		t.Errorf("Remove(nft) left rules:\n%s", s)
	}
	if diff := cmp.Diff(before, save(t, ns, VariantLegacy)); diff != "" {
		t.Errorf("Remove(nft) changed legacy rules (-before +after):\n%s", diff)
	}
	found, err = Find(ctx, opts)
	if err != nil || len(found) != 2 || found[0].Variant != VariantLegacy {
		t.Errorf("Find after Remove(nft) = %v, %v; want the legacy rules", found, err)
	}
}
