package redirect

import (
	"net/netip"
	"strconv"
)

// Flow names a traffic path of a meshed pod (see docs/flows.md); every rule serves one.
type Flow string

// The flows.
const (
	FlowInbound    Flow = "F1" // remote → pod app, through the inbound listener
	FlowOutbound   Flow = "F2" // pod app → remote, through the outbound listener
	FlowAgentPorts Flow = "F3" // remote → agent, health, metrics and tunnel ports, not captured
	FlowHairpin    Flow = "F4" // app → service whose endpoint is its own pod, and app → own pod IP
	FlowLocalhost  Flow = "F5" // app → 127.0.0.1, not captured
	FlowProxyOwner Flow = "F6" // traffic of the proxy's uid/gid, not captured again
	FlowExclusions Flow = "F7" // include/exclude lists: ports, CIDRs, interfaces, owner groups
	FlowIPv6       Flow = "F8" // the same over IPv6
	FlowDNS        Flow = "F9" // DNS to the agent's DNS proxy
)

// FlowTitle is a short description of each flow.
var FlowTitle = map[Flow]string{
	FlowInbound:    "inbound capture",
	FlowOutbound:   "outbound capture",
	FlowAgentPorts: "agent/tunnel ports bypass",
	FlowHairpin:    "pod calling itself",
	FlowLocalhost:  "localhost bypass",
	FlowProxyOwner: "proxy's own traffic",
	FlowExclusions: "include/exclude lists",
	FlowIPv6:       "IPv6",
	FlowDNS:        "DNS capture",
}

// AddrMatch matches a source or destination prefix; the zero value matches anything.
type AddrMatch struct {
	Prefix netip.Prefix
	Not    bool
}

// IfaceMatch matches an input or output interface; the zero value matches any.
type IfaceMatch struct {
	Name string
	Not  bool
}

// PortMatch matches one port or, with several, any of a list (multiport); the zero value matches any.
type PortMatch struct {
	Ports []uint16
	Not   bool
}

// MarkMatch matches a packet (or connection) mark.
type MarkMatch struct {
	Set   bool
	Value uint32
	Not   bool
}

// OwnerMatch matches the uid or gid of the local process that sent the packet.
type OwnerMatch struct {
	GID bool // else uid
	ID  uint32
	Not bool
}

// TargetKind is what a rule does with a matching packet.
type TargetKind int

// Targets.
const (
	TargetJump        TargetKind = iota // to Target.Chain
	TargetReturn                        // leave the chain
	TargetAccept                        // accept
	TargetDrop                          // drop
	TargetRedirect                      // REDIRECT to Target.Port (nat)
	TargetTProxy                        // TPROXY to Target.Port with Target.Mark (mangle)
	TargetSetMark                       // MARK the packet with Target.Mark
	TargetSaveMark                      // CONNMARK: packet mark → connection mark
	TargetRestoreMark                   // CONNMARK: connection mark → packet mark
	TargetCTZone                        // CT: conntrack zone Target.Zone (raw)
)

// Target is a rule's verdict.
type Target struct {
	Kind  TargetKind
	Chain string
	Port  uint16
	Mark  uint32
	Zone  uint16
}

// Rule is one rule: its matches (all must hold) and target, with the flow it serves and why it is there.
type Rule struct {
	Src, Dst AddrMatch
	In, Out  IfaceMatch
	Proto    string // "tcp", "udp" or "" for any
	DPort    PortMatch
	SPort    PortMatch
	CTState  []string // conntrack states, e.g. INVALID or RELATED,ESTABLISHED
	Mark     MarkMatch
	ConnMark MarkMatch
	Owners   []OwnerMatch
	Target   Target

	// Head places the rule before any foreign rule of a built-in chain (Istio inserts these at
	// position 1); other rules of built-in chains are appended.
	Head bool
	Flow Flow
	Why  string
}

// Chain is a chain and its rules in order. Built-in chains (PREROUTING, OUTPUT, …) are shared with
// other software: only the listed rules are ours.
type Chain struct {
	Name    string
	Builtin bool
	Rules   []Rule
}

// Table is one iptables table (nat, mangle, raw) of a family.
type Table struct {
	Name   string
	Chains []Chain
}

// Family is an address family.
type Family int

// Families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
	// Inet is nftables' inet family: one set of tables for IPv4 and IPv6 (Config.NativeNFTables).
	Inet Family = 10
)

func (f Family) String() string {
	switch f {
	case IPv6:
		return "IPv6"
	case Inet:
		return "inet"
	}
	return "IPv4"
}

// FamilyPlan is everything to program for one address family, or for both in one inet plan.
type FamilyPlan struct {
	Family Family
	// Covers lists the address families the plan captures: its own, or IPv4 and (when enabled) IPv6
	// for an inet plan. TProxy and LoopbackAddrs apply to each.
	Covers []Family
	Tables []Table // in the order mangle, nat, raw; tables without rules are left out
	// TProxy is the policy routing TPROXY needs: packets marked Mark are looked up in routing table
	// Table, which holds a local default route via lo. Nil outside TPROXY mode.
	TProxy *TProxyRoute
	// LoopbackAddrs are addresses the proxy binds its passthrough connections to that lo lacks by
	// default (::6/128 for IPv6).
	LoopbackAddrs []netip.Prefix
}

// TProxyRoute is the fwmark rule and route of TPROXY mode.
type TProxyRoute struct {
	Mark  uint32
	Table uint32
}

// Plan is the full set of rules for a Config: IPv4, and IPv6 when enabled, or one inet plan with
// Config.NativeNFTables.
type Plan struct {
	Families []FamilyPlan
}

// Family returns the plan of family f, or nil when f is not programmed.
func (p *Plan) Family(f Family) *FamilyPlan {
	for i := range p.Families {
		if p.Families[i].Family == f {
			return &p.Families[i]
		}
	}
	return nil
}

// Table returns the named table, or nil.
func (fp *FamilyPlan) Table(name string) *Table {
	for i := range fp.Tables {
		if fp.Tables[i].Name == name {
			return &fp.Tables[i]
		}
	}
	return nil
}

// Chain returns the named chain, or nil.
func (t *Table) Chain(name string) *Chain {
	for i := range t.Chains {
		if t.Chains[i].Name == name {
			return &t.Chains[i]
		}
	}
	return nil
}

// RuleRef names one rule of a Plan: the Index-th rule (from 0) of the plan's chain Table/Chain in the
// family plan Family. Tools that show, trace or count rules (shunt trace, shunt graph, the backends'
// counters) refer to rules by it.
type RuleRef struct {
	Family Family
	Table  string
	Chain  string
	Index  int
}

func (r RuleRef) String() string {
	return r.Family.String() + "/" + r.Table + "/" + r.Chain + "#" + strconv.Itoa(r.Index)
}

// Rule returns the rule r names in p, or nil.
func (p *Plan) Rule(r RuleRef) *Rule {
	fp := p.Family(r.Family)
	if fp == nil {
		return nil
	}
	t := fp.Table(r.Table)
	if t == nil {
		return nil
	}
	c := t.Chain(r.Chain)
	if c == nil || r.Index < 0 || r.Index >= len(c.Rules) {
		return nil
	}
	return &c.Rules[r.Index]
}

// Counters are the packets and bytes the kernel counted for one rule.
type Counters struct {
	Packets, Bytes uint64
}
