package backend

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// TestRuleCountersFollowPackets applies the default plan with each backend in a namespace of its own,
// with a foreign rule that reads like ours at the head of nat OUTPUT (iptables: a jump to
// ISTIO_OUTPUT for UDP; nftables: the same inserted into our own base chain), makes TCP connections
// from the namespace and checks, connection by connection, that RuleCounters moves, by one packet,
// the counters of exactly the plan's rules the connection's first packet goes through.
func TestRuleCountersFollowPackets(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	for _, s := range []Settings{{IptablesVariant: "nft"}, {IptablesVariant: "legacy"}, {NativeNFTables: true}} {
		name := "nftables"
		if !s.NativeNFTables {
			name = "iptables-" + s.IptablesVariant
		}
		t.Run(name, func(t *testing.T) {
			n := testutil.NewNetNS(t)
			s.NetNS = n.Path()
			b, _, err := Select(s)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := RuleCounters(ctx, b, &redirect.Plan{}); !errors.Is(err, ErrNoRules) {
				t.Errorf("counters of an empty namespace: %v, want ErrNoRules", err)
			}
			plan, err := b.Plan(redirect.DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Apply(ctx, &plan, Mode{}); err != nil {
				t.Fatal(err)
			}
			// IPv4 only, which the inet tables would count too; a route that does not leave by lo; the
			// proxy's outbound port listening.
			n.Run(t, "sh", "-ec", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link add v0 type veth peer name v1; "+
				"ip addr add 10.99.0.1/24 dev v0; ip link set v0 up; ip link set v1 up")
			if s.NativeNFTables {
				n.Run(t, "nft", "insert", "rule", "inet", nftables.TableName(redirect.TableNAT), nftables.ChainName("OUTPUT"),
					"meta", "l4proto", "udp", "counter", "jump", nftables.ChainName(redirect.ChainOutput))
			} else {
				n.Run(t, "iptables-"+s.IptablesVariant, "-w", "-t", "nat", "-I", "OUTPUT", "1", "-p", "udp", "-j", redirect.ChainOutput)
			}
			var l net.Listener
			if err := n.Do(func() (err error) {
				l, err = net.Listen("tcp4", fmt.Sprint(":", redirect.DefaultProxyPort))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			read := func() map[redirect.RuleRef]redirect.Counters {
				t.Helper()
				cs, err := RuleCounters(ctx, b, &plan)
				if err != nil {
					t.Fatal(err)
				}
				return cs
			}
			before := read()
			if got, want := len(before), planRules(&plan); got != want {
				t.Errorf("%d rules counted, want every rule of the plan: %d", got, want)
			}
			for ref, c := range before {
				if c != (redirect.Counters{}) {
					t.Errorf("%s counted %+v before any connection", ref, c)
				}
			}

			fam := plan.Families[0].Family
			nat := func(chain string, i int) redirect.RuleRef {
				return redirect.RuleRef{Family: fam, Table: redirect.TableNAT, Chain: chain, Index: i}
			}
			// The rules by what they do, so that the test names them whatever their index.
			output := findRule(t, &plan, fam, "OUTPUT", func(r *redirect.Rule) bool { return r.Target.Chain == redirect.ChainOutput })
			appLo := findRule(t, &plan, fam, redirect.ChainOutput, func(r *redirect.Rule) bool {
				return r.Out.Name == "lo" && len(r.Owners) == 1 && r.Owners[0].Not && !r.Owners[0].GID
			})
			proxy := findRule(t, &plan, fam, redirect.ChainOutput, func(r *redirect.Rule) bool {
				return r.Out.Name == "" && len(r.Owners) == 1 && !r.Owners[0].Not && !r.Owners[0].GID && r.Target.Kind == redirect.TargetReturn
			})
			capture := findRule(t, &plan, fam, redirect.ChainOutput, func(r *redirect.Rule) bool { return r.Target.Chain == redirect.ChainRedirect })
			app, proxyCred := testutil.Cred{UID: 1000, GID: 1000}, testutil.Cred{UID: 1337, GID: 1337}
			local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), redirect.DefaultProxyPort)
			remote := netip.MustParseAddrPort("10.99.0.2:80") // routed out of the veth, captured to the proxy port
			for _, tc := range []struct {
				name string
				from testutil.Cred
				to   netip.AddrPort
				want []redirect.RuleRef
			}{
				{"app to localhost", app, local, []redirect.RuleRef{nat("OUTPUT", output), nat(redirect.ChainOutput, appLo)}},
				{"proxy to localhost", proxyCred, local, []redirect.RuleRef{nat("OUTPUT", output), nat(redirect.ChainOutput, proxy)}},
				{"app to a remote address", app, remote, []redirect.RuleRef{nat("OUTPUT", output), nat(redirect.ChainOutput, capture),
					nat(redirect.ChainRedirect, 0)}},
			} {
				before := read()
				if _, err := n.Exec(&tc.from, nil, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", tc.to.Addr(), tc.to.Port())); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				wantMoved := map[redirect.RuleRef]uint64{}
				for _, ref := range tc.want {
					wantMoved[ref] = 1
				}
				gotMoved := map[redirect.RuleRef]uint64{}
				for ref, c := range read() {
					if p := c.Packets - before[ref].Packets; p != 0 || c.Bytes != before[ref].Bytes {
						gotMoved[ref] = p
					}
				}
				if diff := cmp.Diff(wantMoved, gotMoved); diff != "" {
					t.Errorf("%s: packets counted per rule of the plan (-want +got):\n%s", tc.name, diff)
				}
			}

			// Rules of other settings: the plan's rules the namespace lacks are named, the others counted.
			cfg := redirect.DefaultConfig()
			cfg.OutboundPortsExclude = []uint16{9000}
			other, err := b.Plan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := RuleCounters(ctx, b, &other)
			if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "9000") || !strings.Contains(err.Error(), "2 rules") {
				t.Errorf("counters of another plan: %v, want drift naming the TCP and UDP rules for port 9000", err)
			}
			if got, want := len(cs), planRules(&other)-2; got != want {
				t.Errorf("counters of another plan: %d rules, want %d", got, want)
			}
		})
	}
}

func planRules(p *redirect.Plan) int {
	n := 0
	for _, fp := range p.Families {
		for _, t := range fp.Tables {
			for _, c := range t.Chains {
				n += len(c.Rules)
			}
		}
	}
	return n
}

// findRule returns the index of the one rule of nat chain in family f of plan for which match holds.
func findRule(t *testing.T, plan *redirect.Plan, f redirect.Family, chain string, match func(*redirect.Rule) bool) int {
	t.Helper()
	found := -1
	if c := plan.Family(f).Table(redirect.TableNAT).Chain(chain); c != nil {
		for i := range c.Rules {
			if match(&c.Rules[i]) {
				if found >= 0 {
					t.Fatalf("nat/%s: rules %d and %d both match", chain, found, i)
				}
				found = i
			}
		}
	}
	if found < 0 {
		t.Fatalf("nat/%s: no rule matches", chain)
	}
	return found
}

// TestRuleCountersRandomPlans: for random configurations, every rule of the plan that each backend
// applied is paired with its own counter: the backend's rendering of it matches what the kernel holds.
func TestRuleCountersRandomPlans(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(15, 3))
	for i := range 10 {
		for _, s := range []Settings{{IptablesVariant: "nft"}, {IptablesVariant: "legacy"}, {NativeNFTables: true}} {
			cfg := randconfig.Config(r, redirect.DefaultConfig())
			n := testutil.NewNetNS(t)
			s.NetNS = n.Path()
			b, _, err := Select(s)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := b.Plan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Apply(ctx, &plan, Mode{}); err != nil {
				t.Fatalf("config %d, %s: apply: %v", i, b.Name(), err)
			}
			cs, err := RuleCounters(ctx, b, &plan)
			if err != nil {
				t.Errorf("config %d, %s: %v", i, b.Name(), err)
			}
			if got, want := len(cs), planRules(&plan); got != want {
				t.Errorf("config %d, %s: %d rules counted, want %d", i, b.Name(), got, want)
			}
		}
	}
}

func TestAlign(t *testing.T) {
	for _, tc := range []struct {
		want, got []string
		pairs     map[int]int
	}{
		{[]string{"a", "b", "c"}, []string{"a", "b", "c"}, map[int]int{0: 0, 1: 1, 2: 2}},
		// A foreign look-alike first, ours after it.
		{[]string{"j"}, []string{"x", "j"}, map[int]int{0: 1}},
		{[]string{"a", "b"}, []string{"b", "a", "b"}, map[int]int{0: 1, 1: 2}},
		{[]string{"a", "b", "c"}, []string{"a", "c"}, map[int]int{0: 0, 2: 1}},
		{[]string{"a"}, nil, map[int]int{}},
	} {
		if diff := cmp.Diff(tc.pairs, align(tc.want, tc.got)); diff != "" {
			t.Errorf("align(%q, %q) (-want +got):\n%s", tc.want, tc.got, diff)
		}
	}
}

// TestNFTKey: nft's words for a rule read from the kernel and the plan's text of it reduce alike.
func TestNFTKey(t *testing.T) {
	for _, tc := range [][2]string{
		{`oifname "lo" meta l4proto tcp meta nfproto ipv4 ip daddr != 127.0.0.1 th dport != { 53, 15008 } meta skuid 1337 counter jump istio-in-redirect`,
			"oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } meta skuid 1337 counter jump istio-in-redirect"},
		{"meta l4proto tcp ct state established,related counter jump istio-divert", "meta l4proto tcp ct state related,established counter jump istio-divert"},
		{"meta nfproto ipv6 ip6 daddr fd00::10 meta l4proto udp th dport 53 counter redirect to :15053", "ip6 daddr fd00::10/128 udp dport 53 counter redirect to :15053"},
		{"meta l4proto tcp meta mark 1337 counter ct mark set meta mark", "meta l4proto tcp meta mark 1337 counter ct mark set mark"},
		{"meta nfproto ipv4 ip daddr 10.16.0.0 counter return", "ip daddr 10.16.0.0/12 counter return"},
		{`oifname "veth" counter return`, "oifname veth* counter return"},
	} {
		if a, b := nftKey(tc[0]), nftKey(tc[1]); a != b {
			t.Errorf("%q\n and %q\n reduce to %q and %q", tc[0], tc[1], a, b)
		}
	}
	if a, b := nftKey("ip daddr != 10.0.0.1 th dport 53 counter return"), nftKey("ip daddr 10.0.0.1 th dport != 53 counter return"); a == b {
		t.Errorf("negations on other values reduce alike: %q", a)
	}
}
