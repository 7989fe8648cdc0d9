package redirect

// tproxyMarks plans the marks of TPROXY mode: the connection mark that routes the proxy's replies (and
// its original-source connections to the app) via lo, and the hairpin mark of its own connections.
func (b *builder) tproxyMarks(mark uint32, o *Outbound) {
	b.add(both, TableMangle, "PREROUTING", saveMark(mark))
	b.add(both, TableMangle, "OUTPUT", markedToApp(mark))
	for _, owner := range append(uidOwners(o.ProxyUIDs), gidOwners(o.ProxyGIDs)...) {
		b.addPerFamily(TableMangle, "OUTPUT", func(f Family) Rule { return hairpinMark(owner, o.loopback(f)) })
	}
	b.add(both, TableMangle, "OUTPUT", restoreMark(mark))
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
