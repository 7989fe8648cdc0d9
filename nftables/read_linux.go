package nftables

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/nfnl"
)

// Rules are read with a dump of our own rather than google/nftables' GetRules, which drops the
// expressions it cannot decode (tproxy among them) and a ct statement's register: a comparison must
// see every expression the kernel holds.

// rawExpr is one expression of a rule as netlink carries it: its name and its attributes.
type rawExpr struct {
	name string
	data []byte
}

type rawRule []rawExpr

// dumpRules returns every rule of the inet family, keyed by "table chain", in chain order.
func dumpRules() (map[string][]rawRule, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer conn.Close()
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return nil, fmt.Errorf("list nftables rules: %w", err)
	}
	out := map[string][]rawRule{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		table, chain, rule, err := parseRule(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("parse nftables rule: %w", err)
		}
		out[table+" "+chain] = append(out[table+" "+chain], rule)
	}
	return out, nil
}

// parseRule decodes the attributes of a NEWRULE message.
func parseRule(b []byte) (table, chain string, rule rawRule, err error) {
	r, err := nfnl.ParseRule(b)
	if err != nil {
		return "", "", nil, err
	}
	for _, eb := range r.Exprs {
		var e rawExpr
		if e.name, e.data, err = nfnl.ExprNameData(eb); err != nil {
			return "", "", nil, err
		}
		rule = append(rule, e)
	}
	return r.Table, r.Chain, rule, nil
}

// rawExprs marshals built expressions the way they travel, so that both sides of a comparison are
// decoded by the same code.
func rawExprs(exprs []expr.Any) (rawRule, error) {
	var rule rawRule
	for _, e := range exprs {
		b, err := expr.Marshal(unix.NFPROTO_INET, e)
		if err != nil {
			return nil, err
		}
		_, _, r, err := parseRule(mustAttr(unix.NFTA_RULE_EXPRESSIONS, mustAttr(unix.NFTA_LIST_ELEM, b)))
		if err != nil {
			return nil, err
		}
		rule = append(rule, r...)
	}
	return rule, nil
}

func mustAttr(typ uint16, data []byte) []byte {
	b, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | typ, Data: data}})
	if err != nil {
		panic(err)
	}
	return b
}

// counts returns the packets and bytes r's counter expressions (NFTA_COUNTER_PACKETS and
// NFTA_COUNTER_BYTES) hold, summed: zero for a rule without one. shunt's rules have one each.
func (r rawRule) counts() (packets, bytes uint64, err error) {
	for _, re := range r {
		if re.name != "counter" {
			continue
		}
		var c expr.Counter
		if err := expr.Unmarshal(unix.NFPROTO_INET, re.data, &c); err != nil {
			return 0, 0, fmt.Errorf("decode counter: %w", err)
		}
		packets += c.Packets
		bytes += c.Bytes
	}
	return packets, bytes, nil
}

// describe returns the canonical form of a rule's expressions: what the kernel evaluates, without
// counter values, set names or ids. An expression shunt never writes is described whole, so that
// any foreign change shows as a difference.
func (r rawRule) describe(set func(*expr.Lookup) string) string {
	words := make([]string, 0, len(r))
	for _, re := range r {
		words = append(words, re.describe(set))
	}
	return strings.Join(words, "; ")
}

func (re rawExpr) describe(set func(*expr.Lookup) string) string {
	opaque := fmt.Sprintf("%s:%x", re.name, re.data)
	decode := func(e expr.Any) bool { return expr.Unmarshal(unix.NFPROTO_INET, re.data, e) == nil }
	switch re.name {
	case "counter":
		return "counter"
	case "meta":
		if e := (&expr.Meta{}); decode(e) {
			if e.SourceRegister {
				return fmt.Sprintf("meta %s set r%d", name(metaKeys, uint32(e.Key)), e.Register)
			}
			return fmt.Sprintf("meta %s r%d", name(metaKeys, uint32(e.Key)), e.Register)
		}
	case "cmp":
		if e := (&expr.Cmp{}); decode(e) {
			return fmt.Sprintf("r%d %s %x", e.Register, name(cmpOps, uint32(e.Op)), e.Data)
		}
	case "payload":
		if e := (&expr.Payload{}); decode(e) {
			return fmt.Sprintf("payload %s+%d/%d r%d", name(payloadBases, uint32(e.Base)), e.Offset, e.Len, e.DestRegister)
		}
	case "bitwise":
		if e := (&expr.Bitwise{}); decode(e) {
			return fmt.Sprintf("bitwise r%d r%d %d &%x ^%x", e.SourceRegister, e.DestRegister, e.Len, e.Mask, e.Xor)
		}
	case "lookup":
		if e := (&expr.Lookup{}); decode(e) {
			return fmt.Sprintf("lookup r%d %s invert=%t", e.SourceRegister, set(e), e.Invert)
		}
	case "immediate":
		if e := (&expr.Immediate{}); decode(e) && (e.Register != unix.NFT_REG_VERDICT || len(e.Data) > 0) {
			return fmt.Sprintf("immediate r%d %x", e.Register, e.Data)
		}
		if e := (&expr.Verdict{}); decode(e) {
			v, ok := verdictNames[e.Kind]
			if !ok {
				v = fmt.Sprint("verdict ", e.Kind)
			}
			return strings.TrimSpace(v + " " + e.Chain)
		}
	case "redir":
		if e := (&expr.Redir{}); decode(e) {
			max := e.RegisterProtoMax
			if max == 0 {
				max = e.RegisterProtoMin // the kernel reports an unset maximum as the minimum
			}
			return fmt.Sprintf("redir r%d r%d %#x", e.RegisterProtoMin, max, e.Flags)
		}
	case "tproxy":
		if e := (&expr.TProxy{}); decode(e) {
			return fmt.Sprintf("tproxy %d addr=r%d port=r%d", e.Family, e.RegAddr, e.RegPort)
		}
	case "ct":
		// Decoded here: google/nftables drops a ct statement's source register.
		ad, err := netlink.NewAttributeDecoder(re.data)
		if err != nil {
			return opaque
		}
		ad.ByteOrder = binary.BigEndian
		var key, dreg, sreg, dir uint32
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CT_KEY:
				key = ad.Uint32()
			case unix.NFTA_CT_DREG:
				dreg = ad.Uint32()
			case unix.NFTA_CT_SREG:
				sreg = ad.Uint32()
			case unix.NFTA_CT_DIRECTION:
				dir = uint32(ad.Uint8())
			}
		}
		if ad.Err() == nil {
			if sreg != 0 {
				return fmt.Sprintf("ct %s set r%d dir=%d", name(ctKeys, key), sreg, dir)
			}
			return fmt.Sprintf("ct %s r%d dir=%d", name(ctKeys, key), dreg, dir)
		}
	}
	return opaque
}

// Names of the numbers describe prints.
var (
	metaKeys = map[uint32]string{
		uint32(expr.MetaKeyMARK): "mark", uint32(expr.MetaKeyIIFNAME): "iifname", uint32(expr.MetaKeyOIFNAME): "oifname",
		uint32(expr.MetaKeySKUID): "skuid", uint32(expr.MetaKeySKGID): "skgid", uint32(expr.MetaKeyNFPROTO): "nfproto",
		uint32(expr.MetaKeyL4PROTO): "l4proto",
	}
	ctKeys       = map[uint32]string{uint32(expr.CtKeySTATE): "state", uint32(expr.CtKeyMARK): "mark", uint32(expr.CtKeyZONE): "zone"}
	cmpOps       = map[uint32]string{uint32(expr.CmpOpEq): "==", uint32(expr.CmpOpNeq): "!="}
	payloadBases = map[uint32]string{uint32(expr.PayloadBaseNetworkHeader): "network", uint32(expr.PayloadBaseTransportHeader): "transport"}
	verdictNames = map[expr.VerdictKind]string{
		expr.VerdictReturn: "return", expr.VerdictAccept: "accept", expr.VerdictDrop: "drop",
		expr.VerdictJump: "jump", expr.VerdictGoto: "goto",
	}
)

// name returns the name of n in names, or n itself.
func name(names map[uint32]string, n uint32) string {
	if s, ok := names[n]; ok {
		return s
	}
	return fmt.Sprint(int32(n))
}
