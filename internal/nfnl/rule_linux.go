package nfnl

import (
	"bytes"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Rule is a NEWRULE message's attributes, as a rule dump carries them. Its byte slices alias the
// message.
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
	ad, err := NewAttrs(b)
	if err != nil {
		return r, fmt.Errorf("decode nftables rule: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			r.Table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			r.Chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.Handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			r.UserData = ad.Data()
		case unix.NFTA_RULE_EXPRESSIONS:
			list := ad.Nested()
			n := 0
			for c := list; c.Next(); {
				n++
			}
			r.Exprs = slices.Grow(r.Exprs, n)
			for list.Next() {
				r.Exprs = append(r.Exprs, list.Data())
			}
			ad.Fail(list.Err())
		}
	}
	if err := ad.Err(); err != nil {
		return Rule{}, fmt.Errorf("decode nftables rule: %w", err)
	}
	return r, nil
}

// ExprNameData splits an expression's encoding into its name and its data attributes (aliasing b).
func ExprNameData(b []byte) (name string, data []byte, err error) {
	ad, err := NewAttrs(b)
	if err != nil {
		return "", nil, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = exprName(ad.Data())
		case unix.NFTA_EXPR_DATA:
			data = ad.Data()
		}
	}
	return name, data, ad.Err()
}

// exprName is an expression's name attribute as a string: without allocating for the expressions
// xtables rules are made of.
func exprName(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	switch string(b) {
	case "bitwise":
		return "bitwise"
	case "cmp":
		return "cmp"
	case "counter":
		return "counter"
	case "immediate":
		return "immediate"
	case "match":
		return "match"
	case "meta":
		return "meta"
	case "payload":
		return "payload"
	case "target":
		return "target"
	}
	return string(b)
}
