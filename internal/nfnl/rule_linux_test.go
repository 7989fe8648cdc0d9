package nfnl

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func ruleBytes(t testing.TB) []byte {
	expr := netlink.NewAttributeEncoder()
	expr.String(unix.NFTA_EXPR_NAME, "counter")
	expr.Bytes(unix.NFTA_EXPR_DATA, []byte{1, 2, 3, 4})
	eb, err := expr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_RULE_TABLE, "nat")
	ae.String(unix.NFTA_RULE_CHAIN, "OUTPUT")
	ae.Uint64(unix.NFTA_RULE_HANDLE, 42)
	ae.Bytes(unix.NFTA_RULE_USERDATA, []byte{0, 2, 'x', 0})
	ae.Nested(unix.NFTA_RULE_EXPRESSIONS, func(n *netlink.AttributeEncoder) error {
		n.Bytes(unix.NFTA_LIST_ELEM, eb)
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRule(t *testing.T) {
	r, err := ParseRule(ruleBytes(t))
	if err != nil {
		t.Fatal(err)
	}
	if r.Table != "nat" || r.Chain != "OUTPUT" || r.Handle != 42 || !bytes.Equal(r.UserData, []byte{0, 2, 'x', 0}) || len(r.Exprs) != 1 {
		t.Fatalf("ParseRule = %+v", r)
	}
	name, data, err := ExprNameData(r.Exprs[0])
	if err != nil || name != "counter" || !bytes.Equal(data, []byte{1, 2, 3, 4}) {
		t.Errorf("ExprNameData = %q, %v, %v; want counter, [1 2 3 4]", name, data, err)
	}
}

func FuzzParseRule(f *testing.F) {
	f.Add(ruleBytes(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRule(b)
		if err != nil {
			return
		}
		for _, e := range r.Exprs {
			_, _, _ = ExprNameData(e)
		}
	})
}
