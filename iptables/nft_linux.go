package iptables

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/redirect"
)

// This file programs a Plan family the way iptables-nft-restore does — the same tables, base chains,
// expressions and xtables extension payloads, so that iptables-nft-save (and everything reading the
// rules) sees exactly what a restore would have produced — but from this process, in one netlink
// transaction for all tables of the family. It is used for fresh installs, where it saves the cost of
// starting iptables-nft-restore (most of the time an init container spends) and keeps owner matches
// away from libxtables' user and group name lookups.

// errNot64Bit makes Apply fall back to the restore tools on 32-bit platforms.
var errNot64Bit = errors.New("kernel API programming needs a 64-bit platform")

// baseChain is how iptables-nft defines a built-in chain.
type baseChain struct {
	typ  string
	hook uint32
	prio int32
}

// nfAccept is the verdict NF_ACCEPT, the policy of iptables-nft base chains.
const nfAccept = 1

var nftBaseChains = map[string]map[string]baseChain{
	redirect.TableNAT: {
		"PREROUTING":  {"nat", unix.NF_INET_PRE_ROUTING, -100},
		"INPUT":       {"nat", unix.NF_INET_LOCAL_IN, 100},
		"OUTPUT":      {"nat", unix.NF_INET_LOCAL_OUT, -100},
		"POSTROUTING": {"nat", unix.NF_INET_POST_ROUTING, 100},
	},
	redirect.TableMangle: {
		"PREROUTING":  {"filter", unix.NF_INET_PRE_ROUTING, -150},
		"INPUT":       {"filter", unix.NF_INET_LOCAL_IN, -150},
		"FORWARD":     {"filter", unix.NF_INET_FORWARD, -150},
		"OUTPUT":      {"route", unix.NF_INET_LOCAL_OUT, -150},
		"POSTROUTING": {"filter", unix.NF_INET_POST_ROUTING, -150},
	},
	redirect.TableRaw: {
		"PREROUTING": {"filter", unix.NF_INET_PRE_ROUTING, -300},
		"OUTPUT":     {"filter", unix.NF_INET_LOCAL_OUT, -300},
	},
}

// programNFT installs fp in one transaction that first deletes the tables named in drop: existing
// tables of fp's family that hold nothing but ours (see onlyOurs), so that the result is fp alone.
func programNFT(fp *redirect.FamilyPlan, drop []string) error {
	if strconv.IntSize != 64 {
		return errNot64Bit // the payload layouts below are those of 64-bit kernels
	}
	fam := byte(unix.NFPROTO_IPV4)
	if fp.Family == redirect.IPv6 {
		fam = unix.NFPROTO_IPV6
	}
	msgs, err := nftBatch(fp, fam, drop)
	if err != nil {
		return err
	}
	if err := nfnl.Transact(msgs); err != nil {
		return fmt.Errorf("program %s rules over netlink: %w", fp.Family, err)
	}
	return nil
}

// nftBatch returns the netlink messages of one nftables transaction deleting the tables in drop and
// creating fp's tables, chains and rules.
func nftBatch(fp *redirect.FamilyPlan, fam byte, drop []string) ([]netlink.Message, error) {
	b := newNFTMsgs(fam)
	for _, name := range drop {
		b.add(unix.NFT_MSG_DELTABLE, 0, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstr(name)}})
		if planned(fp, name) == nil {
			// Emptied, not gone: the restore tool leaves the table.
			b.newTable(name)
		}
	}
	for _, t := range fp.Tables {
		b.newTable(t.Name)
		// Chains before rules, which jump to them; user chains before built-in ones, as a restore
		// declares the former up front and creates the latter on first use.
		chains := slices.Clone(t.Chains)
		slices.SortStableFunc(chains, func(a, b redirect.Chain) int {
			return cmp.Compare(boolInt(a.Builtin), boolInt(b.Builtin))
		})
		for _, c := range chains {
			b.newChain(t.Name, c)
		}
		for _, c := range t.Chains {
			for i := range c.Rules {
				b.newRule(t.Name, c.Name, &c.Rules[i], fp.Family, true)
			}
		}
	}
	return b.done()
}

// nftMsgs builds the messages of one nftables transaction (batch) of family fam; the first error
// sticks and done returns it.
type nftMsgs struct {
	fam  byte
	msgs []netlink.Message
	err  error
}

func newNFTMsgs(fam byte) *nftMsgs {
	return &nftMsgs{fam: fam, msgs: []netlink.Message{nftMarker(unix.NFNL_MSG_BATCH_BEGIN)}}
}

func nftMarker(typ uint16) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func (b *nftMsgs) add(typ uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute) {
	if b.err != nil {
		return
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		b.err = err
		return
	}
	b.msgs = append(b.msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: netlink.Request | flags},
		Data:   append([]byte{b.fam, unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

// done returns the batch, closed, or the first error.
func (b *nftMsgs) done() ([]netlink.Message, error) {
	if b.err != nil {
		return nil, b.err
	}
	return append(b.msgs, nftMarker(unix.NFNL_MSG_BATCH_END)), nil
}

// newTable creates table name, if it does not exist.
func (b *nftMsgs) newTable(name string) {
	b.add(unix.NFT_MSG_NEWTABLE, netlink.Create, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: cstr(name)},
		{Type: unix.NFTA_TABLE_FLAGS, Data: binaryutil.BigEndian.PutUint32(0)},
	})
}

// newChain creates chain c of table: a built-in one as the base chain iptables-nft defines.
func (b *nftMsgs) newChain(table string, c redirect.Chain) {
	u32 := binaryutil.BigEndian.PutUint32
	attrs := []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(table)}, {Type: unix.NFTA_CHAIN_NAME, Data: cstr(c.Name)}}
	if c.Builtin {
		bc, ok := nftBaseChains[table][c.Name]
		if !ok {
			if b.err == nil {
				b.err = fmt.Errorf("no built-in chain %s in table %s", c.Name, table)
			}
			return
		}
		hook, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_HOOK_HOOKNUM, Data: u32(bc.hook)},
			{Type: unix.NFTA_HOOK_PRIORITY, Data: u32(uint32(bc.prio))},
		})
		if err != nil && b.err == nil {
			b.err = err
		}
		attrs = append(attrs,
			netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_CHAIN_HOOK, Data: hook},
			netlink.Attribute{Type: unix.NFTA_CHAIN_POLICY, Data: u32(nfAccept)},
			netlink.Attribute{Type: unix.NFTA_CHAIN_TYPE, Data: cstr(bc.typ)})
	}
	b.add(unix.NFT_MSG_NEWCHAIN, netlink.Create, attrs)
}

// newRule adds r to chain of table: appended, or (appendIt false) inserted at the chain's head.
func (b *nftMsgs) newRule(table, chain string, r *redirect.Rule, fam redirect.Family, appendIt bool) {
	if b.err != nil {
		return
	}
	exprs, err := nftExprs(r, fam)
	if err != nil {
		b.err = fmt.Errorf("%s/%s: %w", table, chain, err)
		return
	}
	list := make([]netlink.Attribute, len(exprs))
	for j, e := range exprs {
		data, err := expr.Marshal(b.fam, e)
		if err != nil {
			b.err = err
			return
		}
		list[j] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: data}
	}
	elems, err := netlink.MarshalAttributes(list)
	if err != nil {
		b.err = err
		return
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: elems},
	}
	if r.Proto != "" {
		// Extensions check the protocol of the rule (TPROXY and multiport need TCP or UDP);
		// iptables-nft passes it as the rule's compat information.
		compat, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_RULE_COMPAT_PROTO, Data: binaryutil.BigEndian.PutUint32(uint32(protoNum(r.Proto)))},
			{Type: unix.NFTA_RULE_COMPAT_FLAGS, Data: binaryutil.BigEndian.PutUint32(0)},
		})
		if err != nil {
			b.err = err
			return
		}
		attrs = append(attrs, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_COMPAT, Data: compat})
	}
	flags := netlink.Create
	if appendIt {
		flags |= unix.NLM_F_APPEND
	}
	b.add(unix.NFT_MSG_NEWRULE, flags, attrs)
}

// delRule deletes the rule with handle from chain of table.
func (b *nftMsgs) delRule(table, chain string, handle uint64) {
	b.add(unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
		{Type: unix.NFTA_RULE_HANDLE, Data: binaryutil.BigEndian.PutUint64(handle)},
	})
}

// flushChain deletes every rule of chain of table.
func (b *nftMsgs) flushChain(table, chain string) {
	b.add(unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
	})
}

// delChain deletes chain of table, which holds no rules.
func (b *nftMsgs) delChain(table, chain string) {
	b.add(unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_CHAIN_NAME, Data: cstr(chain)},
	})
}

func protoNum(p string) byte {
	if p == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func cmpOp(not bool) expr.CmpOp {
	if not {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// nftExprs returns r's expressions in iptables-nft's order: interfaces, protocol, addresses, matches in
// rule order, a counter, the target.
func nftExprs(r *redirect.Rule, fam redirect.Family) ([]expr.Any, error) {
	var ex []expr.Any
	iface := func(key expr.MetaKey, m redirect.IfaceMatch) {
		if m.Name == "" {
			return
		}
		data := append([]byte(m.Name), 0)
		if base, ok := strings.CutSuffix(m.Name, "+"); ok {
			data = []byte(base) // "eth+": a prefix
		}
		ex = append(ex, &expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: cmpOp(m.Not), Register: 1, Data: data})
	}
	iface(expr.MetaKeyIIFNAME, r.In)
	iface(expr.MetaKeyOIFNAME, r.Out)
	if r.Proto != "" {
		ex = append(ex, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNum(r.Proto)}})
	}
	srcOff, dstOff, alen := uint32(12), uint32(16), 4
	if fam == redirect.IPv6 {
		srcOff, dstOff, alen = 8, 24, 16
	}
	addr := func(off uint32, m redirect.AddrMatch) {
		if !m.Prefix.IsValid() {
			return // (Masked would make an error to drop)
		}
		p := m.Prefix.Masked()
		if !p.IsValid() || p.Bits() == 0 {
			return
		}
		data := p.Addr().AsSlice()
		if p.Bits()%8 == 0 {
			// Whole bytes: compare only the prefix's bytes, as iptables-nft does.
			n := p.Bits() / 8
			ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(n)},
				&expr.Cmp{Op: cmpOp(m.Not), Register: 1, Data: data[:n]})
			return
		}
		mask := make([]byte, alen)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(alen)},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(alen), Mask: mask, Xor: make([]byte, alen)},
			&expr.Cmp{Op: cmpOp(m.Not), Register: 1, Data: data})
	}
	addr(srcOff, r.Src)
	addr(dstOff, r.Dst)
	ports := func(off uint32, m redirect.PortMatch, flag byte) {
		switch len(m.Ports) {
		case 0:
		case 1:
			ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
				&expr.Cmp{Op: cmpOp(m.Not), Register: 1, Data: binaryutil.BigEndian.PutUint16(m.Ports[0])})
		default:
			ex = append(ex, xtMatch("multiport", 1, xtMultiport(m, flag)))
		}
	}
	ports(0, r.SPort, 0) // XT_MULTIPORT_SOURCE
	ports(2, r.DPort, 1) // XT_MULTIPORT_DESTINATION
	if len(r.CTState) > 0 {
		info, err := xtConntrackState(r.CTState)
		if err != nil {
			return nil, err
		}
		ex = append(ex, xtMatch("conntrack", 3, info))
	}
	if r.Mark.Set {
		ex = append(ex, &expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, &expr.Cmp{Op: cmpOp(r.Mark.Not), Register: 1, Data: native32(r.Mark.Value)})
	}
	if r.ConnMark.Set {
		ex = append(ex, xtMatch("connmark", 1, xtConnmark(r.ConnMark)))
	}
	for _, o := range r.Owners {
		ex = append(ex, xtMatch("owner", 1, xtOwner(o)))
	}
	ex = append(ex, &expr.Counter{})
	t, err := nftTarget(&r.Target, fam)
	if err != nil {
		return nil, err
	}
	return append(ex, t), nil
}

// xtConnmark is struct xt_connmark_mtinfo1: mark, mask, invert.
func xtConnmark(m redirect.MarkMatch) xtInfo {
	b := newInfo(16)
	b.u32(0, m.Value).u32(4, 0xffffffff)
	if m.Not {
		b[8] = 1
	}
	return b
}

// xtMark is struct xt_mark_mtinfo1: mark, mask, invert.
func xtMark(m redirect.MarkMatch) xtInfo { return xtConnmark(m) }

// xtOwner is struct xt_owner_match_info: uid_min, uid_max, gid_min, gid_max, match, invert.
func xtOwner(o redirect.OwnerMatch) xtInfo {
	b := newInfo(24)
	flag := byte(1) // XT_OWNER_UID
	off := 0
	if o.GID {
		flag, off = 2, 8 // XT_OWNER_GID
	}
	b.u32(off, o.ID).u32(off+4, o.ID)
	b[16] = flag
	if o.Not {
		b[17] = flag
	}
	return b
}

func nftTarget(t *redirect.Target, fam redirect.Family) (expr.Any, error) {
	switch t.Kind {
	case redirect.TargetJump:
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: t.Chain}, nil
	case redirect.TargetReturn:
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case redirect.TargetAccept:
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case redirect.TargetDrop:
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	}
	name, rev, b, err := xtTargetInfo(t, fam)
	if err != nil {
		return nil, err
	}
	return xtTarget(name, rev, b), nil
}

// xtTargetInfo returns the xtables extension of a target that is not a verdict: its name, revision
// and payload, as iptables builds them.
func xtTargetInfo(t *redirect.Target, fam redirect.Family) (string, uint32, xtInfo, error) {
	switch t.Kind {
	case redirect.TargetRedirect:
		const protoSpecified = 1 << 1 // NF_NAT_RANGE_PROTO_SPECIFIED
		if fam == redirect.IPv6 {
			// struct nf_nat_range: flags, min_addr, max_addr, min_proto, max_proto.
			b := newInfo(40)
			b.u32(0, protoSpecified).be16(36, t.Port).be16(38, t.Port)
			return "REDIRECT", 0, b, nil
		}
		// struct nf_nat_ipv4_multi_range_compat: rangesize, then flags, min_ip, max_ip, min, max.
		b := newInfo(24)
		b.u32(0, 1).u32(4, protoSpecified).be16(16, t.Port).be16(18, t.Port)
		return "REDIRECT", 0, b, nil
	case redirect.TargetTProxy:
		// struct xt_tproxy_target_info_v1: mark_mask, mark_value, laddr (any), lport.
		b := newInfo(32)
		b.u32(0, 0xffffffff).u32(4, t.Mark).be16(24, t.Port)
		return "TPROXY", 1, b, nil
	case redirect.TargetSetMark:
		// struct xt_mark_tginfo2: mark, mask.
		b := newInfo(8)
		b.u32(0, t.Mark).u32(4, 0xffffffff)
		return "MARK", 2, b, nil
	case redirect.TargetSaveMark, redirect.TargetRestoreMark:
		// struct xt_connmark_tginfo2: ctmark, ctmask, nfmask, shift_dir, shift_bits, mode.
		b := newInfo(16)
		b.u32(4, 0xffffffff).u32(8, 0xffffffff)
		b[14] = 1 // XT_CONNMARK_SAVE
		if t.Kind == redirect.TargetRestoreMark {
			b[14] = 2 // XT_CONNMARK_RESTORE
		}
		return "CONNMARK", 2, b, nil
	case redirect.TargetCTZone:
		// struct xt_ct_target_info_v1: flags, zone, ct_events, exp_events, helper[16], timeout[32], ct.
		b := newInfo(72)
		binary.NativeEndian.PutUint16(b[2:], t.Zone)
		return "CT", 2, b, nil
	}
	return "", 0, nil, fmt.Errorf("target kind %d has no xtables form", t.Kind)
}

// xtInfo is an xtables extension payload: a C struct in host byte order, padded to 8 bytes.
type xtInfo []byte

// newInfo returns a zeroed payload for a C struct of size bytes.
func newInfo(size int) xtInfo { return make(xtInfo, (size+7)&^7) }

func (b xtInfo) u32(off int, v uint32) xtInfo { binary.NativeEndian.PutUint32(b[off:], v); return b }

func (b xtInfo) be16(off int, v uint16) xtInfo { binary.BigEndian.PutUint16(b[off:], v); return b }

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func xtMatch(name string, rev uint32, b xtInfo) *expr.Match {
	info := xt.Unknown(b)
	return &expr.Match{Name: name, Rev: rev, Info: &info}
}

func xtTarget(name string, rev uint32, b xtInfo) *expr.Target {
	info := xt.Unknown(b)
	return &expr.Target{Name: name, Rev: rev, Info: &info}
}

// xtMultiport is struct xt_multiport_v1: flags, count, ports[15] (host order), pflags[15], invert.
func xtMultiport(m redirect.PortMatch, flag byte) xtInfo {
	b := newInfo(48)
	b[0], b[1] = flag, byte(len(m.Ports))
	for i, p := range m.Ports {
		binary.NativeEndian.PutUint16(b[2+2*i:], p)
	}
	if m.Not {
		b[47] = 1
	}
	return b
}

// xtConntrackState is struct xt_conntrack_mtinfo3 matching --ctstate states.
func xtConntrackState(states []string) (xtInfo, error) {
	var mask uint16
	for _, s := range states {
		switch s {
		case "INVALID":
			mask |= 1 << 0
		case "ESTABLISHED":
			mask |= 1 << 1
		case "RELATED":
			mask |= 1 << 2
		case "NEW":
			mask |= 1 << 3
		default:
			return nil, errors.New("conntrack state " + s + " has no nftables form")
		}
	}
	// 8 addresses/masks (128 bytes), expires min/max, l4proto, 4 ports, then the flags and masks.
	b := newInfo(168)
	binary.NativeEndian.PutUint16(b[146:], 1) // match_flags: XT_CONNTRACK_STATE
	binary.NativeEndian.PutUint16(b[150:], mask)
	return b, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
