package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/redirect"
)

// nftVerdict* are the verdict codes of nftables' immediate expression.
const (
	nftVerdictReturn = -5 // NFT_RETURN
	nftVerdictGoto   = -4 // NFT_GOTO
	nftVerdictJump   = -3 // NFT_JUMP
	nftVerdictDrop   = 0  // NF_DROP
	nftVerdictAccept = 1  // NF_ACCEPT

	nftaBitwiseOp = 6 // NFTA_BITWISE_OP, which x/sys/unix does not define
)

// nftExpr is one expression of a rule, decoded to the fields the iptables-nft expressions use. atom
// describes it whole (every attribute the decoder knows, the counter's values left out), so that two
// expressions with equal atoms do the same.
type nftExpr struct {
	name string
	atom string

	key, reg, op, base, offset, length uint32 // meta, cmp, payload, bitwise
	data, mask, xor                    []byte // cmp, bitwise
	verdict                            int32  // immediate
	chain                              string // immediate
	xtName                             string // match, target
	xtRev                              uint32
	info                               []byte
	packets, bytes                     uint64 // counter
}

// readNFT reads the xtables tables of family fam (ip or ip6) over netlink: tables, chains, rules.
func readNFT(fam redirect.Family) (*kernelTables, error) {
	nfFam := byte(unix.NFPROTO_IPV4)
	if fam == redirect.IPv6 {
		nfFam = unix.NFPROTO_IPV6
	}
	sock, err := nfnl.Open()
	if err != nil {
		return nil, err
	}
	defer sock.Close()
	dump := func(typ uint16) ([]syscall.NetlinkMessage, error) {
		msgs, err := sock.Dump(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ)},
			Data:   []byte{nfFam, unix.NFNETLINK_V0, 0, 0},
		})
		if err != nil {
			return nil, fmt.Errorf("dump nftables %s objects: %w", fam, err)
		}
		return msgs, nil
	}
	k := newKernelTables()
	tables, err := dump(unix.NFT_MSG_GETTABLE)
	if err != nil {
		return nil, err
	}
	for _, m := range tables {
		ad, err := nftAttrs(m)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_TABLE_NAME {
				if name := ad.String(); xtBuiltinChains[name] != nil {
					k.table(name)
				}
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode nftables table: %w", err)
		}
	}
	chains, err := dump(unix.NFT_MSG_GETCHAIN)
	if err != nil {
		return nil, err
	}
	type chain struct {
		name, policy string
		base         bool
	}
	byTable := map[string][]chain{}
	k.handles, k.bases = map[string]map[string][]uint64{}, map[string]map[string]bool{}
	for _, m := range chains {
		ad, err := nftAttrs(m)
		if err != nil {
			return nil, err
		}
		var table string
		c := chain{policy: "-"}
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CHAIN_TABLE:
				table = ad.String()
			case unix.NFTA_CHAIN_NAME:
				c.name = ad.String()
			case unix.NFTA_CHAIN_HOOK:
				c.base = true
			case unix.NFTA_CHAIN_POLICY:
				c.policy = verdictName(int32(ad.Uint32()))
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode nftables chain: %w", err)
		}
		if k.tables[table] != nil {
			byTable[table] = append(byTable[table], c)
		}
	}
	// iptables-nft-save prints every built-in chain of the table, in hook order, those without a base
	// chain yet with policy ACCEPT, then the user chains by name.
	for name := range k.tables {
		cs := byTable[name]
		for _, b := range xtBuiltinChains[name] {
			policy := "ACCEPT"
			if i := slices.IndexFunc(cs, func(c chain) bool { return c.base && c.name == b }); i >= 0 {
				policy = cs[i].policy
				if k.bases[name] == nil {
					k.bases[name] = map[string]bool{}
				}
				k.bases[name][b] = true
			}
			k.chain(name, b, policy)
		}
		var users []string
		for _, c := range cs {
			if !c.base {
				users = append(users, c.name)
			}
		}
		slices.Sort(users)
		for _, c := range users {
			k.chain(name, c, "-")
		}
	}
	rules, err := dump(unix.NFT_MSG_GETRULE)
	if err != nil {
		return nil, err
	}
	for _, m := range rules {
		table, chain, exprs, udComment, handle, err := nftRule(m)
		if err != nil {
			return nil, err
		}
		if t := k.tables[table]; t == nil || !slices.Contains(t.Chains, chain) {
			continue
		}
		spec, c := nftRuleSpec(exprs, fam, udComment)
		k.rule(table, chain, spec, c)
		if k.handles[table] == nil {
			k.handles[table] = map[string][]uint64{}
		}
		k.handles[table][chain] = append(k.handles[table][chain], handle)
	}
	return k, nil
}

// nftAttrs returns a decoder of the attributes of an nftables message, after its nfgenmsg.
func nftAttrs(m syscall.NetlinkMessage) (*netlink.AttributeDecoder, error) {
	if len(m.Data) < 4 {
		return nil, errors.New("short nftables message")
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil, fmt.Errorf("decode nftables message: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

// nftRule decodes a NEWRULE message: table, chain, expressions, comment and handle.
func nftRule(m syscall.NetlinkMessage) (table, chain string, exprs []nftExpr, comment string, handle uint64, err error) {
	if len(m.Data) < 4 {
		return "", "", nil, "", 0, errors.New("short nftables message")
	}
	r, err := nfnl.ParseRule(m.Data[4:])
	if err != nil {
		return "", "", nil, "", 0, err
	}
	for _, b := range r.Exprs {
		e, err := decodeNFTExpr(b)
		if err != nil {
			return "", "", nil, "", 0, fmt.Errorf("decode nftables rule: %w", err)
		}
		exprs = append(exprs, e)
	}
	return r.Table, r.Chain, exprs, udataComment(r.UserData), r.Handle, nil
}

// udataComment returns the comment of a rule's user data (type-length-value items, the comment of
// type NFTNL_UDATA_RULE_COMMENT, 0, NUL-terminated), or "".
func udataComment(b []byte) string {
	for len(b) >= 2 {
		typ, n := b[0], int(b[1])
		if 2+n > len(b) {
			return ""
		}
		if typ == 0 {
			return cString(b[2 : 2+n])
		}
		b = b[2+n:]
	}
	return ""
}

// decodeNFTExpr decodes one expression: the attributes of an NFTA_LIST_ELEM, its name and data.
func decodeNFTExpr(b []byte) (nftExpr, error) {
	var e nftExpr
	name, data, err := nfnl.ExprNameData(b)
	if err != nil {
		return e, err
	}
	e.name = name
	var atom []string
	add := func(typ uint16, v any) { atom = append(atom, fmt.Sprintf("%d=%v", typ, v)) }
	// The attributes each expression iptables-nft writes has: 32-bit numbers and nft_data values.
	u32s := map[string]map[uint16]*uint32{
		"meta":      {unix.NFTA_META_KEY: &e.key, unix.NFTA_META_DREG: &e.reg},
		"cmp":       {unix.NFTA_CMP_SREG: &e.reg, unix.NFTA_CMP_OP: &e.op},
		"payload":   {unix.NFTA_PAYLOAD_DREG: &e.reg, unix.NFTA_PAYLOAD_BASE: &e.base, unix.NFTA_PAYLOAD_OFFSET: &e.offset, unix.NFTA_PAYLOAD_LEN: &e.length},
		"bitwise":   {unix.NFTA_BITWISE_SREG: new(uint32), unix.NFTA_BITWISE_DREG: new(uint32), unix.NFTA_BITWISE_LEN: new(uint32)},
		"immediate": {unix.NFTA_IMMEDIATE_DREG: new(uint32)},
		"match":     {unix.NFTA_MATCH_REV: &e.xtRev},
		"target":    {unix.NFTA_TARGET_REV: &e.xtRev},
	}[e.name]
	values := map[string]map[uint16]*[]byte{
		"cmp":     {unix.NFTA_CMP_DATA: &e.data},
		"bitwise": {unix.NFTA_BITWISE_MASK: &e.mask, unix.NFTA_BITWISE_XOR: &e.xor},
	}[e.name]
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return e, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		typ := ad.Type()
		if p := u32s[typ]; p != nil {
			*p = ad.Uint32()
			add(typ, *p)
			continue
		}
		if p := values[typ]; p != nil {
			ad.Nested(func(d *netlink.AttributeDecoder) error {
				for d.Next() {
					if d.Type() == unix.NFTA_DATA_VALUE {
						*p = d.Bytes()
					}
				}
				return nil
			})
			add(typ, *p)
			continue
		}
		switch {
		case e.name == "bitwise" && typ == nftaBitwiseOp:
			if op := ad.Uint32(); op != 0 { // NFT_BITWISE_BOOL, the default
				add(typ, op)
			}
		case e.name == "immediate" && typ == unix.NFTA_IMMEDIATE_DATA:
			e.verdict = 1 << 30 // not a verdict unless one is found
			ad.Nested(func(d *netlink.AttributeDecoder) error {
				for d.Next() {
					if d.Type() != unix.NFTA_DATA_VERDICT {
						add(typ, d.Bytes())
						continue
					}
					d.Nested(func(v *netlink.AttributeDecoder) error {
						for v.Next() {
							switch v.Type() {
							case unix.NFTA_VERDICT_CODE:
								e.verdict = int32(v.Uint32())
							case unix.NFTA_VERDICT_CHAIN:
								e.chain = v.String()
							}
						}
						return nil
					})
				}
				return nil
			})
			add(typ, fmt.Sprintf("%d:%s", e.verdict, e.chain))
		case (e.name == "match" || e.name == "target") && typ == unix.NFTA_MATCH_NAME: // = NFTA_TARGET_NAME
			e.xtName = ad.String()
			add(typ, e.xtName)
		case (e.name == "match" || e.name == "target") && typ == unix.NFTA_MATCH_INFO:
			e.info = ad.Bytes()
			add(typ, e.info)
		case e.name == "counter" && typ == unix.NFTA_COUNTER_PACKETS:
			e.packets = ad.Uint64()
		case e.name == "counter" && typ == unix.NFTA_COUNTER_BYTES:
			e.bytes = ad.Uint64()
		case e.name != "counter":
			add(typ, ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return e, err
	}
	slices.Sort(atom)
	e.atom = e.name + "{" + strings.Join(atom, " ") + "}"
	return e, nil
}

// nftRuleSpec returns the spec of a rule with expressions ex, as iptables-save prints it (or the
// placeholder of unknownSpec), and its counters.
func nftRuleSpec(ex []nftExpr, fam redirect.Family, udComment string) (string, count) {
	var c count
	names := make([]string, 0, len(ex))
	for _, e := range ex {
		c.packets += e.packets
		c.bytes += e.bytes
		name := e.name
		if e.xtName != "" {
			name += ":" + e.xtName
		}
		names = append(names, name)
	}
	// A comment after every other match is printed after them: leave it out of the Rule. A comment
	// in the rule's user data (newer iptables-nft) is printed there too.
	comment, hasComment := udComment, udComment != ""
	for i, e := range ex {
		text, ok := commentMatch(e.xtName, e.xtRev, e.info)
		if e.name != "match" || !ok {
			continue
		}
		if !slices.ContainsFunc(ex[i+1:], func(e nftExpr) bool { return e.name != "counter" && e.name != "immediate" && e.name != "target" }) {
			comment, hasComment = text, true
			ex = slices.Delete(slices.Clone(ex), i, i+1)
		}
		break
	}
	r, ok := decodeNFTRule(ex, fam)
	if !ok || !sameNFTExprs(&r, fam, ex) {
		return unknownSpec(names), c
	}
	if hasComment {
		return withComment(RuleSpec(&r, fam), comment), c
	}
	return RuleSpec(&r, fam), c
}

// sameNFTExprs reports whether r, encoded as shunt encodes it, is ex.
func sameNFTExprs(r *redirect.Rule, fam redirect.Family, ex []nftExpr) (same bool) {
	defer func() {
		if recover() != nil {
			same = false // RuleSpec and nftExprs panic on targets they do not know
		}
	}()
	want, err := nftExprs(r, fam)
	if err != nil || len(want) != len(ex) {
		return false
	}
	nfFam := byte(unix.NFPROTO_IPV4)
	if fam == redirect.IPv6 {
		nfFam = unix.NFPROTO_IPV6
	}
	for i, w := range want {
		b, err := expr.Marshal(nfFam, w)
		if err != nil {
			return false
		}
		e, err := decodeNFTExpr(b)
		if err != nil || e.atom != ex[i].atom {
			return false
		}
	}
	return true
}

// decodeNFTRule reads the expressions iptables-nft writes into a Rule: interface, protocol, address,
// port and mark comparisons, xtables matches, a counter, then a verdict or xtables target. ok is false
// for anything else.
func decodeNFTRule(ex []nftExpr, fam redirect.Family) (r redirect.Rule, ok bool) {
	srcOff, dstOff := uint32(12), uint32(16)
	if fam == redirect.IPv6 {
		srcOff, dstOff = 8, 24
	}
	alen := 4
	if fam == redirect.IPv6 {
		alen = 16
	}
	hasTarget := false
	for i := 0; i < len(ex); i++ {
		e := ex[i]
		if hasTarget {
			return r, false
		}
		var cmp, bitwise *nftExpr
		if e.name == "meta" || e.name == "payload" {
			j := i + 1
			if j < len(ex) && ex[j].name == "bitwise" {
				bitwise = &ex[j]
				j++
			}
			if j >= len(ex) || ex[j].name != "cmp" {
				return r, false
			}
			cmp = &ex[j]
			i = j
			if cmp.op != uint32(expr.CmpOpEq) && cmp.op != uint32(expr.CmpOpNeq) {
				return r, false
			}
		}
		not := cmp != nil && cmp.op == uint32(expr.CmpOpNeq)
		switch e.name {
		case "meta":
			switch expr.MetaKey(e.key) {
			case expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME:
				name := string(cmp.data)
				if n, found := strings.CutSuffix(name, "\x00"); found {
					name = n
				} else {
					name += "+"
				}
				m := redirect.IfaceMatch{Name: name, Not: not}
				if expr.MetaKey(e.key) == expr.MetaKeyIIFNAME {
					r.In = m
				} else {
					r.Out = m
				}
			case expr.MetaKeyL4PROTO:
				if len(cmp.data) != 1 || not {
					return r, false
				}
				switch cmp.data[0] {
				case unix.IPPROTO_TCP:
					r.Proto = "tcp"
				case unix.IPPROTO_UDP:
					r.Proto = "udp"
				default:
					return r, false
				}
			case expr.MetaKeyMARK:
				if len(cmp.data) != 4 {
					return r, false
				}
				r.Mark = redirect.MarkMatch{Set: true, Value: binary.NativeEndian.Uint32(cmp.data), Not: not}
			default:
				return r, false
			}
		case "payload":
			switch {
			case expr.PayloadBase(e.base) == expr.PayloadBaseNetworkHeader && (e.offset == srcOff || e.offset == dstOff):
				data := make([]byte, alen)
				if len(cmp.data) > alen {
					return r, false
				}
				copy(data, cmp.data)
				bits := 8 * len(cmp.data)
				if bitwise != nil {
					bits = maskBits(bitwise.mask)
				}
				m := redirect.AddrMatch{Prefix: addrPrefix(data, bits), Not: not}
				if e.offset == srcOff {
					r.Src = m
				} else {
					r.Dst = m
				}
			case expr.PayloadBase(e.base) == expr.PayloadBaseTransportHeader && (e.offset == 0 || e.offset == 2) && len(cmp.data) == 2:
				m := redirect.PortMatch{Ports: []uint16{binary.BigEndian.Uint16(cmp.data)}, Not: not}
				if e.offset == 0 {
					r.SPort = m
				} else {
					r.DPort = m
				}
			default:
				return r, false
			}
		case "match":
			if !decodeXtMatch(&r, e.xtName, e.xtRev, e.info) {
				return r, false
			}
		case "counter":
		case "immediate":
			hasTarget = true
			switch e.verdict {
			case nftVerdictJump:
				r.Target = redirect.Target{Kind: redirect.TargetJump, Chain: e.chain}
			case nftVerdictReturn:
				r.Target.Kind = redirect.TargetReturn
			case nftVerdictAccept:
				r.Target.Kind = redirect.TargetAccept
			case nftVerdictDrop:
				r.Target.Kind = redirect.TargetDrop
			default: // goto, a value
				return r, false
			}
		case "target":
			hasTarget = true
			if !decodeXtTarget(&r.Target, fam, e.xtName, e.xtRev, e.info) {
				return r, false
			}
		default:
			return r, false
		}
	}
	return r, hasTarget
}
