package graph

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// RuleText returns r in a compact form, its matches then its target: "tcp dport 15008 → RETURN",
// "out lo src 127.0.0.6 → RETURN", "tcp → REDIRECT :15001". A rule that matches everything reads
// "all → ISTIO_OUTPUT".
func RuleText(r *redirect.Rule) string {
	var w []string
	not := func(n bool) string {
		if n {
			return "!= "
		}
		return ""
	}
	if r.In.Name != "" {
		w = append(w, "in "+not(r.In.Not)+r.In.Name)
	}
	if r.Out.Name != "" {
		w = append(w, "out "+not(r.Out.Not)+r.Out.Name)
	}
	if r.Src.Prefix.IsValid() {
		w = append(w, "src "+not(r.Src.Not)+prefixText(r.Src.Prefix))
	}
	if r.Dst.Prefix.IsValid() {
		w = append(w, "dst "+not(r.Dst.Not)+prefixText(r.Dst.Prefix))
	}
	if r.Proto != "" {
		w = append(w, r.Proto)
	}
	if len(r.SPort.Ports) > 0 {
		w = append(w, "sport "+not(r.SPort.Not)+portsText(r.SPort.Ports))
	}
	if len(r.DPort.Ports) > 0 {
		w = append(w, "dport "+not(r.DPort.Not)+portsText(r.DPort.Ports))
	}
	if len(r.CTState) > 0 {
		w = append(w, "ct "+strings.Join(r.CTState, ","))
	}
	if r.Mark.Set {
		w = append(w, "mark "+not(r.Mark.Not)+strconv.FormatUint(uint64(r.Mark.Value), 10))
	}
	if r.ConnMark.Set {
		w = append(w, "connmark "+not(r.ConnMark.Not)+strconv.FormatUint(uint64(r.ConnMark.Value), 10))
	}
	for _, o := range r.Owners {
		id := "uid "
		if o.GID {
			id = "gid "
		}
		w = append(w, id+not(o.Not)+strconv.FormatUint(uint64(o.ID), 10))
	}
	if len(w) == 0 {
		w = append(w, "all")
	}
	return strings.Join(w, " ") + " → " + TargetText(&r.Target)
}

// TargetText returns what a rule with target t does: a chain's name for a jump, else the verdict or
// action in upper case with its argument ("REDIRECT :15001", "MARK 1337", "CT zone 2").
func TargetText(t *redirect.Target) string {
	port := ":" + strconv.Itoa(int(t.Port))
	mark := strconv.FormatUint(uint64(t.Mark), 10)
	switch t.Kind {
	case redirect.TargetJump:
		return t.Chain
	case redirect.TargetReturn:
		return "RETURN"
	case redirect.TargetAccept:
		return "ACCEPT"
	case redirect.TargetDrop:
		return "DROP"
	case redirect.TargetRedirect:
		return "REDIRECT " + port
	case redirect.TargetTProxy:
		return "TPROXY " + port + " mark " + mark
	case redirect.TargetSetMark:
		return "MARK " + mark
	case redirect.TargetSaveMark:
		return "CONNMARK save"
	case redirect.TargetRestoreMark:
		return "CONNMARK restore"
	case redirect.TargetCTZone:
		return "CT zone " + strconv.Itoa(int(t.Zone))
	}
	return "target " + strconv.Itoa(int(t.Kind))
}

// prefixText is a prefix, a host without its length.
func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func portsText(ps []uint16) string {
	if len(ps) == 1 {
		return strconv.Itoa(int(ps[0]))
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return "{" + strings.Join(s, ",") + "}"
}

// countersText is "3 pkt, 180 B", with k, M, G and KiB, MiB, GiB above a thousand.
func countersText(c redirect.Counters) string {
	return si(c.Packets, 1000, []string{"", "k", "M", "G", "T"}) + " pkt, " + si(c.Bytes, 1024, []string{" B", " KiB", " MiB", " GiB", " TiB"})
}

func si(n uint64, base uint64, units []string) string {
	if n < base {
		return strconv.FormatUint(n, 10) + units[0]
	}
	v, i := float64(n), 0
	for v >= float64(base) && i < len(units)-1 {
		v /= float64(base)
		i++
	}
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64) + units[i]
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + units[i]
}

// ErrRef is wrapped by ParseRef's errors.
var ErrRef = errors.New("invalid rule reference")

// ParseRef parses a rule reference in the form RuleRef.String writes, FAMILY/TABLE/CHAIN#INDEX:
// "IPv4/nat/ISTIO_OUTPUT#3" (families IPv4, IPv6, inet, in any case; INDEX from 0).
func ParseRef(s string) (redirect.RuleRef, error) {
	bad := func(why string) (redirect.RuleRef, error) {
		return redirect.RuleRef{}, fmt.Errorf("%w %q: %s", ErrRef, s, why)
	}
	parts := strings.Split(strings.TrimSpace(s), "/")
	if len(parts) != 3 {
		return bad("want FAMILY/TABLE/CHAIN#INDEX, such as IPv4/nat/ISTIO_OUTPUT#3")
	}
	var ref redirect.RuleRef
	switch strings.ToLower(parts[0]) {
	case "ipv4":
		ref.Family = redirect.IPv4
	case "ipv6":
		ref.Family = redirect.IPv6
	case "inet":
		ref.Family = redirect.Inet
	default:
		return bad("family " + strconv.Quote(parts[0]) + ": want IPv4, IPv6 or inet")
	}
	ref.Table = parts[1]
	if !validName(ref.Table) {
		return bad("table " + strconv.Quote(ref.Table) + ": want a name such as nat, mangle or raw")
	}
	chain, index, ok := strings.Cut(parts[2], "#")
	if !ok {
		return bad("no #INDEX after the chain")
	}
	ref.Chain = chain
	if !validName(chain) {
		return bad("chain " + strconv.Quote(chain) + ": want a name such as ISTIO_OUTPUT or OUTPUT")
	}
	n, err := strconv.ParseUint(index, 10, 31)
	if err != nil || index == "" || index[0] == '+' {
		return bad("index " + strconv.Quote(index) + ": want a rule number from 0")
	}
	ref.Index = int(n)
	return ref, nil
}

// ParseRefs parses a comma-separated list of rule references (ParseRef); empty items are skipped.
// It reports every bad item.
func ParseRefs(s string) ([]redirect.RuleRef, error) {
	var refs []redirect.RuleRef
	var errs []error
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		ref, err := ParseRef(item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		refs = append(refs, ref)
	}
	return refs, errors.Join(errs...)
}

// validName reports whether s is a table or chain name: letters, digits, '_' and '-', at most 64.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
