package nftables

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Pretty turns a rule's canonical expressions (RuleState.Exprs: registers loaded, compared, stored)
// into nft's own syntax, as `nft list ruleset` prints it, for messages: a rule of ours that drifted,
// or another program's rule in our tables, is named in words an operator reads. Expressions it does
// not know stay as they are; it never fails. The canonical form, not this text, is what is compared.
func Pretty(exprs string) string {
	p := prettyState{regs: map[string]loaded{}}
	var out []string
	for _, w := range strings.Split(exprs, "; ") {
		if s := p.word(w); s != "" {
			out = append(out, s)
		}
	}
	return strings.Join(out, " ")
}

// loaded is what a register holds: a key loaded by meta, payload or ct, or an immediate value.
type loaded struct {
	kind string // "meta", "ct", "network", "transport", "imm"
	key  string // meta or ct key
	off  int    // payload offset and length
	len  int
	mask []byte // a bitwise mask applied to it
	data []byte // an immediate's value
}

type prettyState struct {
	regs   map[string]loaded
	family string // "ip" or "ip6", from the last nfproto match
}

func (p *prettyState) word(w string) string {
	f := strings.Fields(w)
	switch {
	case len(f) == 0:
		return ""
	case w == "counter" || w == "accept" || w == "drop" || w == "return" || f[0] == "jump" || f[0] == "goto":
		return w
	case f[0] == "meta" && len(f) == 3:
		p.regs[f[2]] = loaded{kind: "meta", key: f[1]}
		return ""
	case f[0] == "meta" && len(f) == 4 && f[2] == "set":
		return "meta " + f[1] + " set " + p.value(f[3], f[1])
	case f[0] == "ct" && len(f) == 4:
		p.regs[f[2]] = loaded{kind: "ct", key: f[1]}
		return ""
	case f[0] == "ct" && len(f) == 5 && f[2] == "set":
		return "ct " + f[1] + " set " + p.value(f[3], f[1])
	case f[0] == "payload" && len(f) == 3:
		base, rest, ok := strings.Cut(f[1], "+")
		o, l, ok2 := strings.Cut(rest, "/")
		off, err1 := strconv.Atoi(o)
		n, err2 := strconv.Atoi(l)
		if !ok || !ok2 || err1 != nil || err2 != nil {
			return w
		}
		p.regs[f[2]] = loaded{kind: base, off: off, len: n}
		return ""
	case f[0] == "immediate" && len(f) == 3:
		data, err := hex.DecodeString(f[2])
		if err != nil {
			return w
		}
		p.regs[f[1]] = loaded{kind: "imm", data: data}
		return ""
	case f[0] == "bitwise" && len(f) == 6 && strings.HasPrefix(f[4], "&"):
		mask, err := hex.DecodeString(f[4][1:])
		l, ok := p.regs[f[1]]
		if err != nil || !ok {
			return w
		}
		l.mask = mask
		p.regs[f[2]] = l
		return ""
	case strings.HasPrefix(f[0], "r") && len(f) == 3 && (f[1] == "==" || f[1] == "!="):
		data, err := hex.DecodeString(f[2])
		l, ok := p.regs[f[0]]
		if err != nil || !ok {
			return w
		}
		return p.match(l, f[1], data)
	case f[0] == "lookup" && len(f) == 4:
		l, ok := p.regs[f[1]]
		if !ok {
			return w
		}
		var elems []string
		for _, e := range strings.Split(strings.Trim(f[2], "{}"), ",") {
			data, err := hex.DecodeString(e)
			if err != nil {
				return w
			}
			elems = append(elems, p.scalar(l, data))
		}
		neg := ""
		if f[3] == "invert=true" {
			neg = "!= "
		}
		return p.subject(l) + " " + neg + "{ " + strings.Join(elems, ", ") + " }"
	case f[0] == "redir" && len(f) == 4:
		return "redirect to :" + p.port(f[1])
	case strings.HasPrefix(w, "tproxy"):
		// The port is the immediate loaded last; the address, when there is none, the packet's.
		for _, r := range []string{"r1", "r2", "r3"} {
			if l, ok := p.regs[r]; ok && l.kind == "imm" && len(l.data) == 2 {
				return "tproxy " + p.family + " to :" + strconv.Itoa(int(binary.BigEndian.Uint16(l.data)))
			}
		}
	}
	return w
}

// value is what a register stored by a set statement holds, in words.
func (p *prettyState) value(reg, key string) string {
	l, ok := p.regs[reg]
	switch {
	case !ok:
		return reg
	case l.kind == "imm":
		return p.scalar(loaded{kind: "meta", key: key}, l.data)
	default:
		return p.subject(l)
	}
}

func (p *prettyState) port(reg string) string {
	if l, ok := p.regs[reg]; ok && l.kind == "imm" && len(l.data) == 2 {
		return strconv.Itoa(int(binary.BigEndian.Uint16(l.data)))
	}
	return reg
}

// subject is how nft names what l loaded.
func (p *prettyState) subject(l loaded) string {
	switch l.kind {
	case "meta":
		if l.key == "iifname" || l.key == "oifname" {
			return l.key
		}
		return "meta " + l.key
	case "ct":
		return "ct " + l.key
	case "transport":
		switch l.off {
		case 0:
			return "th sport"
		case 2:
			return "th dport"
		}
	case "network":
		fam := p.family
		switch {
		case fam == "ip" && l.off == 12, fam == "ip6" && l.off == 8:
			return fam + " saddr"
		case fam == "ip" && l.off == 16, fam == "ip6" && l.off == 24:
			return fam + " daddr"
		}
	}
	return fmt.Sprintf("%s@%d,%d", l.kind, l.off*8, l.len*8)
}

// match is the words of a comparison of what l loaded with data.
func (p *prettyState) match(l loaded, op string, data []byte) string {
	if l.kind == "meta" && l.key == "nfproto" && len(data) == 1 && op == "==" {
		switch data[0] {
		case 2:
			p.family = "ip"
		case 10:
			p.family = "ip6"
		}
	}
	if l.kind == "ct" && l.key == "state" && l.mask != nil && op == "!=" && isZero(data) {
		return "ct state " + ctStateNames(l.mask)
	}
	neg := ""
	if op == "!=" {
		neg = "!= "
	}
	return p.subject(l) + " " + neg + p.scalar(l, data)
}

// scalar is data as nft prints a value of what l loaded.
func (p *prettyState) scalar(l loaded, data []byte) string {
	le32 := func() string { return strconv.FormatUint(uint64(binary.LittleEndian.Uint32(data)), 10) }
	switch {
	case l.kind == "meta" && (l.key == "iifname" || l.key == "oifname"):
		return strconv.Quote(strings.TrimRight(string(data), "\x00"))
	case l.kind == "meta" && l.key == "l4proto" && len(data) == 1:
		switch data[0] {
		case 6:
			return "tcp"
		case 17:
			return "udp"
		}
		return strconv.Itoa(int(data[0]))
	case l.kind == "meta" && l.key == "nfproto" && len(data) == 1:
		switch data[0] {
		case 2:
			return "ipv4"
		case 10:
			return "ipv6"
		}
	case (l.kind == "meta" || l.kind == "ct") && len(data) == 4:
		return le32()
	case l.kind == "ct" && l.key == "zone" && len(data) == 2:
		return strconv.Itoa(int(binary.LittleEndian.Uint16(data)))
	case l.kind == "meta" && l.key == "zone" && len(data) == 2:
		return strconv.Itoa(int(binary.LittleEndian.Uint16(data)))
	case l.kind == "transport" && len(data) == 2:
		return strconv.Itoa(int(binary.BigEndian.Uint16(data)))
	case l.kind == "network" && (p.family == "ip" && len(data) <= 4 || p.family == "ip6" && len(data) <= 16):
		full := 4
		if p.family == "ip6" {
			full = 16
		}
		b := make([]byte, full)
		copy(b, data)
		a, _ := netip.AddrFromSlice(b)
		if len(data) == full {
			return a.String()
		}
		return netip.PrefixFrom(a, len(data)*8).String()
	}
	return "0x" + hex.EncodeToString(data)
}

// ctStateNames names the conntrack states of a ct state mask (host byte order).
func ctStateNames(mask []byte) string {
	if len(mask) != 4 {
		return "0x" + hex.EncodeToString(mask)
	}
	m := binary.LittleEndian.Uint32(mask)
	var names []string
	for _, s := range []struct {
		bit  uint32
		name string
	}{{1, "invalid"}, {2, "established"}, {4, "related"}, {8, "new"}, {64, "untracked"}} {
		if m&s.bit != 0 {
			names = append(names, s.name)
			m &^= s.bit
		}
	}
	if m != 0 || len(names) == 0 {
		names = append(names, fmt.Sprintf("0x%x", m))
	}
	return strings.Join(names, ",")
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
