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

// passthrough is the source address of the proxy's inbound passthrough connections to the app.
func passthrough(f Family) netip.Prefix {
	if f == IPv6 {
		return host(PassthroughV6)
	}
	return host(PassthroughV4)
}

// build plans every rule of cfg, chain by chain in the order each chain's rules apply.
func (b *builder) build(cfg *Config) {
	out := cfg.Outbound()

	// Excluded interfaces: nothing in or out of them is captured.
	for _, name := range cfg.ExcludeInterfaces {
		b.add(both, TableNAT, "PREROUTING", returnIn(name, "traffic arriving on excluded interface "+name+" is not captured"))
		b.add(both, TableNAT, "OUTPUT", returnOut(name, "traffic leaving by excluded interface "+name+" is not captured"))
	}
	if cfg.Mode == ModeTProxy {
		for _, name := range cfg.ExcludeInterfaces {
			b.add(both, TableMangle, "PREROUTING", returnIn(name, "traffic arriving on excluded interface "+name+" is not TPROXYed"))
			b.add(both, TableMangle, "OUTPUT", returnOut(name, "traffic leaving by excluded interface "+name+" is not marked"))
		}
	}
	// Virtual-machine interfaces: their inbound traffic is not treated as inbound.
	for _, name := range cfg.KubeVirtInterfaces {
		b.insert(both, TableNAT, "PREROUTING", 1, returnIn(name, "traffic from virtual interface "+name+" is not inbound traffic"))
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
	b.add(both, TableNAT, ChainRedirect, tcp(Rule{Target: Target{Kind: TargetRedirect, Port: out.ProxyPort}, Flow: FlowOutbound,
		Why: fmt.Sprintf("outbound TCP goes to the proxy's outbound listener :%d", out.ProxyPort)}))
	b.add(both, TableNAT, ChainInRedirect, tcp(Rule{Target: Target{Kind: TargetRedirect, Port: cfg.InboundCapturePort}, Flow: FlowInbound,
		Why: fmt.Sprintf("inbound TCP goes to the proxy's inbound listener :%d", cfg.InboundCapturePort)}))

	b.inbound(cfg, &out)
	b.outbound(&out, cfg.KubeVirtInterfaces)
	if cfg.Mode == ModeTProxy {
		b.tproxyMarks(cfg.TProxyMark, &out)
	}
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
