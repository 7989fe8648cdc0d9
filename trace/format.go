package trace

import (
	"fmt"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Format returns res as text, one line per step, matched rules marked with "*", then the verdict.
func Format(plan *redirect.Plan, res Result) string {
	var b strings.Builder
	for _, s := range res.Steps {
		if s.Rule == nil {
			fmt.Fprintf(&b, "  %-20s %s\n", s.Hook, s.Note)
			continue
		}
		mark := " "
		if s.Matched {
			mark = "*"
		}
		fmt.Fprintf(&b, "%s %-20s %-36s %s", mark, s.Hook, s.Ref, describe(s.Rule))
		if s.Note != "" {
			if s.Matched {
				fmt.Fprintf(&b, "  => %s", s.Note)
			} else {
				fmt.Fprintf(&b, "  (no: %s)", s.Note)
			}
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "verdict: %s: %s\n", res.Verdict, res.Verdict.Reason)
	return b.String()
}

// describe returns r's matches and target in iptables' words.
func describe(r *redirect.Rule) string {
	var w []string
	not := func(n bool) string {
		if n {
			return "! "
		}
		return ""
	}
	if r.Src.Prefix.IsValid() {
		w = append(w, not(r.Src.Not)+"-s "+r.Src.Prefix.String())
	}
	if r.Dst.Prefix.IsValid() {
		w = append(w, not(r.Dst.Not)+"-d "+r.Dst.Prefix.String())
	}
	if r.In.Name != "" {
		w = append(w, not(r.In.Not)+"-i "+r.In.Name)
	}
	if r.Out.Name != "" {
		w = append(w, not(r.Out.Not)+"-o "+r.Out.Name)
	}
	if r.Proto != "" {
		w = append(w, "-p "+r.Proto)
	}
	for _, p := range []struct {
		flag string
		m    redirect.PortMatch
	}{{"--sport", r.SPort}, {"--dport", r.DPort}} {
		if len(p.m.Ports) > 0 {
			w = append(w, fmt.Sprintf("%s%s %v", not(p.m.Not), p.flag, p.m.Ports))
		}
	}
	if len(r.CTState) > 0 {
		w = append(w, "--ctstate "+strings.Join(r.CTState, ","))
	}
	if r.Mark.Set {
		w = append(w, fmt.Sprintf("%s--mark %d", not(r.Mark.Not), r.Mark.Value))
	}
	if r.ConnMark.Set {
		w = append(w, fmt.Sprintf("%s--connmark %d", not(r.ConnMark.Not), r.ConnMark.Value))
	}
	for _, o := range r.Owners {
		kind := "--uid-owner"
		if o.GID {
			kind = "--gid-owner"
		}
		w = append(w, fmt.Sprintf("%s%s %d", not(o.Not), kind, o.ID))
	}
	t := r.Target
	switch t.Kind {
	case redirect.TargetJump:
		w = append(w, "-j "+t.Chain)
	case redirect.TargetReturn:
		w = append(w, "-j RETURN")
	case redirect.TargetAccept:
		w = append(w, "-j ACCEPT")
	case redirect.TargetDrop:
		w = append(w, "-j DROP")
	case redirect.TargetRedirect:
		w = append(w, fmt.Sprintf("-j REDIRECT :%d", t.Port))
	case redirect.TargetTProxy:
		w = append(w, fmt.Sprintf("-j TPROXY :%d mark %d", t.Port, t.Mark))
	case redirect.TargetSetMark:
		w = append(w, fmt.Sprintf("-j MARK %d", t.Mark))
	case redirect.TargetSaveMark:
		w = append(w, "-j CONNMARK --save-mark")
	case redirect.TargetRestoreMark:
		w = append(w, "-j CONNMARK --restore-mark")
	case redirect.TargetCTZone:
		w = append(w, fmt.Sprintf("-j CT --zone %d", t.Zone))
	}
	return strings.Join(w, " ")
}
