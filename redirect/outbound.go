package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// Outbound is what the engine decides for locally generated traffic, the policy of ISTIO_OUTPUT: the
// settings of a Config that concern it, resolved. Build plans ISTIO_OUTPUT from it, and the eBPF fast
// path copies it, so that the two capture the same connections.
type Outbound struct {
	// ProxyPort is the proxy's outbound listener, where captured connections go.
	ProxyPort uint16
	// InboundPort is the proxy's inbound listener, where the proxy calling its own pod IP goes.
	InboundPort uint16
	// TunnelPort is never sent to the inbound listener.
	TunnelPort uint16
	// ProxyUIDs and ProxyGIDs are the proxy's identities: their traffic is never captured again.
	ProxyUIDs, ProxyGIDs []uint32
	// IncludeAll captures every destination that nothing excludes; otherwise only Include.
	IncludeAll bool
	// Include and Exclude are the included and excluded destinations, masked, both families in the
	// order configured.
	Include, Exclude []netip.Prefix
	// Ports are captured whatever the destination (unless excluded before); PortsExclude never.
	Ports, PortsExclude []uint16
	// HostLoopback is the IPv4 localhost range, masked, never captured (::1 for IPv6).
	HostLoopback netip.Prefix
	// IncludesLoopback is set when an included range, as configured, is a loopback range (see
	// IncludesLoopback): the app's traffic over lo is then not returned.
	IncludesLoopback bool
	// OwnerGroups selects the processes captured by gid.
	OwnerGroups GroupFilter
	// DNSPort, when not 0, is where DNS (port 53) to DNSServers, or to anywhere with DNSAll, goes: DNS
	// is captured only with --redirect-dns and servers to capture. DNSServers is empty with DNSAll.
	DNSPort    uint16
	DNSAll     bool
	DNSServers []netip.Addr
}

// Outbound returns the decisions of ISTIO_OUTPUT for c, which must be valid (Validate). The slices
// are c's copies. It performs no I/O.
func (c *Config) Outbound() Outbound {
	o := Outbound{
		ProxyPort:        c.ProxyPort,
		InboundPort:      c.InboundCapturePort,
		TunnelPort:       c.InboundTunnelPort,
		ProxyUIDs:        slices.Clone(c.ProxyUIDs),
		ProxyGIDs:        slices.Clone(c.ProxyGIDs),
		IncludeAll:       c.OutboundIPRanges.All,
		Include:          masked(c.OutboundIPRanges.Prefixes),
		Exclude:          masked(c.OutboundIPRangesExclude),
		Ports:            slices.Clone(c.OutboundPorts),
		PortsExclude:     slices.Clone(c.OutboundPortsExclude),
		HostLoopback:     c.HostIPv4LoopbackCIDR.Masked(),
		IncludesLoopback: IncludesLoopback(c.OutboundIPRanges.Prefixes),
		OwnerGroups: GroupFilter{
			All:     c.OwnerGroups.All,
			Include: slices.Clone(c.OwnerGroups.Include),
			Exclude: slices.Clone(c.OwnerGroups.Exclude),
		},
	}
	if c.RedirectDNS && (c.CaptureAllDNS || len(c.DNSServers) > 0) {
		o.DNSPort = DNSProxyPort
		o.DNSAll = c.CaptureAllDNS
		if !o.DNSAll {
			o.DNSServers = slices.Clone(c.DNSServers)
		}
	}
	return o
}

// IncludesLoopback reports whether one of the included ranges ps is a loopback range. Istio then
// captures the app's traffic over lo as well: the rule that returns it is left out.
func IncludesLoopback(ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().IsLoopback() })
}

func masked(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Masked()
	}
	return out
}

// loopback is the localhost range of family f.
func (o *Outbound) loopback(f Family) netip.Prefix {
	if f == IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return o.HostLoopback
}

// outbound plans ISTIO_OUTPUT from o, and the jumps that capture the outbound traffic of the virtual
// interfaces kubeVirt.
func (b *builder) outbound(o *Outbound, kubeVirt []string) {
	b.add(both, TableNAT, "OUTPUT", Rule{Target: jump(ChainOutput), Flow: FlowOutbound, Why: "all locally generated traffic is examined by " + ChainOutput})
	for _, p := range o.PortsExclude {
		for _, proto := range []string{"tcp", "udp"} {
			b.add(both, TableNAT, ChainOutput, Rule{Proto: proto, DPort: dport(p), Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: fmt.Sprintf("outbound %s port %d is excluded", proto, p)})
		}
	}
	b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
		return Rule{Out: IfaceMatch{Name: "lo"}, Src: AddrMatch{Prefix: passthrough(f)}, Target: Target{Kind: TargetReturn}, Flow: FlowInbound,
			Why: "the proxy's inbound passthrough to the app (from " + passthrough(f).Addr().String() + ") is not captured again"}
	})
	owners := append(uidOwners(o.ProxyUIDs), gidOwners(o.ProxyGIDs)...)
	for _, owner := range owners {
		who := fmt.Sprintf("uid %d", owner.ID)
		if owner.GID {
			who = fmt.Sprintf("gid %d", owner.ID)
		}
		// The proxy (uid or gid) calling its own pod IP: a service whose endpoint is this pod.
		hairpinPorts := notDport(o.TunnelPort)
		if o.DNSPort != 0 && !owner.GID {
			hairpinPorts = notDport(53, o.TunnelPort)
		}
		b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
			return tcp(Rule{Out: IfaceMatch{Name: "lo"}, Dst: AddrMatch{Prefix: o.loopback(f), Not: true}, DPort: hairpinPorts,
				Owners: []OwnerMatch{owner}, Target: jump(ChainInRedirect), Flow: FlowHairpin,
				Why: "the proxy (" + who + ") calling its own pod IP over lo goes to the inbound listener"})
		})
		if !o.IncludesLoopback {
			not := owner
			not.Not = true
			r := Rule{Out: IfaceMatch{Name: "lo"}, Owners: []OwnerMatch{not}, Target: Target{Kind: TargetReturn}, Flow: FlowHairpin,
				Why: "the app calling its own pod IP over lo (not " + who + ") is not captured"}
			if o.DNSPort != 0 {
				r.Proto, r.DPort = "tcp", notDport(53)
				r.Why += " (except DNS on port 53)"
			}
			b.add(both, TableNAT, ChainOutput, r)
		}
		b.add(both, TableNAT, ChainOutput, Rule{Owners: []OwnerMatch{owner}, Target: Target{Kind: TargetReturn}, Flow: FlowProxyOwner,
			Why: "traffic of the proxy's " + who + " is not captured again"})
	}
	b.ownerGroups(o.OwnerGroups)
	if o.DNSPort != 0 {
		b.dns(o, owners)
	}
	b.addPerFamily(TableNAT, ChainOutput, func(f Family) Rule {
		return Rule{Dst: AddrMatch{Prefix: o.loopback(f)}, Target: Target{Kind: TargetReturn}, Flow: FlowLocalhost,
			Why: "traffic to localhost is not captured"}
	})
	excludeV4, excludeV6 := splitPrefixes(o.Exclude)
	for _, pp := range []struct {
		sel fams
		ps  []netip.Prefix
	}{{v4, excludeV4}, {v6, excludeV6}} {
		for _, p := range pp.ps {
			b.add(pp.sel, TableNAT, ChainOutput, Rule{Dst: AddrMatch{Prefix: p}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions,
				Why: "destination " + p.String() + " is excluded"})
		}
	}
	for _, p := range o.Ports {
		b.add(both, TableNAT, ChainOutput, tcp(Rule{DPort: dport(p), Target: jump(ChainRedirect), Flow: FlowExclusions,
			Why: fmt.Sprintf("outbound port %d is always captured", p)}))
	}
	if b.inet && o.IncludeAll {
		b.outboundIncludes(o, kubeVirt, both, nil) // one capture-all rule serves both families of an inet table
	} else {
		includeV4, includeV6 := splitPrefixes(o.Include)
		b.outboundIncludes(o, kubeVirt, v4, includeV4)
		b.outboundIncludes(o, kubeVirt, v6, includeV6)
	}
}

// ownerGroups plans ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE].
func (b *builder) ownerGroups(g GroupFilter) {
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

// outboundIncludes plans -i for one family: capture everything left, or only the listed (masked)
// prefixes; traffic from the virtual interfaces kubeVirt to them is captured as outbound too.
func (b *builder) outboundIncludes(o *Outbound, kubeVirt []string, sel fams, prefixes []netip.Prefix) {
	if o.IncludeAll {
		b.add(sel, TableNAT, ChainOutput, Rule{Target: jump(ChainRedirect), Flow: FlowOutbound, Why: "all other outbound TCP is captured"})
		for _, name := range kubeVirt {
			b.insert(sel, TableNAT, "PREROUTING", 1, Rule{In: IfaceMatch{Name: name}, Target: jump(ChainRedirect), Flow: FlowOutbound,
				Why: "traffic from virtual interface " + name + " is captured as outbound"})
		}
		return
	}
	for _, p := range prefixes {
		for _, name := range kubeVirt {
			b.insert(sel, TableNAT, "PREROUTING", 1, Rule{In: IfaceMatch{Name: name}, Dst: AddrMatch{Prefix: p}, Target: jump(ChainRedirect),
				Flow: FlowOutbound, Why: "traffic from virtual interface " + name + " to " + p.String() + " is captured as outbound"})
		}
		b.add(sel, TableNAT, ChainOutput, Rule{Dst: AddrMatch{Prefix: p}, Target: jump(ChainRedirect), Flow: FlowExclusions,
			Why: "traffic to included range " + p.String() + " is captured"})
	}
}
