package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// Chain names. They are shared with Istio and its tooling: never rename them.
const (
	ChainInbound    = "ISTIO_INBOUND"
	ChainOutput     = "ISTIO_OUTPUT"
	ChainRedirect   = "ISTIO_REDIRECT"
	ChainInRedirect = "ISTIO_IN_REDIRECT"
	ChainDivert     = "ISTIO_DIVERT"
	ChainTProxy     = "ISTIO_TPROXY"
	ChainDrop       = "ISTIO_DROP"
	ChainOutputDNS  = "ISTIO_OUTPUT_DNS"
)

// OwnedChains lists every chain the engine may create, in any table.
var OwnedChains = []string{
	ChainInbound, ChainOutput, ChainRedirect, ChainInRedirect, ChainDivert, ChainTProxy, ChainDrop, ChainOutputDNS,
}

// Tables in the order they are planned and rendered.
const (
	TableMangle = "mangle"
	TableNAT    = "nat"
	TableRaw    = "raw"
)

// Tables lists the tables the engine programs.
var Tables = []string{TableMangle, TableNAT, TableRaw}

// BuiltinChains are the kernel's chains; every other chain is user-defined.
var BuiltinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// IsBuiltin reports whether chain is one of the kernel's chains.
func IsBuiltin(chain string) bool { return slices.Contains(BuiltinChains, chain) }

// IsOwned reports whether chain is one the engine creates.
func IsOwned(chain string) bool { return slices.Contains(OwnedChains, chain) }

// Build returns the Plan for cfg, after validating it. It performs no I/O.
func Build(cfg Config) (Plan, error) {
	if err := cfg.Validate(); err != nil {
		return Plan{}, err
	}
	fams := []Family{IPv4}
	if cfg.IPv6 {
		fams = append(fams, IPv6)
	}
	b := newBuilder(fams, cfg.NativeNFTables)
	b.build(&cfg)
	return b.plan(&cfg), nil
}

// fams selects the families a rule is added to.
type fams int

const (
	both fams = iota
	v4
	v6
)

type chainBuilder struct {
	name  string
	rules []Rule
}

type tableBuilder struct {
	chains []*chainBuilder
}

func (t *tableBuilder) chain(name string) *chainBuilder {
	for _, c := range t.chains {
		if c.name == name {
			return c
		}
	}
	c := &chainBuilder{name: name}
	t.chains = append(t.chains, c)
	return c
}

type builder struct {
	families []Family // the address families captured
	// inet builds one set of tables for both families, as nftables' inet family holds them: a rule
	// added for both families is added once, family-specific rules go into the same chains.
	inet   bool
	tables map[Family]map[string]*tableBuilder
}

func newBuilder(families []Family, inet bool) *builder {
	b := &builder{families: families, inet: inet, tables: make(map[Family]map[string]*tableBuilder)}
	for _, f := range b.targets(both) {
		b.tables[f] = make(map[string]*tableBuilder)
		for _, t := range Tables {
			b.tables[f][t] = &tableBuilder{}
		}
	}
	return b
}

// targets returns the rule sets that an addition for the families sel selects goes into: one per
// family, or the single inet one.
func (b *builder) targets(sel fams) []Family {
	var out []Family
	b.each(sel, func(f Family) {
		if b.inet {
			f = Inet
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	})
	return out
}

// store returns the rule set of family f's rules.
func (b *builder) store(f Family) map[string]*tableBuilder {
	if b.inet {
		return b.tables[Inet]
	}
	return b.tables[f]
}

// each calls fn for every planned family that sel selects.
func (b *builder) each(sel fams, fn func(Family)) {
	for _, f := range b.families {
		if sel == both || (sel == v4 && f == IPv4) || (sel == v6 && f == IPv6) {
			fn(f)
		}
	}
}

// add appends r to table/chain in the selected families.
func (b *builder) add(sel fams, table, chain string, r Rule) {
	for _, f := range b.targets(sel) {
		c := b.tables[f][table].chain(chain)
		c.rules = append(c.rules, r)
	}
}

// insert inserts r at 1-based position pos of table/chain, as `iptables -I chain pos` would.
func (b *builder) insert(sel fams, table, chain string, pos int, r Rule) {
	if IsBuiltin(chain) {
		r.Head = true
	}
	for _, f := range b.targets(sel) {
		c := b.tables[f][table].chain(chain)
		c.rules = slices.Insert(c.rules, min(pos-1, len(c.rules)), r)
	}
}

// addPerFamily appends the rule mk returns for each family (rules with family-specific addresses); in
// inet tables the IPv4 rule comes first.
func (b *builder) addPerFamily(table, chain string, mk func(Family) Rule) {
	b.each(both, func(f Family) {
		c := b.store(f)[table].chain(chain)
		c.rules = append(c.rules, mk(f))
	})
}

func (b *builder) plan(cfg *Config) Plan {
	var p Plan
	for _, f := range b.targets(both) {
		fp := FamilyPlan{Family: f, Covers: []Family{f}}
		if f == Inet {
			fp.Covers = b.families
		}
		for _, tn := range Tables {
			tb := b.tables[f][tn]
			// A chain that is only jumped to still has to exist.
			for _, c := range slices.Clone(tb.chains) {
				for _, r := range c.rules {
					if r.Target.Kind == TargetJump {
						tb.chain(r.Target.Chain)
					}
				}
			}
			if len(tb.chains) == 0 {
				continue
			}
			t := Table{Name: tn}
			for _, c := range tb.chains {
				t.Chains = append(t.Chains, Chain{Name: c.name, Builtin: IsBuiltin(c.name), Rules: c.rules})
			}
			fp.Tables = append(fp.Tables, t)
		}
		if cfg.Mode == ModeTProxy && (cfg.InboundPorts.All || len(cfg.InboundPorts.Ports) > 0) {
			fp.TProxy = &TProxyRoute{Mark: cfg.TProxyMark, Table: cfg.TProxyRouteTable}
		}
		if slices.Contains(fp.Covers, IPv6) {
			fp.LoopbackAddrs = []netip.Prefix{netip.PrefixFrom(PassthroughV6, 128)}
		}
		p.Families = append(p.Families, fp)
	}
	return p
}

// Helpers for building rules.

func tcp(r Rule) Rule { r.Proto = "tcp"; return r }

func jump(chain string) Target { return Target{Kind: TargetJump, Chain: chain} }

func dport(ports ...uint16) PortMatch { return PortMatch{Ports: ports} }

func notDport(ports ...uint16) PortMatch { return PortMatch{Ports: ports, Not: true} }

func uid(id uint32) OwnerMatch { return OwnerMatch{ID: id} }

func gid(id uint32) OwnerMatch { return OwnerMatch{GID: true, ID: id} }

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func (b *builder) build(cfg *Config) {
	loopback := func(f Family) netip.Prefix {
		if f == IPv6 {
			return netip.MustParsePrefix("::1/128")
		}
		return cfg.HostIPv4LoopbackCIDR.Masked()
	}
	passthrough := func(f Family) netip.Prefix {
		if f == IPv6 {
			return host(PassthroughV6)
		}
		return host(PassthroughV4)
	}
	tproxy := cfg.Mode == ModeTProxy
	includeV4, includeV6 := splitPrefixes(cfg.OutboundIPRanges.Prefixes)
	excludeV4, excludeV6 := splitPrefixes(cfg.OutboundIPRangesExclude)
	dnsV4, dnsV6 := splitAddrs(cfg.DNSServers)
	redirectDNS := cfg.RedirectDNS && (cfg.CaptureAllDNS || len(dnsV4) > 0 || len(dnsV6) > 0)
	includesLoopback := slices.ContainsFunc(cfg.OutboundIPRanges.Prefixes, func(p netip.Prefix) bool {
		return p.Addr().IsLoopback()
	})

	// Excluded interfaces: nothing in or out of them is captured.
	for _, name := range cfg.ExcludeInterfaces {
		why := "traffic arriving on excluded interface " + name + " is not captured"
		b.add(both, TableNAT, "PREROUTING", Rule{In: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions, Why: why})
		b.add(both, TableNAT, "OUTPUT", Rule{Out: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
			Why: "traffic leaving by excluded interface " + name + " is not captured"})
	}
	if tproxy {
		for _, name := range cfg.ExcludeInterfaces {
			b.add(both, TableMangle, "PREROUTING", Rule{In: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: "traffic arriving on excluded interface " + name + " is not TPROXYed"})
			b.add(both, TableMangle, "OUTPUT", Rule{Out: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: "traffic leaving by excluded interface " + name + " is not marked"})
		}
	}
	// Virtual-machine interfaces: their inbound traffic is not treated as inbound.
	for _, name := range cfg.KubeVirtInterfaces {
		b.insert(both, TableNAT, "PREROUTING", 1, Rule{In: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
			Why: "traffic from virtual interface " + name + " is not inbound traffic"})
	}
	if cfg.DropInvalid {
		r := Rule{CTState: []string{"INVALID"}, Target: jump(ChainDrop), Flow: FlowInbound,
			Why: "conntrack-invalid (out of window) packets are dropped instead of being reset"}
		if b.inet {
			r.Proto = "tcp" // Istio's native nftables mode drops only invalid TCP
		}
		b.add(both, TableMangle, "PREROUTING", r)
		b.add(both, TableMangle, ChainDrop, Rule{Target: Target{Kind: TargetDrop}, Flow: FlowInbound, Why: "drop invalid packets"})
	}

	b.add(both, TableNAT, ChainInbound, tcp(Rule{DPort: dport(cfg.InboundTunnelPort), Target: Target{Kind: TargetReturn}, Flow: FlowAgentPorts,
		Why: fmt.Sprintf("the tunnel port %d is served by the proxy directly, never redirected", cfg.InboundTunnelPort)}))
	b.add(both, TableNAT, ChainRedirect, tcp(Rule{Target: Target{Kind: TargetRedirect, Port: cfg.ProxyPort}, Flow: FlowOutbound,
		Why: fmt.Sprintf("outbound TCP goes to the proxy's outbound listener :%d", cfg.ProxyPort)}))
	b.add(both, TableNAT, ChainInRedirect, tcp(Rule{Target: Target{Kind: TargetRedirect, Port: cfg.InboundCapturePort}, Flow: FlowInbound,
		Why: fmt.Sprintf("inbound TCP goes to the proxy's inbound listener :%d", cfg.InboundCapturePort)}))

	b.inbound(cfg, loopback)

	b.add(both, TableNAT, "OUTPUT", Rule{Target: jump(ChainOutput), Flow: FlowOutbound, Why: "all locally generated traffic is examined by " + ChainOutput})
	for _, p := range cfg.OutboundPortsExclude {
		for _, proto := range []string{"tcp", "udp"} {
			b.add(both, TableNAT, ChainOutput, Rule{Proto: proto, DPort: dport(p), Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: fmt.Sprintf("outbound %s port %d is excluded", proto, p)})
		}
	}
	b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
		return Rule{Out: IfaceMatch{Name: "lo"}, Src: AddrMatch{Prefix: passthrough(f)}, Target: Target{Kind: TargetReturn}, Flow: FlowInbound,
			Why: "the proxy's inbound passthrough to the app (from " + passthrough(f).Addr().String() + ") is not captured again"}
	})
	owners := make([]OwnerMatch, 0, len(cfg.ProxyUIDs)+len(cfg.ProxyGIDs))
	for _, id := range cfg.ProxyUIDs {
		owners = append(owners, uid(id))
	}
	for _, id := range cfg.ProxyGIDs {
		owners = append(owners, gid(id))
	}
	for _, o := range owners {
		who := fmt.Sprintf("uid %d", o.ID)
		if o.GID {
			who = fmt.Sprintf("gid %d", o.ID)
		}
		// The proxy (uid or gid) calling its own pod IP: a service whose endpoint is this pod.
		hairpinPorts := notDport(cfg.InboundTunnelPort)
		if redirectDNS && !o.GID {
			hairpinPorts = notDport(53, cfg.InboundTunnelPort)
		}
		b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
			return tcp(Rule{Out: IfaceMatch{Name: "lo"}, Dst: AddrMatch{Prefix: loopback(f), Not: true}, DPort: hairpinPorts,
				Owners: []OwnerMatch{o}, Target: jump(ChainInRedirect), Flow: FlowHairpin,
				Why: "the proxy (" + who + ") calling its own pod IP over lo goes to the inbound listener"})
		})
		if !includesLoopback {
			not := o
			not.Not = true
			r := Rule{Out: IfaceMatch{Name: "lo"}, Owners: []OwnerMatch{not}, Target: Target{Kind: TargetReturn}, Flow: FlowHairpin,
				Why: "the app calling its own pod IP over lo (not " + who + ") is not captured"}
			if redirectDNS {
				r.Proto, r.DPort = "tcp", notDport(53)
				r.Why += " (except DNS on port 53)"
			}
			b.add(both, TableNAT, ChainOutput, r)
		}
		b.add(both, TableNAT, ChainOutput, Rule{Owners: []OwnerMatch{o}, Target: Target{Kind: TargetReturn}, Flow: FlowProxyOwner,
			Why: "traffic of the proxy's " + who + " is not captured again"})
	}
	b.ownerGroups(cfg)
	if redirectDNS {
		b.dns(cfg, dnsV4, dnsV6, owners)
	}
	b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
		return Rule{Dst: AddrMatch{Prefix: loopback(f)}, Target: Target{Kind: TargetReturn}, Flow: FlowLocalhost,
			Why: "traffic to localhost is not captured"}
	})
	for _, pp := range []struct {
		sel fams
		ps  []netip.Prefix
	}{{v4, excludeV4}, {v6, excludeV6}} {
		for _, p := range pp.ps {
			b.add(pp.sel, TableNAT, ChainOutput, Rule{Dst: AddrMatch{Prefix: p.Masked()}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: "destination " + p.Masked().String() + " is excluded"})
		}
	}
	for _, p := range cfg.OutboundPorts {
		b.add(both, TableNAT, ChainOutput, tcp(Rule{DPort: dport(p), Target: jump(ChainRedirect), Flow: FlowExclusions,
			Why: fmt.Sprintf("outbound port %d is always captured", p)}))
	}
	if b.inet && cfg.OutboundIPRanges.All {
		b.outboundIncludes(cfg, both, nil) // one capture-all rule serves both families of an inet table
	} else {
		b.outboundIncludes(cfg, v4, includeV4)
		b.outboundIncludes(cfg, v6, includeV6)
	}
	if tproxy {
		b.tproxyMarks(cfg, loopback, passthrough)
	}
}

// inbound plans the capture of inbound TCP: to the inbound listener with REDIRECT (nat) or TPROXY (mangle).
func (b *builder) inbound(cfg *Config, loopback func(Family) netip.Prefix) {
	if !cfg.InboundPorts.All && len(cfg.InboundPorts.Ports) == 0 {
		return
	}
	table := TableNAT
	tproxy := cfg.Mode == ModeTProxy
	if tproxy {
		table = TableMangle
		b.add(both, TableMangle, ChainDivert, Rule{Target: Target{Kind: TargetSetMark, Mark: cfg.TProxyMark}, Flow: FlowInbound,
			Why: "packets of established inbound connections are marked for the TPROXY route via lo"})
		b.add(both, TableMangle, ChainDivert, Rule{Target: Target{Kind: TargetAccept}, Flow: FlowInbound, Why: "and accepted"})
		b.addPerFamily(TableMangle, ChainTProxy, func(f Family) Rule {
			return tcp(Rule{Dst: AddrMatch{Prefix: loopback(f), Not: true},
				Target: Target{Kind: TargetTProxy, Port: cfg.InboundCapturePort, Mark: cfg.TProxyMark}, Flow: FlowInbound,
				Why: fmt.Sprintf("new inbound connections are transparently delivered to the inbound listener :%d", cfg.InboundCapturePort)})
		})
	}
	b.add(both, table, "PREROUTING", tcp(Rule{Target: jump(ChainInbound), Flow: FlowInbound, Why: "inbound TCP is examined by " + ChainInbound}))
	if cfg.InboundPorts.All {
		for _, p := range cfg.InboundPortsExclude {
			flow, why := FlowExclusions, fmt.Sprintf("inbound port %d is excluded", p)
			if p == 15020 || p == 15021 || p == 15090 {
				flow, why = FlowAgentPorts, fmt.Sprintf("inbound port %d (agent, health or metrics) goes straight to its listener", p)
			}
			b.add(both, table, ChainInbound, tcp(Rule{DPort: dport(p), Target: Target{Kind: TargetReturn}, Flow: flow, Why: why}))
		}
		if tproxy {
			b.add(both, TableMangle, ChainInbound, tcp(Rule{CTState: []string{"RELATED", "ESTABLISHED"}, Target: jump(ChainDivert), Flow: FlowInbound,
				Why: "packets of established inbound connections are diverted to the proxy's socket"}))
			b.add(both, TableMangle, ChainInbound, tcp(Rule{Target: jump(ChainTProxy), Flow: FlowInbound, Why: "new inbound connections are TPROXYed"}))
		} else {
			b.add(both, TableNAT, ChainInbound, tcp(Rule{Target: jump(ChainInRedirect), Flow: FlowInbound, Why: "all other inbound TCP is captured"}))
		}
		return
	}
	for _, p := range cfg.InboundPorts.Ports {
		if tproxy {
			b.add(both, TableMangle, ChainInbound, tcp(Rule{DPort: dport(p), CTState: []string{"RELATED", "ESTABLISHED"}, Target: jump(ChainDivert),
				Flow: FlowExclusions, Why: fmt.Sprintf("established connections to included inbound port %d are diverted to the proxy", p)}))
			b.add(both, TableMangle, ChainInbound, tcp(Rule{DPort: dport(p), Target: jump(ChainTProxy),
				Flow: FlowExclusions, Why: fmt.Sprintf("included inbound port %d is TPROXYed", p)}))
		} else {
			b.add(both, TableNAT, ChainInbound, tcp(Rule{DPort: dport(p), Target: jump(ChainInRedirect),
				Flow: FlowExclusions, Why: fmt.Sprintf("included inbound port %d is captured", p)}))
		}
	}
}

// ownerGroups plans ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE].
func (b *builder) ownerGroups(cfg *Config) {
	g := cfg.OwnerGroups
	if g.All {
		for _, id := range g.Exclude {
			b.add(both, TableNAT, ChainOutput, Rule{Owners: []OwnerMatch{gid(id)}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: fmt.Sprintf("processes of excluded group %d are not captured", id)})
		}
		return
	}
	owners := make([]OwnerMatch, 0, len(g.Include))
	for _, id := range g.Include {
		owners = append(owners, OwnerMatch{GID: true, ID: id, Not: true})
	}
	b.add(both, TableNAT, ChainOutput, Rule{Owners: owners, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
		Why: "only processes of the included groups are captured"})
}

// dns plans the capture of DNS to the agent's DNS proxy and the conntrack zones that keep the app↔agent
// and agent↔server legs of a UDP query apart.
func (b *builder) dns(cfg *Config, dnsV4, dnsV6 []netip.Addr, owners []OwnerMatch) {
	b.add(both, TableRaw, "OUTPUT", Rule{Target: jump(ChainOutputDNS), Flow: FlowDNS, Why: "DNS packets are sorted into conntrack zones"})
	// The jumps of a family are left out when it has no servers, except in inet tables (one jump
	// serves both families there).
	toDNS := Rule{Target: jump(ChainOutputDNS), Flow: FlowDNS, Why: "DNS queries go to the agent's DNS proxy"}
	if b.inet {
		b.add(both, TableNAT, ChainOutput, toDNS)
	}
	if !b.inet && (cfg.CaptureAllDNS || len(dnsV4) > 0) {
		b.add(v4, TableNAT, ChainOutput, toDNS)
	}
	if !b.inet && (cfg.CaptureAllDNS || len(dnsV6) > 0) {
		b.add(v6, TableNAT, ChainOutput, toDNS)
	}
	for _, proto := range []string{"tcp", "udp"} {
		redirect := Rule{Proto: proto, DPort: dport(53), Target: Target{Kind: TargetRedirect, Port: DNSProxyPort}, Flow: FlowDNS}
		if cfg.CaptureAllDNS {
			redirect.Why = fmt.Sprintf("%s DNS queries go to the agent's DNS proxy :%d", proto, DNSProxyPort)
			b.add(both, TableNAT, ChainOutputDNS, redirect)
			continue
		}
		for _, s := range append(slices.Clone(dnsV4), dnsV6...) {
			r := redirect
			r.Dst = AddrMatch{Prefix: host(s)}
			r.Why = fmt.Sprintf("%s DNS queries to %s go to the agent's DNS proxy :%d", proto, s, DNSProxyPort)
			b.add(familyOf(s), TableNAT, ChainOutputDNS, r)
		}
	}
	for _, o := range owners {
		b.add(both, TableRaw, ChainOutputDNS, Rule{Proto: "udp", DPort: dport(53), Owners: []OwnerMatch{o}, Target: Target{Kind: TargetCTZone, Zone: 1},
			Flow: FlowDNS, Why: "the agent's queries to upstream servers use conntrack zone 1"})
		b.add(both, TableRaw, ChainOutputDNS, Rule{Proto: "udp", SPort: dport(DNSProxyPort), Owners: []OwnerMatch{o}, Target: Target{Kind: TargetCTZone, Zone: 2},
			Flow: FlowDNS, Why: "the agent's answers to the app use conntrack zone 2"})
	}
	if cfg.CaptureAllDNS {
		b.add(both, TableRaw, "PREROUTING", Rule{Target: jump(ChainInbound), Flow: FlowDNS, Why: "DNS answers are sorted into conntrack zones"})
		b.add(both, TableRaw, ChainOutputDNS, Rule{Proto: "udp", DPort: dport(53), Target: Target{Kind: TargetCTZone, Zone: 2}, Flow: FlowDNS,
			Why: "the app's queries use conntrack zone 2"})
		b.add(both, TableRaw, ChainInbound, Rule{Proto: "udp", SPort: dport(53), Target: Target{Kind: TargetCTZone, Zone: 1}, Flow: FlowDNS,
			Why: "answers from DNS servers use conntrack zone 1"})
		return
	}
	toZones := Rule{Target: jump(ChainInbound), Flow: FlowDNS, Why: "DNS answers are sorted into conntrack zones"}
	if b.inet {
		b.add(both, TableRaw, "PREROUTING", toZones)
	}
	for _, set := range []struct {
		sel     fams
		servers []netip.Addr
	}{{v4, dnsV4}, {v6, dnsV6}} {
		if !b.inet && len(set.servers) > 0 {
			b.add(set.sel, TableRaw, "PREROUTING", toZones)
		}
		for _, s := range set.servers {
			b.add(set.sel, TableRaw, ChainOutputDNS, Rule{Dst: AddrMatch{Prefix: host(s)}, Proto: "udp", DPort: dport(53), Target: Target{Kind: TargetCTZone, Zone: 2},
				Flow: FlowDNS, Why: "the app's queries to " + s.String() + " use conntrack zone 2"})
			b.add(set.sel, TableRaw, ChainInbound, Rule{Src: AddrMatch{Prefix: host(s)}, Proto: "udp", SPort: dport(53), Target: Target{Kind: TargetCTZone, Zone: 1},
				Flow: FlowDNS, Why: "answers from " + s.String() + " use conntrack zone 1"})
		}
	}
}

// outboundIncludes plans -i for one family: capture everything left, or only the listed CIDRs.
func (b *builder) outboundIncludes(cfg *Config, sel fams, prefixes []netip.Prefix) {
	if cfg.OutboundIPRanges.All {
		b.add(sel, TableNAT, ChainOutput, Rule{Target: jump(ChainRedirect), Flow: FlowOutbound, Why: "all other outbound TCP is captured"})
		for _, name := range cfg.KubeVirtInterfaces {
			b.insert(sel, TableNAT, "PREROUTING", 1, Rule{In: IfaceMatch{Name: name}, Target: jump(ChainRedirect), Flow: FlowOutbound,
				Why: "traffic from virtual interface " + name + " is captured as outbound"})
		}
		return
	}
	for _, p := range prefixes {
		for _, name := range cfg.KubeVirtInterfaces {
			b.insert(sel, TableNAT, "PREROUTING", 1, Rule{In: IfaceMatch{Name: name}, Dst: AddrMatch{Prefix: p.Masked()}, Target: jump(ChainRedirect),
				Flow: FlowOutbound, Why: "traffic from virtual interface " + name + " to " + p.Masked().String() + " is captured as outbound"})
		}
		b.add(sel, TableNAT, ChainOutput, Rule{Dst: AddrMatch{Prefix: p.Masked()}, Target: jump(ChainRedirect), Flow: FlowExclusions,
			Why: "traffic to included range " + p.Masked().String() + " is captured"})
	}
}

// tproxyMarks plans the marks of TPROXY mode: the connection mark that routes the proxy's replies (and
// its original-source connections to the app) via lo, and the hairpin mark of its own connections.
func (b *builder) tproxyMarks(cfg *Config, loopback, passthrough func(Family) netip.Prefix) {
	mark := cfg.TProxyMark
	b.add(both, TableMangle, "PREROUTING", tcp(Rule{Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetSaveMark}, Flow: FlowInbound,
		Why: "the proxy's mark is saved on the connection"}))
	b.add(both, TableMangle, "OUTPUT", tcp(Rule{Out: IfaceMatch{Name: "lo"}, Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetReturn},
		Flow: FlowInbound, Why: "the proxy's connections to the app are not marked again"}))
	for _, o := range append(uidOwners(cfg.ProxyUIDs), gidOwners(cfg.ProxyGIDs)...) {
		b.addPerFamily(TableMangle, "OUTPUT", func(f Family) Rule {
			return tcp(Rule{Dst: AddrMatch{Prefix: loopback(f), Not: true}, Out: IfaceMatch{Name: "lo"}, Owners: []OwnerMatch{o},
				Target: Target{Kind: TargetSetMark, Mark: OutboundMark}, Flow: FlowHairpin,
				Why: fmt.Sprintf("the proxy calling its own pod IP is marked %d so that its inbound side captures it", OutboundMark)})
		})
	}
	b.add(both, TableMangle, "OUTPUT", tcp(Rule{ConnMark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetRestoreMark}, Flow: FlowInbound,
		Why: "replies of TPROXYed connections take the mark's route via lo"}))
	b.insert(both, TableMangle, ChainInbound, 1, tcp(Rule{Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetReturn}, Flow: FlowInbound,
		Why: "packets already marked by the proxy are not TPROXYed again"}))
	b.each(both, func(f Family) {
		sel := v4
		if f == IPv6 {
			sel = v6
		}
		b.insert(sel, TableMangle, ChainInbound, 2, tcp(Rule{Src: AddrMatch{Prefix: passthrough(f)}, In: IfaceMatch{Name: "lo"}, Target: Target{Kind: TargetReturn},
			Flow: FlowInbound, Why: "the proxy's passthrough connections to the app are not captured"}))
	})
	b.insert(both, TableMangle, ChainInbound, 3, tcp(Rule{In: IfaceMatch{Name: "lo"}, Mark: MarkMatch{Set: true, Value: OutboundMark, Not: true},
		Target: Target{Kind: TargetReturn}, Flow: FlowHairpin, Why: "the app calling its own pod IP is not captured"}))
}

func uidOwners(ids []uint32) []OwnerMatch {
	out := make([]OwnerMatch, len(ids))
	for i, id := range ids {
		out[i] = uid(id)
	}
	return out
}

func gidOwners(ids []uint32) []OwnerMatch {
	out := make([]OwnerMatch, len(ids))
	for i, id := range ids {
		out[i] = gid(id)
	}
	return out
}

func familyOf(a netip.Addr) fams {
	if a.Is4() {
		return v4
	}
	return v6
}

func splitPrefixes(ps []netip.Prefix) (v4s, v6s []netip.Prefix) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4s = append(v4s, p)
		} else {
			v6s = append(v6s, p)
		}
	}
	return v4s, v6s
}

func splitAddrs(as []netip.Addr) (v4s, v6s []netip.Addr) {
	for _, a := range as {
		if a.Is4() {
			v4s = append(v4s, a)
		} else {
			v6s = append(v6s, a)
		}
	}
	return v4s, v6s
}
