package iptables

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestCountersFollowPackets applies the default plan in a fresh namespace, makes TCP connections from
// it and checks, connection by connection, that the counters of exactly the nat rules the connection's
// first packet goes through move, by one packet, and no other counter of ours does. A foreign rule
// counting the same packets at the head of OUTPUT is left out, and every counter pairs with the rule
// of the plan at its index.
func TestCountersFollowPackets(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	app, proxy := testutil.Cred{UID: 1000, GID: 1000}, testutil.Cred{UID: 1337, GID: 1337}
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), redirect.DefaultProxyPort)
	remote := netip.MustParseAddrPort("10.99.0.2:80") // routed out of a veth, captured to the proxy port
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			n := testutil.NewNetNS(t)
			plan := mustBuild(t, redirect.DefaultConfig())
			opts := Options{Variant: v, NetNS: n.Path()}
			if err := Apply(ctx, plan, opts); err != nil {
				t.Fatal(err)
			}
			n.Run(t, "iptables-"+string(v), "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp")
			// No IPv6 (no router or listener reports), one IPv4 route that does not leave by lo.
			n.Run(t, "sh", "-ec", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link add v0 type veth peer name v1; "+
				"ip addr add 10.99.0.1/24 dev v0; ip link set v0 up; ip link set v1 up")
			listen(t, n, redirect.DefaultProxyPort)

			fp := plan.Family(redirect.IPv4)
			before := counters(ctx, t, opts)
			var total int
			for _, tb := range fp.Tables {
				for _, c := range tb.Chains {
					total += len(c.Rules)
				}
			}
			if len(before) != total {
				t.Errorf("%d counters, want one per rule of the plan: %d", len(before), total)
			}
			for _, c := range before {
				if c.Family != redirect.IPv4 || c.Packets != 0 || c.Bytes != 0 {
					t.Errorf("before any connection: %s", c)
				}
				if r := planRule(fp, c.Table, c.Chain, c.Index); r == nil || RuleSpec(r, fp.Family) != c.Rule {
					t.Errorf("%s is not the plan's rule at its index", c)
				}
			}

			for _, tc := range []struct {
				name string
				from testutil.Cred
				to   netip.AddrPort
				want []string // "chain: spec" of the nat rules the first packet goes through
			}{
				{"app to localhost", app, local, []string{"OUTPUT: -j ISTIO_OUTPUT", "ISTIO_OUTPUT: -o lo -m owner ! --uid-owner 1337 -j RETURN"}},
				{"proxy to localhost", proxy, local, []string{"OUTPUT: -j ISTIO_OUTPUT", "ISTIO_OUTPUT: -m owner --uid-owner 1337 -j RETURN"}},
				{"app to a remote address", app, remote, []string{"OUTPUT: -j ISTIO_OUTPUT", "ISTIO_OUTPUT: -j ISTIO_REDIRECT",
					"ISTIO_REDIRECT: -p tcp -j REDIRECT --to-ports 15001"}},
			} {
				want := map[string]uint64{}
				for _, w := range tc.want {
					chain, spec, _ := strings.Cut(w, ": ")
					i := planIndex(t, fp, redirect.TableNAT, chain, spec)
					want[counterKey(redirect.TableNAT, chain, i, spec)] = 1
				}
				before := counters(ctx, t, opts)
				connect(t, n, tc.from, tc.to)
				if diff := cmp.Diff(want, moved(t, before, counters(ctx, t, opts))); diff != "" {
					t.Errorf("%s: packets counted per rule (-want +got):\n%s", tc.name, diff)
				}
			}
			// The foreign rule counted every connection and was left out.
			if save := n.Run(t, "iptables-"+string(v)+"-save", "-c", "-t", "nat"); !regexp.MustCompile(`(?m)^\[3:\d+\] -A OUTPUT -p tcp$`).MatchString(save) {
				t.Errorf("the foreign rule did not count the 3 connections:\n%s", save)
			}
		})
	}
}

func TestCountersNeedVariant(t *testing.T) {
	for _, v := range []Variant{"", "nf_tables"} {
		if _, err := Counters(context.Background(), Options{Variant: v}); err == nil || !strings.Contains(err.Error(), "Options.Variant") {
			t.Errorf("Counters with variant %q: %v, want an error naming Options.Variant", v, err)
		}
	}
}

func counters(ctx context.Context, t *testing.T, opts Options) []Counter {
	t.Helper()
	cs, err := Counters(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func counterKey(table, chain string, index int, rule string) string {
	return fmt.Sprintf("%s/%s #%d %s", table, chain, index, rule)
}

// moved returns the packets each counter of after counted since before, for those that moved.
func moved(t *testing.T, before, after []Counter) map[string]uint64 {
	t.Helper()
	was := map[string]Counter{}
	for _, c := range before {
		was[counterKey(c.Table, c.Chain, c.Index, c.Rule)] = c
	}
	out := map[string]uint64{}
	for _, c := range after {
		key := counterKey(c.Table, c.Chain, c.Index, c.Rule)
		if p := c.Packets - was[key].Packets; p > 0 {
			out[key] = p
			if c.Bytes <= was[key].Bytes {
				t.Errorf("%s: %d packets and no bytes", key, p)
			}
		}
	}
	return out
}

func planRule(fp *redirect.FamilyPlan, table, chain string, i int) *redirect.Rule {
	if t := fp.Table(table); t != nil {
		if c := t.Chain(chain); c != nil && i < len(c.Rules) {
			return &c.Rules[i]
		}
	}
	return nil
}

// planIndex returns the index of the rule of the plan's chain that renders as spec.
func planIndex(t *testing.T, fp *redirect.FamilyPlan, table, chain, spec string) int {
	t.Helper()
	for i := 0; ; i++ {
		r := planRule(fp, table, chain, i)
		if r == nil {
			t.Fatalf("the plan has no rule %q in %s/%s", spec, table, chain)
		}
		if RuleSpec(r, fp.Family) == spec {
			t.Logf("%s/%s #%d is %s: %s", table, chain, i, r.Flow, r.Why)
			return i
		}
	}
}

// listen accepts TCP connections to port in n, on every address, until t ends.
func listen(t *testing.T, n *testutil.NetNS, port uint16) {
	t.Helper()
	var l net.Listener
	err := netns.Do(n.Path(), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// connect opens a TCP connection from n to addr as cred, with bash's /dev/tcp, and closes it.
func connect(t *testing.T, n *testutil.NetNS, cred testutil.Cred, addr netip.AddrPort) {
	t.Helper()
	if _, err := n.Exec(&cred, nil, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr.Addr(), addr.Port())); err != nil {
		t.Fatalf("connect to %s as %s: %v", addr, cred, err)
	}
}
