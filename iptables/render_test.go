package iptables

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/internal/testutil/golden"
	"github.com/shuntmesh/shunt/redirect"
)

// istioBase is the base of Istio's own golden tests: nothing captured until a case says so.
func istioBase() redirect.Config {
	c := redirect.DefaultConfig()
	c.InboundPorts = redirect.PortList{}
	c.InboundPortsExclude = nil
	c.OutboundIPRanges = redirect.PrefixList{}
	return c
}

func mustPrefixes(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	ps, err := redirect.ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func mustAddrs(t *testing.T, s string) []netip.Addr {
	t.Helper()
	as, err := redirect.ParseAddrs(s)
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func renderCases(t *testing.T) map[string]redirect.Config {
	cases := map[string]redirect.Config{}
	add := func(name string, base redirect.Config, edit func(*redirect.Config)) {
		edit(&base)
		cases[name] = base
	}
	add("default", redirect.DefaultConfig(), func(*redirect.Config) {})
	add("default-ipv6", redirect.DefaultConfig(), func(c *redirect.Config) { c.IPv6 = true })
	add("default-tproxy-ipv6", redirect.DefaultConfig(), func(c *redirect.Config) { c.Mode = redirect.ModeTProxy; c.IPv6 = true })
	add("empty", istioBase(), func(*redirect.Config) {})
	add("dns-uid-gid", istioBase(), func(c *redirect.Config) {
		c.RedirectDNS, c.IPv6 = true, true
		c.DNSServers = mustAddrs(t, "127.0.0.53,::127.0.0.53")
		c.ProxyGIDs, c.ProxyUIDs = []uint32{1, 2}, []uint32{3, 4}
	})
	add("capture-all-dns", redirect.DefaultConfig(), func(c *redirect.Config) { c.RedirectDNS, c.CaptureAllDNS, c.IPv6 = true, true, true })
	add("tproxy", istioBase(), func(c *redirect.Config) {
		c.Mode, c.IPv6, c.RedirectDNS = redirect.ModeTProxy, true, true
		c.InboundPorts = redirect.PortList{All: true}
		c.OutboundIPRangesExclude = mustPrefixes(t, "1.1.0.0/16")
		c.OutboundIPRanges.Prefixes = mustPrefixes(t, "9.9.0.0/16")
		c.DNSServers = mustAddrs(t, "127.0.0.53")
		c.ExcludeInterfaces = []string{"not-istio-nic"}
	})
	add("inbound-ports-tproxy", istioBase(), func(c *redirect.Config) {
		c.Mode = redirect.ModeTProxy
		c.InboundPorts.Ports = []uint16{32000, 31000}
	})
	add("ipv6-ipnets-virt", istioBase(), func(c *redirect.Config) {
		c.IPv6 = true
		c.InboundPorts.Ports = []uint16{4000, 5000}
		c.InboundPortsExclude = []uint16{6000, 7000}
		c.KubeVirtInterfaces = []string{"eth0", "eth1"}
		c.OutboundIPRangesExclude = mustPrefixes(t, "2001:db8::/32")
		c.OutboundIPRanges.Prefixes = mustPrefixes(t, "2001:db8::/32,10.0.0.0/8")
	})
	add("owner-groups-include", istioBase(), func(c *redirect.Config) { c.OwnerGroups = redirect.GroupFilter{Include: []uint32{4242, 202}} })
	add("owner-groups-exclude", istioBase(), func(c *redirect.Config) {
		c.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{888, 4243}}
	})
	add("loopback-include", istioBase(), func(c *redirect.Config) {
		c.OutboundIPRanges.Prefixes = mustPrefixes(t, "127.1.2.3/32")
		c.HostIPv4LoopbackCIDR = netip.MustParsePrefix("127.0.0.1/8")
	})
	add("ports-and-drop-invalid", redirect.DefaultConfig(), func(c *redirect.Config) {
		c.OutboundPorts = []uint16{32000}
		c.OutboundPortsExclude = []uint16{5555, 6666}
		c.DropInvalid = true
	})
	return cases
}

func renderPlan(t *testing.T, cfg redirect.Config, explain bool) string {
	t.Helper()
	plan, err := redirect.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range plan.Families {
		fp := &plan.Families[i]
		b.WriteString("# " + fp.Family.String() + "\n")
		for _, l := range podroute.Explain(fp) {
			b.WriteString("# " + l + "\n")
		}
		b.Write(Render(fp, RenderOptions{Explain: explain}))
	}
	return b.String()
}

func TestRenderGolden(t *testing.T) {
	for name, cfg := range renderCases(t) {
		t.Run(name, func(t *testing.T) {
			got := renderPlan(t, cfg, true)
			golden.Check(t, filepath.Join("testdata", name+".golden"), got)
		})
	}
}

// TestRenderDeterministic: the same Config always renders the same bytes.
func TestRenderDeterministic(t *testing.T) {
	for name, cfg := range renderCases(t) {
		a, b := renderPlan(t, cfg, false), renderPlan(t, cfg, false)
		if a != b {
			t.Errorf("%s: two renders differ", name)
		}
	}
}

// TestRenderRoundTrip: what Render installs is what OwnedState reads back, so a second apply is a no-op.
func TestRenderRoundTrip(t *testing.T) {
	for name, cfg := range renderCases(t) {
		plan, err := redirect.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i := range plan.Families {
			fp := &plan.Families[i]
			saved := simulateRestore(t, Render(fp, RenderOptions{}))
			if d := Diff(OwnedState(saved), PlanState(fp)); len(d) > 0 {
				t.Errorf("%s %s: read-back differs:\n%s", name, fp.Family, strings.Join(d, "\n"))
			}
		}
	}
}

// simulateRestore turns restore input (declarations, -A and -I N) into the tables it creates in an
// empty namespace, as ParseSave would read them back.
func simulateRestore(t *testing.T, input []byte) map[string]*SavedTable {
	t.Helper()
	tables := map[string]*SavedTable{}
	var cur *SavedTable
	for _, line := range strings.Split(string(input), "\n") {
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
		case line[0] == '*':
			cur = &SavedTable{Name: line[1:], Rules: map[string][]string{}}
			cur.Chains = append(cur.Chains, redirect.BuiltinChains...)
			tables[cur.Name] = cur
		case line[0] == ':':
			cur.Chains = append(cur.Chains, strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-A "):
			f := strings.SplitN(line, " ", 3)
			cur.Rules[f[1]] = append(cur.Rules[f[1]], f[2])
		case strings.HasPrefix(line, "-I "):
			f := strings.SplitN(line, " ", 4)
			var pos int
			for _, c := range f[2] {
				pos = pos*10 + int(c-'0')
			}
			rules := cur.Rules[f[1]]
			rules = append(rules[:pos-1], append([]string{f[3]}, rules[pos-1:]...)...)
			cur.Rules[f[1]] = rules
		default:
			t.Fatalf("unexpected restore line %q", line)
		}
	}
	return tables
}
