package nftables

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/expr"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestCountersFollowPackets applies the default plan (native nftables) in a fresh namespace, makes TCP
// connections from it and checks, connection by connection, that the counters of exactly the nat rules
// the connection's first packet goes through move, by one packet, and no other rule's does. Every
// counter pairs with the rule of the plan at its index.
func TestCountersFollowPackets(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	plan := build(t, injector())
	opts := Options{NetNS: n.Path()}
	if err := Apply(t.Context(), plan, opts); err != nil {
		t.Fatal(err)
	}
	// No IPv6, which the inet tables would count too; one IPv4 route that does not leave by lo; the
	// proxy's outbound port listening.
	n.Run(t, "sh", "-ec", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link add v0 type veth peer name v1; "+
		"ip addr add 10.99.0.1/24 dev v0; ip link set v0 up; ip link set v1 up")
	var l net.Listener
	if err := netns.Do(n.Path(), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprint(":", redirect.DefaultProxyPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	fp := plan.Family(redirect.Inet)
	compiled, err := compile(fp)
	if err != nil {
		t.Fatal(err)
	}
	want := wantState(compiled)
	read := func() map[string]Counter {
		t.Helper()
		cs, err := Counters(opts)
		if err != nil {
			t.Fatal(err)
		}
		byRule := map[string]Counter{}
		for _, c := range cs {
			byRule[fmt.Sprintf("%s/%s #%d", c.Table, c.Chain, c.Index)] = c
		}
		return byRule
	}
	before := read()
	var total int
	for _, tb := range fp.Tables {
		for _, c := range tb.Chains {
			total += len(c.Rules)
			for i := range c.Rules {
				key := fmt.Sprintf("%s/%s #%d", tb.Name, c.Name, i)
				got, ok := before[key]
				switch {
				case !ok:
					t.Errorf("no counter for %s", key)
				case got.Rule != want[TableName(tb.Name)].Chains[ChainName(c.Name)].Rules[i].Exprs:
					t.Errorf("%s is not the plan's rule at its index", got)
				case got.Packets != 0 || got.Bytes != 0:
					t.Errorf("before any connection: %s", got)
				}
			}
		}
	}
	if len(before) != total {
		t.Errorf("%d counters, want one per rule of the plan: %d", len(before), total)
	}

	app, proxy := testutil.Cred{UID: 1000, GID: 1000}, testutil.Cred{UID: 1337, GID: 1337}
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), redirect.DefaultProxyPort)
	remote := netip.MustParseAddrPort("10.99.0.2:80") // routed out of the veth, captured to the proxy port
	for _, tc := range []struct {
		name string
		from testutil.Cred
		to   netip.AddrPort
		want []string // "chain: text" of the nat rules the first packet goes through
	}{
		{"app to localhost", app, local, []string{"OUTPUT: counter jump istio-output", "ISTIO_OUTPUT: oifname lo meta skuid != 1337 counter return"}},
		{"proxy to localhost", proxy, local, []string{"OUTPUT: counter jump istio-output", "ISTIO_OUTPUT: meta skuid 1337 counter return"}},
		{"app to a remote address", app, remote, []string{"OUTPUT: counter jump istio-output", "ISTIO_OUTPUT: counter jump istio-redirect",
			"ISTIO_REDIRECT: meta l4proto tcp counter redirect to :15001"}},
	} {
		wantMoved := map[string]uint64{}
		for _, w := range tc.want {
			chain, text, _ := strings.Cut(w, ": ")
			wantMoved[fmt.Sprintf("%s/%s #%d", redirect.TableNAT, chain, ruleIndex(t, fp, chain, text))] = 1
		}
		before := read()
		if _, err := n.Exec(&tc.from, nil, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", tc.to.Addr(), tc.to.Port())); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		gotMoved := map[string]uint64{}
		for key, c := range read() {
			if p := c.Packets - before[key].Packets; p != 0 || c.Bytes != before[key].Bytes {
				gotMoved[key] = p
			}
		}
		if diff := cmp.Diff(wantMoved, gotMoved); diff != "" {
			t.Errorf("%s: packets counted per rule (-want +got):\n%s", tc.name, diff)
		}
	}
}

// ruleIndex returns the index of the rule of the plan's nat chain whose nft text is text.
func ruleIndex(t *testing.T, fp *redirect.FamilyPlan, chain, text string) int {
	t.Helper()
	if c := fp.Table(redirect.TableNAT).Chain(chain); c != nil {
		for i := range c.Rules {
			if got, err := RuleText(&c.Rules[i]); err == nil && got == text {
				t.Logf("nat/%s #%d is %s: %s", chain, i, c.Rules[i].Flow, c.Rules[i].Why)
				return i
			}
		}
	}
	t.Fatalf("the plan has no rule %q in nat/%s", text, chain)
	return 0
}

func TestRuleCounts(t *testing.T) {
	r, err := rawExprs([]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Counter{Packets: 3, Bytes: 180},
		&expr.Verdict{Kind: expr.VerdictReturn}})
	if err != nil {
		t.Fatal(err)
	}
	if p, b, err := r.counts(); p != 3 || b != 180 || err != nil {
		t.Errorf("counts() = %d, %d, %v; want 3, 180, nil", p, b, err)
	}
	if d := r.describe(nil); !strings.Contains(d, "; counter; ") {
		t.Errorf("describe() = %q: counter values must not show", d)
	}
	if p, b, err := (rawRule{{name: "counter", data: []byte{8, 0, 1, 0, 0, 0, 0, 1}}}).counts(); err == nil {
		t.Errorf("a 4-byte byte counter: counts() = %d, %d, nil; want an error", p, b)
	}
}

// FuzzCountersRule: whatever a rule dump holds, reading its counters never panics, and the values of a
// counter expression come back as they were sent.
func FuzzCountersRule(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint64(0))
	f.Add([]byte{8, 0, 1, 0, 0, 0, 0, 1}, uint64(1), uint64(1<<63))
	f.Fuzz(func(t *testing.T, data []byte, packets, bytes uint64) {
		_, _, _ = (rawRule{{name: "counter", data: data}}).counts()
		if _, _, r, err := parseRule(data); err == nil {
			_, _, _ = r.counts()
		}
		r, err := rawExprs([]expr.Any{&expr.Counter{Packets: packets, Bytes: bytes}})
		if err != nil {
			t.Fatal(err)
		}
		if p, b, err := r.counts(); p != packets || b != bytes || err != nil {
			t.Errorf("counts() = %d, %d, %v; want %d, %d", p, b, err, packets, bytes)
		}
	})
}
