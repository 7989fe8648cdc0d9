package iptables

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
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
// names, when given, are the family's tables as a dump just found them: they are not asked for again.
func readNFT(fam redirect.Family, names []string) (*kernelTables, error) {
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
	if names == nil {
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
					names = append(names, ad.String())
				}
			}
			if err := ad.Err(); err != nil {
				return nil, fmt.Errorf("decode nftables table: %w", err)
			}
		}
	}
	for _, name := range names {
		if xtBuiltinChains[name] != nil {
			k.table(name)
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
		if len(m.Data) < 4 {
			return nil, errors.New("short nftables message")
		}
		r, err := nfnl.ParseRule(m.Data[4:])
		if err != nil {
			return nil, err
		}
		// Rules of tables iptables does not know (another program's nft tables of the family) are
		// not decoded: they are none of what the save tool prints.
		if t := k.tables[r.Table]; t == nil || !slices.Contains(t.Chains, r.Chain) {
			continue
		}
		exprs, err := nftRuleExprs(r)
		if err != nil {
			return nil, err
		}
		spec, c := nftRuleSpec(exprs, fam, udataComment(r.UserData))
		k.rule(r.Table, r.Chain, spec, c)
		if k.handles[r.Table] == nil {
			k.handles[r.Table] = map[string][]uint64{}
		}
		k.handles[r.Table][r.Chain] = append(k.handles[r.Table][r.Chain], r.Handle)
	}
	return k, nil
}

// nftAttrs returns the attributes of an nftables message, after its nfgenmsg.
func nftAttrs(m syscall.NetlinkMessage) (nfnl.Attrs, error) {
	if len(m.Data) < 4 {
		return nfnl.Attrs{}, errors.New("short nftables message")
	}
	ad, err := nfnl.NewAttrs(m.Data[4:])
	if err != nil {
		return ad, fmt.Errorf("decode nftables message: %w", err)
	}
	return ad, nil
}

// nftRuleExprs decodes the expressions of rule r.
func nftRuleExprs(r nfnl.Rule) ([]nftExpr, error) {
	exprs := make([]nftExpr, 0, len(r.Exprs))
	for _, b := range r.Exprs {
		e, err := decodeNFTExpr(b)
		if err != nil {
			return nil, fmt.Errorf("decode nftables rule: %w", err)
		}
		exprs = append(exprs, e)
	}
	return exprs, nil
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

// decodeNFTExpr decodes one expression: the attributes of an NFTA_LIST_ELEM, its name and data. The
// byte slices of the result alias b. It allocates little: the init container's re-run decodes every
// rule of a family in a process whose every allocation costs fresh pages.
func decodeNFTExpr(b []byte) (nftExpr, error) {
	var e nftExpr
	name, data, err := nfnl.ExprNameData(b)
	if err != nil {
		return e, err
	}
	e.name = name
	ad, err := nfnl.NewAttrs(data)
	if err != nil {
		return e, err
	}
	var buf [256]byte
	var parts [8][2]int
	atom := atomParts{buf: buf[:0], parts: parts[:0]}
	var scratch uint32
	xt := e.name == "match" || e.name == "target"
	for ad.Next() {
		typ := ad.Type()
		// The attributes each expression iptables-nft writes has: 32-bit numbers and nft_data values.
		if p := e.u32Attr(typ, &scratch); p != nil {
			*p = ad.Uint32()
			atom = atom.uint(typ, uint64(*p))
			continue
		}
		if p := e.valueAttr(typ); p != nil {
			d := ad.Nested()
			for d.Next() {
				if d.Type() == unix.NFTA_DATA_VALUE {
					*p = d.Data()
				}
			}
			ad.Fail(d.Err())
			atom = atom.bytes(typ, *p)
			continue
		}
		switch {
		case e.name == "bitwise" && typ == nftaBitwiseOp:
			if op := ad.Uint32(); op != 0 { // NFT_BITWISE_BOOL, the default
				atom = atom.uint(typ, uint64(op))
			}
		case e.name == "immediate" && typ == unix.NFTA_IMMEDIATE_DATA:
			e.verdict = 1 << 30 // not a verdict unless one is found
			d := ad.Nested()
			for d.Next() {
				if d.Type() != unix.NFTA_DATA_VERDICT {
					atom = atom.bytes(typ, d.Data())
					continue
				}
				v := d.Nested()
				for v.Next() {
					switch v.Type() {
					case unix.NFTA_VERDICT_CODE:
						e.verdict = int32(v.Uint32())
					case unix.NFTA_VERDICT_CHAIN:
						e.chain = v.String()
					}
				}
				d.Fail(v.Err())
			}
			ad.Fail(d.Err())
			atom = atom.verdict(typ, e.verdict, e.chain)
		case xt && typ == unix.NFTA_MATCH_NAME: // = NFTA_TARGET_NAME
			e.xtName = ad.String()
			atom = atom.string(typ, e.xtName)
		case xt && typ == unix.NFTA_MATCH_INFO:
			e.info = ad.Data()
			atom = atom.bytes(typ, e.info)
		case e.name == "counter" && typ == unix.NFTA_COUNTER_PACKETS:
			e.packets = ad.Uint64()
		case e.name == "counter" && typ == unix.NFTA_COUNTER_BYTES:
			e.bytes = ad.Uint64()
		case e.name != "counter":
			atom = atom.bytes(typ, ad.Data())
		}
	}
	if err := ad.Err(); err != nil {
		return e, err
	}
	e.atom = atom.join(e.name)
	return e, nil
}

// u32Attr returns the field of e that the 32-bit attribute typ of e's expression sets (scratch for
// those no field keeps), or nil.
func (e *nftExpr) u32Attr(typ uint16, scratch *uint32) *uint32 {
	switch e.name {
	case "meta":
		switch typ {
		case unix.NFTA_META_KEY:
			return &e.key
		case unix.NFTA_META_DREG:
			return &e.reg
		}
	case "cmp":
		switch typ {
		case unix.NFTA_CMP_SREG:
			return &e.reg
		case unix.NFTA_CMP_OP:
			return &e.op
		}
	case "payload":
		switch typ {
		case unix.NFTA_PAYLOAD_DREG:
			return &e.reg
		case unix.NFTA_PAYLOAD_BASE:
			return &e.base
		case unix.NFTA_PAYLOAD_OFFSET:
			return &e.offset
		case unix.NFTA_PAYLOAD_LEN:
			return &e.length
		}
	case "bitwise":
		switch typ {
		case unix.NFTA_BITWISE_SREG, unix.NFTA_BITWISE_DREG, unix.NFTA_BITWISE_LEN:
			return scratch
		}
	case "immediate":
		if typ == unix.NFTA_IMMEDIATE_DREG {
			return scratch
		}
	case "match", "target":
		if typ == unix.NFTA_MATCH_REV { // = NFTA_TARGET_REV
			return &e.xtRev
		}
	}
	return nil
}

// valueAttr returns the field of e that the nft_data attribute typ of e's expression sets, or nil.
func (e *nftExpr) valueAttr(typ uint16) *[]byte {
	switch {
	case e.name == "cmp" && typ == unix.NFTA_CMP_DATA:
		return &e.data
	case e.name == "bitwise" && typ == unix.NFTA_BITWISE_MASK:
		return &e.mask
	case e.name == "bitwise" && typ == unix.NFTA_BITWISE_XOR:
		return &e.xor
	}
	return nil
}

// atomParts collects the parts "type=value" of an expression's atom, each value printed as fmt's %v
// prints it (a number, a string, bytes as [1 2 3]), to be sorted and joined: two expressions whose
// attributes are the same, in any order, have the same atom. Its methods return it grown, so that
// its buffers can live on the stack.
type atomParts struct {
	buf   []byte
	parts [][2]int // where each part starts and ends in buf
}

func (a atomParts) start(typ uint16) atomParts {
	a.parts = append(a.parts, [2]int{len(a.buf), 0})
	a.buf = strconv.AppendUint(a.buf, uint64(typ), 10)
	a.buf = append(a.buf, '=')
	return a
}

func (a atomParts) end() atomParts {
	a.parts[len(a.parts)-1][1] = len(a.buf)
	return a
}

func (a atomParts) uint(typ uint16, v uint64) atomParts {
	a = a.start(typ)
	a.buf = strconv.AppendUint(a.buf, v, 10)
	return a.end()
}

func (a atomParts) string(typ uint16, s string) atomParts {
	a = a.start(typ)
	a.buf = append(a.buf, s...)
	return a.end()
}

func (a atomParts) bytes(typ uint16, b []byte) atomParts {
	a = a.start(typ)
	a.buf = append(a.buf, '[')
	for i, c := range b {
		if i > 0 {
			a.buf = append(a.buf, ' ')
		}
		a.buf = strconv.AppendUint(a.buf, uint64(c), 10)
	}
	a.buf = append(a.buf, ']')
	return a.end()
}

func (a atomParts) verdict(typ uint16, code int32, chain string) atomParts {
	a = a.start(typ)
	a.buf = strconv.AppendInt(a.buf, int64(code), 10)
	a.buf = append(a.buf, ':')
	a.buf = append(a.buf, chain...)
	return a.end()
}

// join returns name{part part ...}, the parts sorted.
func (a atomParts) join(name string) string {
	slices.SortFunc(a.parts, func(x, y [2]int) int {
		return bytes.Compare(a.buf[x[0]:x[1]], a.buf[y[0]:y[1]])
	})
	var b strings.Builder
	b.Grow(len(name) + len(a.buf) + len(a.parts) + 2)
	b.WriteString(name)
	b.WriteByte('{')
	for i, p := range a.parts {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.Write(a.buf[p[0]:p[1]])
	}
	b.WriteByte('}')
	return b.String()
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
