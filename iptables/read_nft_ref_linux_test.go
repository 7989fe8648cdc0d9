package iptables

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/redirect"
)

// decodeNFTExprRef is decodeNFTExpr as it was before it stopped allocating (mdlayher/netlink's
// decoder, the atom made with fmt): the reference FuzzDecodeNFTExprSame holds it to.
func decodeNFTExprRef(b []byte) (nftExpr, error) {
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

// FuzzDecodeNFTExprSame: decodeNFTExpr decodes any bytes as decodeNFTExprRef did — the same error or
// none, the same fields and atom — so that a rule reads back as the same spec.
func FuzzDecodeNFTExprSame(f *testing.F) {
	for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		for _, tb := range mustBuild(f, fullConfig()).Family(fam).Tables {
			for _, c := range tb.Chains {
				for _, r := range c.Rules {
					exprs, err := nftExprs(&r, fam)
					if err != nil {
						f.Fatal(err)
					}
					for _, e := range exprs {
						b, err := expr.Marshal(unix.NFPROTO_IPV4, e)
						if err != nil {
							f.Fatal(err)
						}
						f.Add(b)
					}
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gerr := decodeNFTExpr(b)
		want, werr := decodeNFTExprRef(b)
		if (gerr != nil) != (werr != nil) {
			t.Fatalf("error %v, want %v", gerr, werr)
		}
		if gerr != nil {
			return
		}
		if d := cmp.Diff(want, got, cmp.AllowUnexported(nftExpr{}), cmpopts.EquateEmpty()); d != "" {
			t.Errorf("(-ref +new):\n%s", d)
		}
	})
}
