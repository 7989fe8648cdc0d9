package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// dns plans the capture of DNS to the agent's DNS proxy and the conntrack zones that keep the app↔agent
// and agent↔server legs of a UDP query apart, as o decides: to o.DNSPort, for o.DNSServers or all servers.
func (b *builder) dns(o *Outbound, owners []OwnerMatch) {
	dnsV4, dnsV6 := splitAddrs(o.DNSServers)
	b.add(both, TableRaw, "OUTPUT", Rule{Target: jump(ChainOutputDNS), Flow: FlowDNS, Why: "DNS packets are sorted into conntrack zones"})
	// The jumps of a family are left out when it has no servers, except in inet tables (one jump
	// serves both families there).
	toDNS := Rule{Target: jump(ChainOutputDNS), Flow: FlowDNS, Why: "DNS queries go to the agent's DNS proxy"}
	if b.inet {
		b.add(both, TableNAT, ChainOutput, toDNS)
	}
	if !b.inet && (o.DNSAll || len(dnsV4) > 0) {
		b.add(v4, TableNAT, ChainOutput, toDNS)
	}
	if !b.inet && (o.DNSAll || len(dnsV6) > 0) {
		b.add(v6, TableNAT, ChainOutput, toDNS)
	}
	for _, proto := range []string{"tcp", "udp"} {
		redirect := Rule{Proto: proto, DPort: dport(53), Target: Target{Kind: TargetRedirect, Port: o.DNSPort}, Flow: FlowDNS}
		if o.DNSAll {
			redirect.Why = fmt.Sprintf("%s DNS queries go to the agent's DNS proxy :%d", proto, o.DNSPort)
			b.add(both, TableNAT, ChainOutputDNS, redirect)
			continue
		}
		for _, s := range append(slices.Clone(dnsV4), dnsV6...) {
			r := redirect
			r.Dst = AddrMatch{Prefix: host(s)}
			r.Why = fmt.Sprintf("%s DNS queries to %s go to the agent's DNS proxy :%d", proto, s, o.DNSPort)
			b.add(familyOf(s), TableNAT, ChainOutputDNS, r)
		}
	}
	for _, owner := range owners {
		b.add(both, TableRaw, ChainOutputDNS, Rule{Proto: "udp", DPort: dport(53), Owners: []OwnerMatch{owner}, Target: Target{Kind: TargetCTZone, Zone: 1},
			Flow: FlowDNS, Why: "the agent's queries to upstream servers use conntrack zone 1"})
		b.add(both, TableRaw, ChainOutputDNS, Rule{Proto: "udp", SPort: dport(o.DNSPort), Owners: []OwnerMatch{owner}, Target: Target{Kind: TargetCTZone, Zone: 2},
			Flow: FlowDNS, Why: "the agent's answers to the app use conntrack zone 2"})
	}
	if o.DNSAll {
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
