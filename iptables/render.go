// Package iptables programs a redirect.Plan from this process — tables holding only ours rebuilt whole,
// tables shared with other programs' rules spliced (our rules taken out and put in, the foreign ones
// kept in place), atomically as iptables-restore --noflush would —, reads the rules back from the
// kernel in the text iptables-save prints, reconciles drift and cleans up what the engine installed. It
// runs no iptables binary unless Options.UseTools asks for the restore and save tools.
package iptables

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// savedPrefix prints p as iptables-save does: an IPv6 address whose first 96 bits are zero and whose
// last 32 are an IPv4 address (an IPv4-compatible address, ::127.0.0.53) in inet_ntop's dotted form,
// where Go would print ::7f00:35.
func savedPrefix(p netip.Prefix) string {
	a := p.Addr()
	b := a.As16()
	if !a.Is6() || a.Is4In6() || [12]byte(b[:12]) != [12]byte{} || b[12] == 0 && b[13] == 0 {
		return p.String()
	}
	return "::" + netip.AddrFrom4([4]byte(b[12:])).String() + "/" + strconv.Itoa(p.Bits())
}

// RuleSpec renders r in the canonical form iptables-save prints (without the leading "-A CHAIN"), so
// that the rules read back from the kernel compare equal, as text, to the plan. Both the nft and the
// legacy variant print this form.
func RuleSpec(r *redirect.Rule, fam redirect.Family) string {
	var w []string
	addr := func(flag string, m redirect.AddrMatch) {
		// A /0 matches everything: iptables drops it from the rule.
		if m.Prefix.IsValid() && (m.Prefix.Bits() > 0 || m.Not) {
			if m.Not {
				w = append(w, "!")
			}
			w = append(w, flag, savedPrefix(m.Prefix.Masked()))
		}
	}
	iface := func(flag string, m redirect.IfaceMatch) {
		if m.Name != "" {
			if m.Not {
				w = append(w, "!")
			}
			w = append(w, flag, m.Name)
		}
	}
	addr("-s", r.Src)
	addr("-d", r.Dst)
	iface("-i", r.In)
	iface("-o", r.Out)
	if r.Proto != "" {
		w = append(w, "-p", r.Proto)
	}
	ports := func(flag string, m redirect.PortMatch) {
		switch len(m.Ports) {
		case 0:
			return
		case 1:
			w = append(w, "-m", r.Proto)
		default:
			w = append(w, "-m", "multiport")
			flag += "s"
		}
		if m.Not {
			w = append(w, "!")
		}
		list := make([]string, len(m.Ports))
		for i, p := range m.Ports {
			list[i] = strconv.Itoa(int(p))
		}
		w = append(w, flag, strings.Join(list, ","))
	}
	ports("--sport", r.SPort)
	ports("--dport", r.DPort)
	if len(r.CTState) > 0 {
		w = append(w, "-m", "conntrack", "--ctstate", strings.Join(r.CTState, ","))
	}
	mark := func(module string, m redirect.MarkMatch) {
		if m.Set {
			w = append(w, "-m", module)
			if m.Not {
				w = append(w, "!")
			}
			w = append(w, "--mark", hex(m.Value))
		}
	}
	mark("mark", r.Mark)
	mark("connmark", r.ConnMark)
	for _, o := range r.Owners {
		w = append(w, "-m", "owner")
		if o.Not {
			w = append(w, "!")
		}
		flag := "--uid-owner"
		if o.GID {
			flag = "--gid-owner"
		}
		w = append(w, flag, strconv.FormatUint(uint64(o.ID), 10))
	}
	w = append(w, "-j")
	t := r.Target
	switch t.Kind {
	case redirect.TargetJump:
		w = append(w, t.Chain)
	case redirect.TargetReturn:
		w = append(w, "RETURN")
	case redirect.TargetAccept:
		w = append(w, "ACCEPT")
	case redirect.TargetDrop:
		w = append(w, "DROP")
	case redirect.TargetRedirect:
		w = append(w, "REDIRECT", "--to-ports", strconv.Itoa(int(t.Port)))
	case redirect.TargetTProxy:
		onIP := "0.0.0.0"
		if fam == redirect.IPv6 {
			onIP = "::"
		}
		w = append(w, "TPROXY", "--on-port", strconv.Itoa(int(t.Port)), "--on-ip", onIP, "--tproxy-mark", hex(t.Mark)+"/0xffffffff")
	case redirect.TargetSetMark:
		w = append(w, "MARK", "--set-xmark", hex(t.Mark)+"/0xffffffff")
	case redirect.TargetSaveMark:
		w = append(w, "CONNMARK", "--save-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")
	case redirect.TargetRestoreMark:
		w = append(w, "CONNMARK", "--restore-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")
	case redirect.TargetCTZone:
		w = append(w, "CT", "--zone", strconv.Itoa(int(t.Zone)))
	default:
		panic(fmt.Sprintf("iptables: unknown target kind %d", t.Kind))
	}
	return strings.Join(w, " ")
}

func hex(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// RenderOptions tunes Render.
type RenderOptions struct {
	// Explain precedes every rule with a comment naming the flow it serves and why it is there.
	Explain bool
}

// Render returns the iptables-restore input (for use with --noflush) that installs fp on a namespace
// holding none of our chains: every owned chain is declared (created, or flushed if it exists), rules
// of built-in chains are inserted at the head or appended after foreign rules.
func Render(fp *redirect.FamilyPlan, opts RenderOptions) []byte {
	var b bytes.Buffer
	for i := range fp.Tables {
		t := &fp.Tables[i]
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			if !c.Builtin {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
			}
		}
		writeRules(&b, fp.Family, t, opts)
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// writeRules writes the rules of t: -I for the head rules of built-in chains, -A for all others.
func writeRules(b *bytes.Buffer, fam redirect.Family, t *redirect.Table, opts RenderOptions) {
	for _, c := range t.Chains {
		head := 0
		for i := range c.Rules {
			r := &c.Rules[i]
			if opts.Explain {
				flow := string(r.Flow)
				if fam == redirect.IPv6 {
					flow += "/" + string(redirect.FlowIPv6)
				}
				fmt.Fprintf(b, "# %s %s: %s\n", flow, redirect.FlowTitle[r.Flow], r.Why)
			}
			if c.Builtin && r.Head {
				head++
				fmt.Fprintf(b, "-I %s %d %s\n", c.Name, head, RuleSpec(r, fam))
				continue
			}
			fmt.Fprintf(b, "-A %s %s\n", c.Name, RuleSpec(r, fam))
		}
	}
}
