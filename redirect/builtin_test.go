package redirect

import (
	"net/netip"
	"testing"
)

// builtinConfigs are configurations that put every kind of rule in built-in chains.
func builtinConfigs() map[string]Config {
	tproxy := DefaultConfig()
	tproxy.Mode, tproxy.IPv6, tproxy.RedirectDNS, tproxy.CaptureAllDNS, tproxy.DropInvalid = ModeTProxy, true, true, true, true
	tproxy.TProxyMark, tproxy.ProxyUIDs, tproxy.ProxyGIDs = 7, []uint32{0, 1337}, []uint32{1337, 5}
	tproxy.HostIPv4LoopbackCIDR = netip.MustParsePrefix("127.0.0.1/8")
	tproxy.ExcludeInterfaces, tproxy.KubeVirtInterfaces = []string{"eth9", "veth+"}, []string{"vm0"}
	ranges := tproxy
	ranges.OutboundIPRanges = PrefixList{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
	ranges.CaptureAllDNS, ranges.DNSServers = false, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	inet := tproxy
	inet.NativeNFTables = true
	return map[string]Config{"default": DefaultConfig(), "tproxy": tproxy, "ranges": ranges, "inet": inet}
}

// TestOwnsBuiltinRule: every rule Build puts in a built-in chain is recognised as the engine's, with
// the interface RETURNs only next to its chains; rules of its own chains other than jumps are not.
func TestOwnsBuiltinRule(t *testing.T) {
	for name, cfg := range builtinConfigs() {
		plan, err := Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, fp := range plan.Families {
			for _, tb := range fp.Tables {
				for _, c := range tb.Chains {
					for i := range c.Rules {
						r := &c.Rules[i]
						jump := r.Target.Kind == TargetJump
						iface := r.In.Name != "" && r.In.Name != "lo" || r.Out.Name != "" && r.Out.Name != "lo"
						switch {
						case c.Builtin && !OwnsBuiltinRule(tb.Name, c.Name, r, true):
							t.Errorf("%s %s %s/%s: %+v is not recognised", name, fp.Family, tb.Name, c.Name, r)
						case c.Builtin && !jump && iface && OwnsBuiltinRule(tb.Name, c.Name, r, false):
							t.Errorf("%s %s %s/%s: interface rule %+v recognised without chains of ours", name, fp.Family, tb.Name, c.Name, r)
						case c.Builtin && !jump && OwnsBuiltinRule(tb.Name, "INPUT", r, true):
							t.Errorf("%s %s %s/%s: %+v recognised in INPUT, where the engine puts no rule", name, fp.Family, tb.Name, c.Name, r)
						case !c.Builtin && !jump && (OwnsBuiltinRule(tb.Name, "PREROUTING", r, true) || OwnsBuiltinRule(tb.Name, "OUTPUT", r, true)):
							t.Errorf("%s %s %s/%s: %+v of our own chain has the shape of a built-in chain's", name, fp.Family, tb.Name, c.Name, r)
						}
					}
				}
			}
		}
	}
}

func TestOwnsBuiltinRuleForeign(t *testing.T) {
	hairpin := hairpinMark(uid(1337), netip.MustParsePrefix("127.0.0.1/32"))
	for name, r := range map[string]Rule{
		"jump to a foreign chain": {Target: jump("FOREIGN")},
		"bare RETURN":             {Target: Target{Kind: TargetReturn}},
		"negated interface":       {In: IfaceMatch{Name: "eth1", Not: true}, Target: Target{Kind: TargetReturn}},
		"interface and protocol":  {In: IfaceMatch{Name: "eth1"}, Proto: "tcp", Target: Target{Kind: TargetReturn}},
		"invalid interface name":  {Out: IfaceMatch{Name: "eth0;x"}, Target: Target{Kind: TargetReturn}},
		"other hairpin mark": func() Rule {
			r := hairpin
			r.Target.Mark = OutboundMark + 1
			return r
		}(),
		"negated owner": func() Rule {
			r := hairpin
			r.Owners = []OwnerMatch{{ID: 1337, Not: true}}
			return r
		}(),
		"two owners": func() Rule {
			r := hairpin
			r.Owners = []OwnerMatch{uid(1337), gid(1337)}
			return r
		}(),
		"save-mark for UDP": func() Rule {
			r := saveMark(1337)
			r.Proto = "udp"
			return r
		}(),
		"restore-mark of the packet mark": {Proto: "tcp", Mark: MarkMatch{Set: true, Value: 1337}, Target: Target{Kind: TargetRestoreMark}},
	} {
		for _, tc := range [][2]string{{TableNAT, "PREROUTING"}, {TableNAT, "OUTPUT"}, {TableMangle, "PREROUTING"}, {TableMangle, "OUTPUT"}} {
			if OwnsBuiltinRule(tc[0], tc[1], &r, true) {
				t.Errorf("%s: %+v recognised as the engine's in %s/%s", name, r, tc[0], tc[1])
			}
		}
	}
	// The engine's shapes in chains where it never puts them are foreign.
	for _, tc := range []struct {
		table, chain string
		r            Rule
	}{
		{TableMangle, "INPUT", returnIn("eth0", "")},
		{TableNAT, "POSTROUTING", returnOut("eth0", "")},
		{TableMangle, "OUTPUT", saveMark(1337)},
		{TableNAT, "OUTPUT", hairpin},
		{TableRaw, "OUTPUT", restoreMark(1337)},
	} {
		if OwnsBuiltinRule(tc.table, tc.chain, &tc.r, true) {
			t.Errorf("%+v recognised as the engine's in %s/%s", tc.r, tc.table, tc.chain)
		}
	}
}

// TestOutbound: the decisions of ISTIO_OUTPUT, resolved from a Config.
func TestOutbound(t *testing.T) {
	c := DefaultConfig()
	c.OutboundIPRanges = PrefixList{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.96.0.1/12"), netip.MustParsePrefix("127.1.2.3/32")}}
	c.OutboundIPRangesExclude = []netip.Prefix{netip.MustParsePrefix("fd00::5/64")}
	c.HostIPv4LoopbackCIDR = netip.MustParsePrefix("127.0.0.1/8")
	c.RedirectDNS, c.CaptureAllDNS, c.DNSServers = true, true, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	o := c.Outbound()
	if o.IncludeAll || !o.IncludesLoopback || o.Include[0] != netip.MustParsePrefix("10.96.0.0/12") ||
		o.Exclude[0] != netip.MustParsePrefix("fd00::/64") || o.HostLoopback != netip.MustParsePrefix("127.0.0.0/8") {
		t.Errorf("ranges: %+v", o)
	}
	if o.DNSPort != DNSProxyPort || !o.DNSAll || len(o.DNSServers) != 0 {
		t.Errorf("DNS with --capture-all-dns: port %d all %v servers %v", o.DNSPort, o.DNSAll, o.DNSServers)
	}
	c.CaptureAllDNS, c.DNSServers = false, nil
	if o := c.Outbound(); o.DNSPort != 0 {
		t.Errorf("DNS captured without servers: port %d", o.DNSPort)
	}
	o.ProxyUIDs[0] = 1
	if c.ProxyUIDs[0] != DefaultProxyID {
		t.Error("Outbound shares the Config's slices")
	}
}
