package iptables

import (
	"encoding/binary"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Decoders of the xtables extension payloads both variants carry (as xt_entry_match/xt_entry_target
// in legacy entries, as nft_compat "match"/"target" expressions in nft rules): the inverse of the
// xt* encoders of nft_linux.go and legacy_linux.go. They are lenient — each rule is encoded again
// and compared with what the kernel holds — but never index past a payload.

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// decodeXtMatch reads the match name/rev with payload info into r; false when shunt writes no such
// match.
func decodeXtMatch(r *redirect.Rule, name string, rev uint32, info []byte) bool {
	ne := binary.NativeEndian
	switch {
	case (name == "tcp" || name == "udp") && rev == 0 && len(info) >= 9:
		// struct xt_tcp / xt_udp: spts[2], dpts[2], then (tcp) option, flg_mask, flg_cmp, invflags or
		// (udp) invflags.
		inv := info[8]
		if name == "tcp" {
			if len(info) < 12 {
				return false
			}
			inv = info[11]
		}
		spts := [2]uint16{ne.Uint16(info[0:]), ne.Uint16(info[2:])}
		dpts := [2]uint16{ne.Uint16(info[4:]), ne.Uint16(info[6:])}
		switch {
		case spts == [2]uint16{0, 0xffff} && dpts[0] == dpts[1]:
			r.DPort = redirect.PortMatch{Ports: []uint16{dpts[0]}, Not: inv&0x02 != 0}
		case dpts == [2]uint16{0, 0xffff} && spts[0] == spts[1]:
			r.SPort = redirect.PortMatch{Ports: []uint16{spts[0]}, Not: inv&0x01 != 0}
		default:
			return false
		}
	case name == "multiport" && rev == 1 && len(info) >= 48:
		// struct xt_multiport_v1: flags, count, ports[15], pflags[15], invert.
		n := int(info[1])
		if n < 2 || n > 15 {
			return false
		}
		m := redirect.PortMatch{Not: info[47] != 0}
		for i := range n {
			m.Ports = append(m.Ports, ne.Uint16(info[2+2*i:]))
		}
		switch info[0] {
		case 0:
			r.SPort = m
		case 1:
			r.DPort = m
		default:
			return false
		}
	case name == "conntrack" && rev == 3 && len(info) >= 152:
		mask := ne.Uint16(info[150:])
		for _, s := range ctStateOrder {
			if mask&s.bit != 0 {
				r.CTState = append(r.CTState, s.name)
			}
		}
	case (name == "mark" || name == "connmark") && rev == 1 && len(info) >= 9:
		// struct xt_mark_mtinfo1 / xt_connmark_mtinfo1: mark, mask, invert.
		m := redirect.MarkMatch{Set: true, Value: ne.Uint32(info), Not: info[8] != 0}
		if name == "mark" {
			r.Mark = m
		} else {
			r.ConnMark = m
		}
	case name == "owner" && rev == 1 && len(info) >= 18:
		// struct xt_owner_match_info: uid_min, uid_max, gid_min, gid_max, match, invert.
		o := redirect.OwnerMatch{ID: ne.Uint32(info[0:]), Not: info[17] != 0}
		if info[16] == 2 {
			o.GID, o.ID = true, ne.Uint32(info[8:])
		}
		r.Owners = append(r.Owners, o)
	default:
		return false
	}
	return true
}

// decodeXtTarget reads the target name/rev with payload info into t; false when shunt writes no such
// target.
func decodeXtTarget(t *redirect.Target, fam redirect.Family, name string, rev uint32, info []byte) bool {
	ne := binary.NativeEndian
	switch {
	case name == "REDIRECT" && rev == 0 && fam == redirect.IPv6 && len(info) >= 40:
		t.Kind, t.Port = redirect.TargetRedirect, binary.BigEndian.Uint16(info[36:])
	case name == "REDIRECT" && rev == 0 && fam == redirect.IPv4 && len(info) >= 20:
		t.Kind, t.Port = redirect.TargetRedirect, binary.BigEndian.Uint16(info[16:])
	case name == "TPROXY" && rev == 1 && len(info) >= 26:
		t.Kind, t.Mark, t.Port = redirect.TargetTProxy, ne.Uint32(info[4:]), binary.BigEndian.Uint16(info[24:])
	case name == "MARK" && rev == 2 && len(info) >= 8:
		t.Kind, t.Mark = redirect.TargetSetMark, ne.Uint32(info)
	case name == "CONNMARK" && rev == 2 && len(info) >= 15:
		switch info[14] {
		case 1:
			t.Kind = redirect.TargetSaveMark
		case 2:
			t.Kind = redirect.TargetRestoreMark
		default:
			return false
		}
	case name == "CT" && rev == 2 && len(info) >= 4:
		t.Kind, t.Zone = redirect.TargetCTZone, ne.Uint16(info[2:])
	default:
		return false
	}
	return true
}
