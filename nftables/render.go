// Package nftables programs a redirect.Plan of Istio's native nftables mode (Config.NativeNFTables)
// into the kernel over netlink, with no nft or iptables binary: the inet tables istio-proxy-nat,
// istio-proxy-mangle and istio-proxy-raw, all of them in one transaction. It also prints the plan as an
// nft script (loadable with `nft -f`), reads the tables back, reconciles drift and cleans up.
package nftables

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Table names, as Istio's native nftables mode names them.
const (
	TableNAT    = "istio-proxy-nat"
	TableMangle = "istio-proxy-mangle"
	TableRaw    = "istio-proxy-raw"
)

// Tables lists every table shunt owns, the only ones it ever changes or deletes.
var Tables = []string{TableNAT, TableMangle, TableRaw}

// TableName returns the nftables table of an engine table (redirect.TableNAT, …).
func TableName(table string) string { return "istio-proxy-" + table }

// ChainName returns the nftables name of an engine chain: ISTIO_IN_REDIRECT is istio-in-redirect,
// the built-in PREROUTING is the base chain prerouting.
func ChainName(chain string) string { return strings.ReplaceAll(strings.ToLower(chain), "_", "-") }

// BaseChain is how a built-in chain of the engine is hooked: type, hook and priority.
type BaseChain struct {
	Type     string // nat, filter or route
	Hook     string // prerouting or output
	Priority int
}

// baseChains are the base chains the engine uses, hooked as Istio's native mode hooks them.
var baseChains = map[string]map[string]BaseChain{
	redirect.TableNAT: {
		"PREROUTING": {"nat", "prerouting", -100},
		"OUTPUT":     {"nat", "output", -100},
	},
	redirect.TableMangle: {
		"PREROUTING": {"filter", "prerouting", -150},
		"OUTPUT":     {"route", "output", -150},
	},
	redirect.TableRaw: {
		"PREROUTING": {"filter", "prerouting", -300},
		"OUTPUT":     {"filter", "output", -300},
	},
}

// baseChain returns the hook of built-in chain of table.
func baseChain(table, chain string) (BaseChain, error) {
	bc, ok := baseChains[table][chain]
	if !ok {
		return BaseChain{}, fmt.Errorf("no base chain for %s in table %s", chain, table)
	}
	return bc, nil
}

// ErrNotInet is returned for a plan that was not built for nftables (Config.NativeNFTables unset).
var ErrNotInet = errors.New("the plan is not an inet plan: build it with NativeNFTables")

// inetPlan returns the one inet family plan of plan.
func inetPlan(plan *redirect.Plan) (*redirect.FamilyPlan, error) {
	if len(plan.Families) != 1 || plan.Families[0].Family != redirect.Inet {
		return nil, ErrNotInet
	}
	return &plan.Families[0], nil
}

// opKind is what one part of a rule does.
type opKind int

// Matches, then statements.
const (
	opIface       opKind = iota // meta iifname / oifname
	opL4Proto                   // meta l4proto
	opAddr                      // ip/ip6 saddr/daddr
	opPorts                     // tcp/udp sport/dport, one port or an anonymous set
	opCTState                   // ct state
	opMark                      // meta mark
	opCTMark                    // ct mark
	opOwner                     // meta skuid / skgid
	opCounter                   // counter
	opVerdict                   // return, accept, drop, jump
	opRedirect                  // redirect to :port
	opTProxy                    // tproxy ip/ip6 to :port
	opSetMark                   // meta mark set value
	opSaveMark                  // ct mark set mark
	opRestoreMark               // meta mark set ct mark
	opCTZone                    // ct zone set
)

// op is one match or statement of a rule. Its text and its kernel expressions (exprs, Linux only) are
// made from it, so that the printed script and the programmed rules cannot disagree.
type op struct {
	kind   opKind
	not    bool
	out    bool   // opIface: oifname
	src    bool   // opAddr, opPorts: source
	gid    bool   // opOwner
	name   string // opIface: interface; opVerdict: verdict; opL4Proto, opPorts: protocol
	chain  string // opVerdict jump
	prefix netip.Prefix
	ports  []uint16
	states []string // opCTState, lower case
	value  uint32   // marks, ids, ports of statements, zones
	family redirect.Family
}

// text returns op as nft writes it.
func (o *op) text() string {
	neg := ""
	if o.not {
		neg = "!= "
	}
	switch o.kind {
	case opIface:
		key := "iifname"
		if o.out {
			key = "oifname"
		}
		name := o.name
		if base, ok := strings.CutSuffix(name, "+"); ok {
			name = strconv.Quote(base + "*") // iptables' wildcard is nft's
		}
		return key + " " + neg + name
	case opL4Proto:
		return "meta l4proto " + o.name
	case opAddr:
		proto, key := "ip", "daddr"
		if o.prefix.Addr().Is6() {
			proto = "ip6"
		}
		if o.src {
			key = "saddr"
		}
		return proto + " " + key + " " + neg + o.prefix.String()
	case opPorts:
		key := "dport"
		if o.src {
			key = "sport"
		}
		list := make([]string, len(o.ports))
		for i, p := range o.ports {
			list[i] = strconv.Itoa(int(p))
		}
		set := list[0]
		if len(list) > 1 {
			set = "{ " + strings.Join(list, ", ") + " }"
		}
		return o.name + " " + key + " " + neg + set
	case opCTState:
		return "ct state " + neg + strings.Join(o.states, ",")
	case opMark:
		return "meta mark " + neg + strconv.FormatUint(uint64(o.value), 10)
	case opCTMark:
		return "ct mark " + neg + strconv.FormatUint(uint64(o.value), 10)
	case opOwner:
		key := "meta skuid "
		if o.gid {
			key = "meta skgid "
		}
		return key + neg + strconv.FormatUint(uint64(o.value), 10)
	case opCounter:
		return "counter"
	case opVerdict:
		if o.name == "jump" {
			return "jump " + o.chain
		}
		return o.name
	case opRedirect:
		return "redirect to :" + strconv.FormatUint(uint64(o.value), 10)
	case opTProxy:
		fam := "ip"
		if o.family == redirect.IPv6 {
			fam = "ip6"
		}
		return "tproxy " + fam + " to :" + strconv.FormatUint(uint64(o.value), 10)
	case opSetMark:
		return "meta mark set " + strconv.FormatUint(uint64(o.value), 10)
	case opSaveMark:
		return "ct mark set mark"
	case opRestoreMark:
		return "meta mark set ct mark"
	case opCTZone:
		return "ct zone set " + strconv.FormatUint(uint64(o.value), 10)
	}
	panic(fmt.Sprintf("nftables: unknown op %d", o.kind))
}

// ruleOps returns the ops of r in the order Istio's native mode writes them, so that the kernel holds
// the same expressions: interfaces, protocol, addresses, conntrack state, ports, marks, owners, then the
// statements with a counter before the verdict. Two kinds of rule differ, as in Istio: a redirect
// with a destination (DNS) matches the address before the protocol, and a conntrack-zone rule matches
// its ports before owners and addresses.
func ruleOps(r *redirect.Rule) ([]op, error) {
	var ops []op
	if r.In.Name != "" {
		ops = append(ops, op{kind: opIface, name: r.In.Name, not: r.In.Not})
	}
	if r.Out.Name != "" {
		ops = append(ops, op{kind: opIface, out: true, name: r.Out.Name, not: r.Out.Not})
	}
	var addrs, ports, owners []op
	for _, a := range []struct {
		m   redirect.AddrMatch
		src bool
	}{{r.Src, true}, {r.Dst, false}} {
		if a.m.Prefix.IsValid() {
			addrs = append(addrs, op{kind: opAddr, src: a.src, prefix: a.m.Prefix.Masked(), not: a.m.Not})
		}
	}
	for _, p := range []struct {
		m   redirect.PortMatch
		src bool
	}{{r.SPort, true}, {r.DPort, false}} {
		if len(p.m.Ports) > 0 {
			if r.Proto == "" {
				return nil, errors.New("a port match needs a protocol")
			}
			ports = append(ports, op{kind: opPorts, name: r.Proto, src: p.src, ports: p.m.Ports, not: p.m.Not})
		}
	}
	for _, o := range r.Owners {
		owners = append(owners, op{kind: opOwner, gid: o.GID, value: o.ID, not: o.Not})
	}
	switch {
	case r.Target.Kind == redirect.TargetCTZone:
		if r.Proto != "" && len(ports) == 0 {
			ops = append(ops, op{kind: opL4Proto, name: r.Proto})
		}
		ops = append(append(append(ops, ports...), owners...), addrs...)
	case r.Target.Kind == redirect.TargetRedirect && len(addrs) > 0:
		ops = append(ops, addrs...)
		if r.Proto != "" && len(ports) == 0 {
			ops = append(ops, op{kind: opL4Proto, name: r.Proto})
		}
		ops = append(append(ops, ports...), owners...)
	default:
		if r.Proto != "" {
			ops = append(ops, op{kind: opL4Proto, name: r.Proto})
		}
		ops = append(ops, addrs...)
		if len(r.CTState) > 0 {
			states := make([]string, len(r.CTState))
			for i, s := range r.CTState {
				states[i] = strings.ToLower(s)
			}
			ops = append(ops, op{kind: opCTState, states: states})
		}
		ops = append(ops, ports...)
		if r.Mark.Set {
			ops = append(ops, op{kind: opMark, value: r.Mark.Value, not: r.Mark.Not})
		}
		if r.ConnMark.Set {
			ops = append(ops, op{kind: opCTMark, value: r.ConnMark.Value, not: r.ConnMark.Not})
		}
		ops = append(ops, owners...)
	}
	counter := op{kind: opCounter}
	t := r.Target
	switch t.Kind {
	case redirect.TargetJump:
		ops = append(ops, counter, op{kind: opVerdict, name: "jump", chain: ChainName(t.Chain)})
	case redirect.TargetReturn:
		ops = append(ops, counter, op{kind: opVerdict, name: "return"})
	case redirect.TargetAccept:
		ops = append(ops, counter, op{kind: opVerdict, name: "accept"})
	case redirect.TargetDrop:
		ops = append(ops, counter, op{kind: opVerdict, name: "drop"})
	case redirect.TargetRedirect:
		ops = append(ops, counter, op{kind: opRedirect, value: uint32(t.Port)})
	case redirect.TargetTProxy:
		fam := ruleFamily(r)
		if fam == redirect.Inet {
			return nil, errors.New("a TPROXY rule needs an address match to choose between ip and ip6")
		}
		ops = append(ops, op{kind: opTProxy, value: uint32(t.Port), family: fam}, op{kind: opSetMark, value: t.Mark},
			counter, op{kind: opVerdict, name: "accept"})
	case redirect.TargetSetMark:
		ops = append(ops, counter, op{kind: opSetMark, value: t.Mark})
	case redirect.TargetSaveMark:
		ops = append(ops, counter, op{kind: opSaveMark})
	case redirect.TargetRestoreMark:
		ops = append(ops, counter, op{kind: opRestoreMark})
	case redirect.TargetCTZone:
		ops = append(ops, counter, op{kind: opCTZone, value: uint32(t.Zone)})
	default:
		return nil, fmt.Errorf("unknown target kind %d", t.Kind)
	}
	return ops, nil
}

// ruleFamily returns the address family of r's addresses, or Inet when it matches none.
func ruleFamily(r *redirect.Rule) redirect.Family {
	for _, p := range []netip.Prefix{r.Src.Prefix, r.Dst.Prefix} {
		if p.IsValid() {
			if p.Addr().Is4() {
				return redirect.IPv4
			}
			return redirect.IPv6
		}
	}
	return redirect.Inet
}

// RuleText returns r as nft writes it after "add rule inet TABLE CHAIN".
func RuleText(r *redirect.Rule) (string, error) {
	ops, err := ruleOps(r)
	if err != nil {
		return "", err
	}
	words := make([]string, len(ops))
	for i := range ops {
		words[i] = ops[i].text()
	}
	return strings.Join(words, " "), nil
}

// RenderOptions tunes Render.
type RenderOptions struct {
	// Explain precedes every rule with a comment naming the flow it serves and why it is there.
	Explain bool
}

// Render returns the nft script (for `nft -f`) that does what Apply does: replace shunt's tables, and
// only them, with the plan's, in one transaction.
func Render(plan *redirect.Plan, opts RenderOptions) ([]byte, error) {
	fp, err := inetPlan(plan)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# nft -f: shunt's inet tables (Istio's native nftables mode), replaced in one transaction\n")
	for _, name := range Tables {
		// Adding, then deleting, removes the table whether it exists or not.
		fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\n", name, name)
	}
	for i := range fp.Tables {
		t := &fp.Tables[i]
		name := TableName(t.Name)
		fmt.Fprintf(&b, "add table inet %s\n", name)
		for _, c := range t.Chains {
			if !c.Builtin {
				fmt.Fprintf(&b, "add chain inet %s %s\n", name, ChainName(c.Name))
				continue
			}
			bc, err := baseChain(t.Name, c.Name)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "add chain inet %s %s { type %s hook %s priority %d ; }\n", name, ChainName(c.Name), bc.Type, bc.Hook, bc.Priority)
		}
		for _, c := range t.Chains {
			for i := range c.Rules {
				r := &c.Rules[i]
				text, err := RuleText(r)
				if err != nil {
					return nil, fmt.Errorf("%s/%s: %w", name, ChainName(c.Name), err)
				}
				if opts.Explain {
					flow := string(r.Flow)
					if ruleFamily(r) == redirect.IPv6 {
						flow += "/" + string(redirect.FlowIPv6)
					}
					fmt.Fprintf(&b, "# %s %s: %s\n", flow, redirect.FlowTitle[r.Flow], r.Why)
				}
				fmt.Fprintf(&b, "add rule inet %s %s %s\n", name, ChainName(c.Name), text)
			}
		}
	}
	return b.Bytes(), nil
}
