package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/redirect"
)

const soGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES

// readLegacy reads the legacy tables of family fam that /proc lists (opening a table that does not
// exist would create it) with IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES; names, when given, is that list
// as just read.
func readLegacy(fam redirect.Family, names []string) (*kernelTables, error) {
	lay, list := legacyV4, "ip_tables_names"
	if fam == redirect.IPv6 {
		lay, list = legacyV6, "ip6_tables_names"
	}
	k := newKernelTables()
	if names == nil {
		data, err := readLegacyNames(list)
		if err != nil {
			return nil, err
		}
		names = strings.Fields(string(data))
	}
	if len(names) == 0 {
		return k, nil
	}
	fd, err := unix.Socket(lay.domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	for _, name := range names {
		if len(name) >= 32 {
			continue
		}
		blob, info, err := getEntries(fd, &lay, name)
		if err != nil {
			return nil, fmt.Errorf("read %s %s table: %w", fam, name, err)
		}
		if _, err := decodeLegacyTable(k, &lay, fam, name, blob, info); err != nil {
			return nil, fmt.Errorf("decode %s %s table: %w", fam, name, err)
		}
	}
	return k, nil
}

// legacyInfo is what IPT_SO_GET_INFO tells of a table.
type legacyInfo struct {
	validHooks           uint32
	hookEntry, underflow [5]uint32
}

// getEntries returns the entries of table name and its hooks.
func getEntries(fd int, lay *legacyLayout, name string) ([]byte, legacyInfo, error) {
	var li legacyInfo
	ne := binary.NativeEndian
	for range 5 { // the table may change between the two calls
		info := make([]byte, 84)
		copy(info, name)
		size := uint32(len(info))
		if err := sockopt(unix.SYS_GETSOCKOPT, fd, lay.level, soGetInfo, info, &size); err != nil {
			return nil, li, fmt.Errorf("get table info: %w", err)
		}
		li.validHooks = ne.Uint32(info[32:])
		for h := range 5 {
			li.hookEntry[h] = ne.Uint32(info[36+4*h:])
			li.underflow[h] = ne.Uint32(info[56+4*h:])
		}
		n := ne.Uint32(info[80:])
		// struct ipt_get_entries: name[32], size, then the entries, aligned to 8.
		buf := make([]byte, 40+n)
		copy(buf, name)
		ne.PutUint32(buf[32:], n)
		size = uint32(len(buf))
		err := sockopt(unix.SYS_GETSOCKOPT, fd, lay.level, soGetEntries, buf, &size)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, li, fmt.Errorf("get entries: %w", err)
		}
		return buf[40:], li, nil
	}
	return nil, li, errors.New("get entries: the table keeps changing")
}

// legacyRaw is one entry of a table blob: its offset, index and bytes.
type legacyRaw struct {
	off, idx int
	data     []byte
}

// legacyChain is one chain of a table blob, in blob order: a built-in chain's rules and policy
// (tail), or a user chain's ERROR entry naming it (head), rules and closing RETURN (tail).
type legacyChain struct {
	name       string
	builtin    bool
	head, tail legacyRaw
	rules      []legacyRaw
}

// legacyTable is a table blob as chains: what a splice keeps, drops and adds to.
type legacyTable struct {
	chains []legacyChain
	end    legacyRaw      // the final ERROR entry
	starts map[int]string // offset of each user chain's first entry → its name
	count  int            // entries in all
}

// decodeLegacyTable adds the chains and rules of a table blob to k: built-in chains from the hook
// entries to their underflow (the policy), user chains from the ERROR entry naming them to their
// closing RETURN. It returns the blob as chains.
func decodeLegacyTable(k *kernelTables, lay *legacyLayout, fam redirect.Family, table string, blob []byte, li legacyInfo) (*legacyTable, error) {
	ne := binary.NativeEndian
	var entries []legacyRaw
	for off := 0; off < len(blob); {
		if off+lay.entrySize > len(blob) {
			return nil, fmt.Errorf("entry at %d: truncated", off)
		}
		next := int(ne.Uint16(blob[off+lay.nextOffset:]))
		tgt := int(ne.Uint16(blob[off+lay.targetOffset:]))
		if next < lay.entrySize+32 || off+next > len(blob) || tgt < lay.entrySize || tgt+32 > next {
			return nil, fmt.Errorf("entry at %d: bad offsets %d/%d", off, tgt, next)
		}
		entries = append(entries, legacyRaw{off: off, idx: len(entries), data: blob[off : off+next]})
		off += next
	}
	// User chains: an ERROR entry naming them, then their rules from the next entry.
	chainAt := map[int]string{}
	errorName := func(e []byte) (string, bool) {
		tgt := int(ne.Uint16(e[lay.targetOffset:]))
		if cString(e[tgt+2:tgt+31]) != "ERROR" {
			return "", false
		}
		return cString(e[tgt+32:]), true
	}
	for i, e := range entries {
		if name, ok := errorName(e.data); ok && name != "ERROR" && i+1 < len(entries) {
			chainAt[entries[i+1].off] = name
		}
	}
	chainStart := map[string]int{}
	for off, name := range chainAt {
		chainStart[name] = off
	}
	hookAt, underAt := map[int][]string{}, map[int]string{}
	for _, name := range xtBuiltinChains[table] {
		h, ok := hookOf[name]
		if !ok || li.validHooks&(1<<h) == 0 {
			continue
		}
		hookAt[int(li.hookEntry[h])] = append(hookAt[int(li.hookEntry[h])], name)
		underAt[int(li.underflow[h])] = name
	}
	for h := range 5 {
		if li.validHooks&(1<<h) != 0 && !slices.ContainsFunc(xtBuiltinChains[table], func(n string) bool { return hookOf[n] == h }) {
			return nil, fmt.Errorf("hook %d of an unknown table", h)
		}
	}
	var builtins, users []string
	rules := map[string][]legacyRaw{}
	policies := map[string]string{}
	lt := &legacyTable{starts: chainAt, count: len(entries)}
	placed := 0 // entries lt holds
	last := func() *legacyChain { return &lt.chains[len(lt.chains)-1] }
	cur, user := "", false
	for i, e := range entries {
		if names := hookAt[e.off]; len(names) > 0 {
			cur, user = names[0], false
			builtins = append(builtins, names[0])
			lt.chains = append(lt.chains, legacyChain{name: names[0], builtin: true})
		}
		if name, ok := underAt[e.off]; ok && name == cur {
			policies[cur] = "-"
			if v, ok := standardVerdict(lay, e.data); ok && v < 0 {
				policies[cur] = verdictName(-v - 1)
			}
			last().tail = e
			placed++
			cur = ""
			continue
		}
		if _, ok := errorName(e.data); ok {
			cur, user = "", false
			if i+1 < len(entries) {
				if name, ok := chainAt[entries[i+1].off]; ok {
					cur, user = name, true
					users = append(users, name)
					lt.chains = append(lt.chains, legacyChain{name: name, head: e})
					placed++
				}
			} else {
				lt.end = e
				placed++
			}
			continue
		}
		if cur == "" {
			continue
		}
		if _, last2 := errorName(entries[min(i+1, len(entries)-1)].data); user && (i+1 == len(entries) || last2) {
			last().tail = e // the chain's closing RETURN
			placed++
			continue
		}
		rules[cur] = append(rules[cur], e)
		last().rules = append(last().rules, e)
		placed++
	}
	if placed != len(entries) || lt.end.data == nil {
		lt = nil // entries outside any chain: not a table libiptc lays out, not to be spliced
	}
	slices.Sort(users)
	k.table(table)
	for _, c := range builtins {
		k.chain(table, c, policies[c])
	}
	for _, c := range users {
		k.chain(table, c, "-")
	}
	for _, c := range slices.Concat(builtins, users) {
		for _, e := range rules[c] {
			spec, n := legacyRuleSpec(lay, fam, e.data, chainAt, chainStart)
			k.rule(table, c, spec, n)
		}
	}
	return lt, nil
}

// standardVerdict returns the verdict of an entry with the standard target.
func standardVerdict(lay *legacyLayout, e []byte) (int32, bool) {
	tgt := int(binary.NativeEndian.Uint16(e[lay.targetOffset:]))
	if cString(e[tgt+2:tgt+31]) != "" || tgt+36 > len(e) {
		return 0, false
	}
	return int32(binary.NativeEndian.Uint32(e[tgt+32:])), true
}

// legacyRuleSpec returns the spec of entry e as iptables-save prints it (or unknownSpec's
// placeholder) and its counters. starts names the user chain starting at each offset; chainStart is
// its inverse.
func legacyRuleSpec(lay *legacyLayout, fam redirect.Family, e []byte, starts map[int]string, chainStart map[string]int) (string, count) {
	ne := binary.NativeEndian
	cnt := lay.entrySize - 16
	c := count{packets: ne.Uint64(e[cnt:]), bytes: ne.Uint64(e[cnt+8:])}
	e, comment, hasComment := cutComment(lay, e)
	r, names, ok := decodeLegacyEntry(lay, fam, e, starts)
	spec, same := "", false
	if ok {
		spec, same = sameLegacyEntry(lay, fam, &r, e, chainStart)
	}
	if !same {
		if hasComment {
			names = append(names, "comment")
		}
		return unknownSpec(names), c
	}
	if hasComment {
		return withComment(spec, comment), c
	}
	return spec, c
}

// cutComment returns e without its last match when that is a comment, which iptables-save prints
// after the other matches, and the comment.
func cutComment(lay *legacyLayout, e []byte) ([]byte, string, bool) {
	ne := binary.NativeEndian
	tgt := int(ne.Uint16(e[lay.targetOffset:]))
	var matches [][]byte
	for off := lay.entrySize; off+32 <= tgt; {
		size := int(ne.Uint16(e[off:]))
		if size < 32 || off+size > tgt {
			return e, "", false
		}
		matches = append(matches, e[off:off+size])
		off += size
	}
	if len(matches) == 0 {
		return e, "", false
	}
	last := matches[len(matches)-1]
	text, ok := commentMatch(cString(last[2:31]), uint32(last[31]), last[32:])
	if !ok || tgt != lay.entrySize+totalLen(matches) {
		return e, "", false
	}
	return entry(lay, e[:lay.entrySize], matches[:len(matches)-1], e[tgt:]), text, true
}

func totalLen(bs [][]byte) int {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	return n
}

// sameLegacyEntry reports whether r, encoded as shunt encodes it, is e (counters and the kernel's
// bookkeeping aside), and returns r's spec.
func sameLegacyEntry(lay *legacyLayout, fam redirect.Family, r *redirect.Rule, e []byte, chainStart map[string]int) (spec string, same bool) {
	defer func() {
		if recover() != nil {
			spec, same = "", false
		}
	}()
	want, err := legacyEntry(lay, fam, r, chainStart)
	if err != nil || len(want) != len(e) {
		return "", false
	}
	// nfcache, comefrom and counters (between the ip part and the offsets, after the offsets) aside.
	skip := [][2]int{{lay.targetOffset - 4, lay.targetOffset}, {lay.nextOffset + 2, lay.entrySize}}
	from := 0
	for _, s := range append(skip, [2]int{len(e), len(e)}) {
		if string(e[from:s[0]]) != string(want[from:s[0]]) {
			return "", false
		}
		from = s[1]
	}
	return RuleSpec(r, fam), true // RuleSpec panics for targets it cannot print
}

// decodeLegacyEntry reads an entry into a Rule; names lists its matches and target for a placeholder.
func decodeLegacyEntry(lay *legacyLayout, fam redirect.Family, e []byte, starts map[int]string) (r redirect.Rule, names []string, ok bool) {
	ne := binary.NativeEndian
	alen, ifOff, protoOff, invOff := 4, 16, 80, 83
	if fam == redirect.IPv6 {
		alen, ifOff, protoOff, invOff = 16, 64, 128, 132
	}
	inv := e[invOff]
	addr := func(slot int, flag byte) redirect.AddrMatch {
		mask := e[(slot+2)*alen : (slot+3)*alen]
		bits := maskBits(mask)
		if bits == 0 && inv&flag == 0 {
			return redirect.AddrMatch{}
		}
		return redirect.AddrMatch{Prefix: addrPrefix(e[slot*alen:(slot+1)*alen], bits), Not: inv&flag != 0}
	}
	r.Src, r.Dst = addr(0, 0x08), addr(1, 0x10)
	iface := func(slot int, flag byte) redirect.IfaceMatch {
		name := cString(e[ifOff+16*slot : ifOff+16*slot+16])
		if name == "" {
			return redirect.IfaceMatch{}
		}
		return redirect.IfaceMatch{Name: name, Not: inv&flag != 0}
	}
	r.In, r.Out = iface(0, 0x01), iface(1, 0x02)
	ok = true
	switch ne.Uint16(e[protoOff:]) {
	case 0:
	case unix.IPPROTO_TCP:
		r.Proto = "tcp"
	case unix.IPPROTO_UDP:
		r.Proto = "udp"
	default:
		ok = false
		names = append(names, "proto")
	}
	tgt := int(ne.Uint16(e[lay.targetOffset:]))
	for off := lay.entrySize; off < tgt; {
		if off+32 > tgt {
			return r, append(names, "truncated"), false
		}
		size := int(ne.Uint16(e[off:]))
		if size < 32 || off+size > tgt {
			return r, append(names, "truncated"), false
		}
		name := cString(e[off+2 : off+31])
		names = append(names, name)
		if !decodeXtMatch(&r, name, uint32(e[off+31]), e[off+32:off+size]) {
			ok = false
		}
		off += size
	}
	size := int(ne.Uint16(e[tgt:]))
	if size < 32 || tgt+size > len(e) {
		return r, append(names, "truncated"), false
	}
	name := cString(e[tgt+2 : tgt+31])
	info := e[tgt+32 : tgt+size]
	if name != "" {
		names = append(names, name)
		return r, names, ok && decodeXtTarget(&r.Target, fam, name, uint32(e[tgt+31]), info)
	}
	if len(info) < 4 {
		return r, append(names, "truncated"), false
	}
	switch v := int32(ne.Uint32(info)); {
	case v == verdictAccept:
		r.Target.Kind = redirect.TargetAccept
	case v == verdictDrop:
		r.Target.Kind = redirect.TargetDrop
	case v == verdictReturn:
		r.Target.Kind = redirect.TargetReturn
	case v >= 0 && starts[int(v)] != "":
		r.Target = redirect.Target{Kind: redirect.TargetJump, Chain: starts[int(v)]}
	default:
		names = append(names, fmt.Sprintf("verdict%d", v))
		ok = false
	}
	return r, names, ok
}
