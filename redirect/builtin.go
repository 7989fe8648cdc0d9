package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// The rules the engine puts in built-in chains, other than jumps into its own chains. Built-in chains
// are shared with other software: a backend that reads a namespace back tells the engine's rules there
// from foreign ones by these shapes (OwnsBuiltinRule), so every such rule Build plans is made here.

// returnIn leaves traffic arriving on interface name alone.
func returnIn(name, why string) Rule {
	return Rule{In: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions, Why: why}
}

// returnOut leaves traffic leaving by interface name alone.
func returnOut(name, why string) Rule {
	return Rule{Out: IfaceMatch{Name: name}, Target: Target{Kind: TargetReturn}, Flow: FlowExclusions, Why: why}
}

// saveMark saves the TPROXY mark on the connection.
func saveMark(mark uint32) Rule {
	return tcp(Rule{Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetSaveMark}, Flow: FlowInbound,
		Why: "the proxy's mark is saved on the connection"})
}

// migrationGuard leaves a packet that arrived marked from outside (not over lo) as it is: only another
// backend's TPROXY rules at the same hook can have marked it (a mark does not cross into the pod's
// namespace), and they have TPROXYed or diverted it already. See Plan.MigrationGuard.
func migrationGuard(mark uint32) Rule {
	return tcp(Rule{In: IfaceMatch{Name: "lo", Not: true}, Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetAccept},
		Head: true, Flow: FlowInbound, Why: "during a migration: a packet the other backend's rules already TPROXYed or diverted is left as they left it"})
}

// markedToApp leaves the proxy's TPROXY-marked connections to the app alone.
func markedToApp(mark uint32) Rule {
	return tcp(Rule{Out: IfaceMatch{Name: "lo"}, Mark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetReturn},
		Flow: FlowInbound, Why: "the proxy's connections to the app are not marked again"})
}

// hairpinMark marks owner's connections over lo to other than loopback, the proxy calling its own pod
// IP, with OutboundMark.
func hairpinMark(owner OwnerMatch, loopback netip.Prefix) Rule {
	return tcp(Rule{Dst: AddrMatch{Prefix: loopback, Not: true}, Out: IfaceMatch{Name: "lo"}, Owners: []OwnerMatch{owner},
		Target: Target{Kind: TargetSetMark, Mark: OutboundMark}, Flow: FlowHairpin,
		Why: fmt.Sprintf("the proxy calling its own pod IP is marked %d so that its inbound side captures it", OutboundMark)})
}

// restoreMark restores the TPROXY mark of a connection on its packets.
func restoreMark(mark uint32) Rule {
	return tcp(Rule{ConnMark: MarkMatch{Set: true, Value: mark}, Target: Target{Kind: TargetRestoreMark}, Flow: FlowInbound,
		Why: "replies of TPROXYed connections take the mark's route via lo"})
}

// OwnsBuiltinRule reports whether r, a rule read back from the built-in chain chain of table, is one
// that Build puts there for some Config: a jump into one of the engine's chains, whatever it matches,
// or a rule of the engine's shapes for that table and chain with any TPROXY mark, proxy uid or gid,
// localhost range and interface name, those being what varies by Config. Flow, Why and Head are not
// compared. The interface RETURNs of excluded and virtual interfaces are too common a shape to claim
// alone: they are ours only when withChains, the rule's table holding chains of the engine's too.
func OwnsBuiltinRule(table, chain string, r *Rule, withChains bool) bool {
	if r.Target.Kind == TargetJump {
		return IsOwned(r.Target.Chain)
	}
	type shape struct {
		table, chain string
		rule         Rule
	}
	shapes := []shape{
		{TableMangle, "PREROUTING", saveMark(r.Mark.Value)},
		{TableMangle, "PREROUTING", migrationGuard(r.Mark.Value)},
		{TableMangle, "OUTPUT", markedToApp(r.Mark.Value)},
		{TableMangle, "OUTPUT", restoreMark(r.ConnMark.Value)},
	}
	if len(r.Owners) == 1 {
		shapes = append(shapes, shape{TableMangle, "OUTPUT", hairpinMark(OwnerMatch{GID: r.Owners[0].GID, ID: r.Owners[0].ID}, r.Dst.Prefix)})
	}
	if withChains && ValidateInterfaceName(r.In.Name) == nil {
		shapes = append(shapes, shape{TableNAT, "PREROUTING", returnIn(r.In.Name, "")}, shape{TableMangle, "PREROUTING", returnIn(r.In.Name, "")})
	}
	if withChains && ValidateInterfaceName(r.Out.Name) == nil {
		shapes = append(shapes, shape{TableNAT, "OUTPUT", returnOut(r.Out.Name, "")}, shape{TableMangle, "OUTPUT", returnOut(r.Out.Name, "")})
	}
	return slices.ContainsFunc(shapes, func(s shape) bool { return s.table == table && s.chain == chain && sameMatch(&s.rule, r) })
}

// sameMatch reports whether a and b match the same packets and do the same with them.
func sameMatch(a, b *Rule) bool {
	samePorts := func(x, y PortMatch) bool { return x.Not == y.Not && slices.Equal(x.Ports, y.Ports) }
	return a.Src == b.Src && a.Dst == b.Dst && a.In == b.In && a.Out == b.Out && a.Proto == b.Proto &&
		samePorts(a.DPort, b.DPort) && samePorts(a.SPort, b.SPort) && slices.Equal(a.CTState, b.CTState) &&
		a.Mark == b.Mark && a.ConnMark == b.ConnMark && slices.Equal(a.Owners, b.Owners) && a.Target == b.Target
}
