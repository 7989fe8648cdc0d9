package redirect

import "fmt"

// inbound plans the capture of inbound TCP: to the inbound listener with REDIRECT (nat) or TPROXY (mangle).
// New connections to o's localhost range are not TPROXYed.
func (b *builder) inbound(cfg *Config, o *Outbound) {
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
			return tcp(Rule{Dst: AddrMatch{Prefix: o.loopback(f), Not: true},
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
