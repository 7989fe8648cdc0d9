package nfnl

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rule is a NEWRULE message's attributes, as a rule dump carries them.
type Rule struct {
	Table, Chain string
	Handle       uint64
	UserData     []byte
	// Exprs are the rule's expressions, each still in its netlink encoding (see ExprNameData).
	Exprs [][]byte
}

// ParseRule decodes the attributes of a NEWRULE message (after its nfgenmsg header).
func ParseRule(b []byte) (Rule, error) {
	var r Rule
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return r, fmt.Errorf("decode nftables rule: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			r.Table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			r.Chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.Handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			r.UserData = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					r.Exprs = append(r.Exprs, list.Bytes())
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return Rule{}, fmt.Errorf("decode nftables rule: %w", err)
	}
	return r, nil
}

// ExprNameData splits an expression's encoding into its name and its data attributes.
func ExprNameData(b []byte) (name string, data []byte, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", nil, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	return name, data, ad.Err()
}
