package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	gonft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/redirect"
)

// This file turns a plan into nftables objects with the expressions nft itself compiles the same rule
// text to, implicit dependencies included (meta nfproto before an ip/ip6 match, meta l4proto before
// a port match), so that `nft list ruleset` prints what the script of Render would have loaded.

// nfRangeProtoSpecified is NF_NAT_RANGE_PROTO_SPECIFIED, the flag of a redirect to a port.
const nfRangeProtoSpecified = 0x2

// compiledTable is a table of the plan, ready to be added to a transaction.
type compiledTable struct {
	name   string
	chains []compiledChain
}

type compiledChain struct {
	name  string
	base  *BaseChain
	rules []compiledRule
}

type compiledRule struct {
	text  string
	exprs []expr.Any
	sets  []anonSet // anonymous sets the rule looks up, added before it
}

// anonSet is a constant anonymous set of ports and the lookup that uses it.
type anonSet struct {
	lookup *expr.Lookup
	ports  []uint16
}

// compilePlan returns the tables of plan, an inet plan, as nftables objects.
func compilePlan(plan *redirect.Plan) ([]compiledTable, error) {
	fp, err := inetPlan(plan)
	if err != nil {
		return nil, err
	}
	return compile(fp)
}

// compile returns fp's tables as nftables objects.
func compile(fp *redirect.FamilyPlan) ([]compiledTable, error) {
	var tables []compiledTable
	for i := range fp.Tables {
		t := &fp.Tables[i]
		ct := compiledTable{name: TableName(t.Name)}
		for _, c := range t.Chains {
			cc := compiledChain{name: ChainName(c.Name)}
			if c.Builtin {
				bc, err := baseChain(t.Name, c.Name)
				if err != nil {
					return nil, err
				}
				cc.base = &bc
			}
			for j := range c.Rules {
				ops, err := ruleOps(&c.Rules[j])
				if err != nil {
					return nil, fmt.Errorf("%s/%s: %w", ct.name, cc.name, err)
				}
				r, err := compileOps(ops)
				if err != nil {
					return nil, fmt.Errorf("%s/%s: %w", ct.name, cc.name, err)
				}
				cc.rules = append(cc.rules, r)
			}
			ct.chains = append(ct.chains, cc)
		}
		tables = append(tables, ct)
	}
	return tables, nil
}

// compileOps returns the expressions of a rule's ops.
func compileOps(ops []op) (compiledRule, error) {
	var r compiledRule
	words := make([]string, len(ops))
	var l4 string
	var nf redirect.Family
	emit := func(es ...expr.Any) { r.exprs = append(r.exprs, es...) }
	load := func(key expr.MetaKey) *expr.Meta { return &expr.Meta{Key: key, Register: 1} }
	cmp := func(not bool, data []byte) *expr.Cmp {
		op := expr.CmpOpEq
		if not {
			op = expr.CmpOpNeq
		}
		return &expr.Cmp{Op: op, Register: 1, Data: data}
	}
	needNF := func(f redirect.Family) {
		if nf != f {
			proto := byte(unix.NFPROTO_IPV4)
			if f == redirect.IPv6 {
				proto = unix.NFPROTO_IPV6
			}
			emit(load(expr.MetaKeyNFPROTO), cmp(false, []byte{proto}))
			nf = f
		}
	}
	needL4 := func(p string) {
		if l4 != p {
			emit(load(expr.MetaKeyL4PROTO), cmp(false, []byte{protoNum(p)}))
			l4 = p
		}
	}
	for i := range ops {
		o := &ops[i]
		words[i] = o.text()
		switch o.kind {
		case opIface:
			key := expr.MetaKeyIIFNAME
			if o.out {
				key = expr.MetaKeyOIFNAME
			}
			emit(load(key), cmp(o.not, ifname(o.name)))
		case opL4Proto:
			emit(load(expr.MetaKeyL4PROTO), cmp(false, []byte{protoNum(o.name)}))
			l4 = o.name
		case opAddr:
			fam, off := redirect.IPv4, uint32(16)
			if o.prefix.Addr().Is6() {
				fam, off = redirect.IPv6, 24
			}
			if o.src {
				off -= uint32(o.prefix.Addr().BitLen() / 8)
			}
			needNF(fam)
			emit(addrMatch(o.prefix, off, o.not)...)
		case opPorts:
			needL4(o.name)
			off := uint32(2)
			if o.src {
				off = 0
			}
			emit(&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2})
			if len(o.ports) == 1 {
				emit(cmp(o.not, binaryutil.BigEndian.PutUint16(o.ports[0])))
				continue
			}
			l := &expr.Lookup{SourceRegister: 1, Invert: o.not}
			r.sets = append(r.sets, anonSet{lookup: l, ports: o.ports})
			emit(l)
		case opCTState:
			var bits uint32
			for _, s := range o.states {
				b, ok := ctStates[s]
				if !ok {
					return r, fmt.Errorf("unknown conntrack state %q", s)
				}
				bits |= b
			}
			emit(&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bits), Xor: native32(0)},
				cmp(!o.not, native32(0)))
		case opMark:
			emit(load(expr.MetaKeyMARK), cmp(o.not, native32(o.value)))
		case opCTMark:
			emit(&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, cmp(o.not, native32(o.value)))
		case opOwner:
			key := expr.MetaKeySKUID
			if o.gid {
				key = expr.MetaKeySKGID
			}
			emit(load(key), cmp(o.not, native32(o.value)))
		case opCounter:
			emit(&expr.Counter{})
		case opVerdict:
			v, ok := verdicts[o.name]
			if !ok {
				return r, fmt.Errorf("unknown verdict %q", o.name)
			}
			emit(&expr.Verdict{Kind: v, Chain: o.chain})
		case opRedirect:
			emit(&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(o.value))},
				&expr.Redir{RegisterProtoMin: 1, Flags: nfRangeProtoSpecified})
		case opTProxy:
			needNF(o.family)
			fam := byte(unix.NFPROTO_IPV4)
			if o.family == redirect.IPv6 {
				fam = unix.NFPROTO_IPV6
			}
			emit(&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(o.value))},
				&expr.TProxy{Family: fam, TableFamily: unix.NFPROTO_INET, RegPort: 1})
		case opSetMark:
			emit(&expr.Immediate{Register: 1, Data: native32(o.value)}, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
		case opSaveMark:
			emit(load(expr.MetaKeyMARK), &expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true})
		case opRestoreMark:
			emit(&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
		case opCTZone:
			emit(&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint16(nil, uint16(o.value))},
				&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true})
		default:
			return r, fmt.Errorf("unknown op %d", o.kind)
		}
	}
	r.text = strings.Join(words, " ")
	return r, nil
}

var ctStates = map[string]uint32{
	"invalid":     expr.CtStateBitINVALID,
	"established": expr.CtStateBitESTABLISHED,
	"related":     expr.CtStateBitRELATED,
	"new":         expr.CtStateBitNEW,
	"untracked":   expr.CtStateBitUNTRACKED,
}

var verdicts = map[string]expr.VerdictKind{
	"return": expr.VerdictReturn,
	"accept": expr.VerdictAccept,
	"drop":   expr.VerdictDrop,
	"jump":   expr.VerdictJump,
}

// addrMatch matches the address at offset off of the network header against p, as nft does: a
// prefix on a byte boundary loads only its bytes, any other is masked.
func addrMatch(p netip.Prefix, off uint32, not bool) []expr.Any {
	op := expr.CmpOpEq
	if not {
		op = expr.CmpOpNeq
	}
	addr := p.Masked().Addr().AsSlice()
	if bits := p.Bits(); bits > 0 && bits%8 == 0 {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(bits / 8)},
			&expr.Cmp{Op: op, Register: 1, Data: addr[:bits/8]},
		}
	}
	mask := make([]byte, len(addr))
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: op, Register: 1, Data: addr},
	}
}

// ifname is the comparand of an interface name: padded to IFNAMSIZ, or for a wildcard (iptables'
// trailing '+') only its prefix.
func ifname(name string) []byte {
	if base, ok := strings.CutSuffix(name, "+"); ok {
		return []byte(base)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func protoNum(p string) byte {
	if p == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// chainObject returns the nftables chain of c in table t.
func chainObject(t *gonft.Table, c *compiledChain) *gonft.Chain {
	ch := &gonft.Chain{Name: c.name, Table: t}
	if c.base != nil {
		policy := gonft.ChainPolicyAccept
		ch.Type = gonft.ChainType(c.base.Type)
		ch.Hooknum = hooks[c.base.Hook]
		ch.Priority = gonft.ChainPriorityRef(gonft.ChainPriority(c.base.Priority))
		ch.Policy = &policy
	}
	return ch
}

var hooks = map[string]*gonft.ChainHook{
	"prerouting": gonft.ChainHookPrerouting,
	"output":     gonft.ChainHookOutput,
}
