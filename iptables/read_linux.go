package iptables

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// This file reads a family's iptables rules back from the kernel, without iptables-save: the nft
// variant over netlink (read_nft_linux.go), the legacy one with IPT_SO_GET_ENTRIES
// (read_legacy_linux.go). Each rule is decoded into the redirect.Rule that shunt would have written
// the same way — proven by encoding that Rule again and comparing it with what the kernel holds — and
// printed with RuleSpec, which is how iptables-save prints it. A rule that does not encode back
// exactly (another program's rule with a match or target shunt never writes) becomes a placeholder
// (unknownSpec) that equals no rule of a plan and that isOurs never claims.

// readKernel reads the rules of family fam in variant v from the current namespace. It creates no
// table: legacy tables are read only when /proc lists them. names, when given, are the family's tables
// as a look just found them (lookTables), which the read then does not ask for again.
func readKernel(v Variant, fam redirect.Family, names ...string) (*kernelTables, error) {
	if v == VariantLegacy {
		return readLegacy(fam, names)
	}
	return readNFT(fam, names)
}

// unknownSpec is the placeholder of a rule the decoder cannot express as a redirect.Rule: "-m" of a
// module no iptables has, with what the kernel holds (expression or extension names) as its
// argument, and no "-j", so that no plan holds it and isOurs never claims it.
func unknownSpec(parts []string) string {
	desc := strings.Join(parts, ",")
	if desc == "" {
		desc = "none"
	}
	return "-m unknown-to-shunt --kernel-expr " + strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return '_'
		}
		return r
	}, desc)
}

// verdictName is the text of a policy verdict: NF_DROP 0, NF_ACCEPT 1.
func verdictName(v int32) string {
	switch v {
	case 0:
		return "DROP"
	case 1:
		return "ACCEPT"
	}
	return fmt.Sprintf("verdict%d", v)
}

// ctStateOrder is the order in which iptables prints conntrack states, with their bits.
var ctStateOrder = []struct {
	name string
	bit  uint16
}{{"INVALID", 1 << 0}, {"NEW", 1 << 3}, {"RELATED", 1 << 2}, {"ESTABLISHED", 1 << 1}}

// xtBuiltinChains lists the built-in chains of each table iptables knows, in the order iptables-save
// prints them (hook order).
var xtBuiltinChains = map[string][]string{
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":      {"PREROUTING", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
}

// maskBits counts the bits set in a network mask.
func maskBits(mask []byte) int {
	n := 0
	for _, b := range mask {
		n += bits.OnesCount8(b)
	}
	return n
}

// addrPrefix is the prefix of addr (4 or 16 bytes) with bits bits; invalid when addr is neither.
func addrPrefix(addr []byte, bits int) netip.Prefix {
	a, ok := netip.AddrFromSlice(addr)
	if !ok {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, bits)
}

// withComment returns spec, a rendering of RuleSpec, with the comment match "-m comment --comment c"
// after its other matches, quoted as iptables-save quotes it (xtables_save_string).
func withComment(spec, c string) string {
	i := strings.Index(" "+spec, " -j ")
	if i < 0 {
		return spec
	}
	text := c
	if strings.Trim(c, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" || c == "" {
		var b strings.Builder
		b.WriteByte('"')
		for _, r := range []byte(c) {
			if r == '"' || r == '\\' || r == '\'' {
				b.WriteByte('\\')
			}
			b.WriteByte(r)
		}
		b.WriteByte('"')
		text = b.String()
	}
	return spec[:i] + "-m comment --comment " + text + " " + spec[i:]
}

// commentMatch reports whether name/rev is the comment match (struct xt_comment_info: comment[256])
// and returns its text.
func commentMatch(name string, rev uint32, info []byte) (string, bool) {
	if name != "comment" || rev != 0 || len(info) < 256 {
		return "", false
	}
	return cString(info[:256]), true
}
