package iptables

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/redirect"
)

// This file programs a Plan family into legacy (x_tables) tables the way iptables-legacy-restore does —
// the same table blobs, entries and extension payloads, so iptables-legacy-save reads back exactly
// the same rules — from this process, with one IPT_SO_SET_REPLACE per table. It is used for fresh
// installs into a namespace without legacy tables: no tool to start, and no libxtables owner parser
// with its user and group name lookups.

const (
	soSetReplace = 64 // IPT_SO_SET_REPLACE, IP6T_SO_SET_REPLACE
	soGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO

	verdictAccept = -1 - 1 // -NF_ACCEPT - 1
	verdictDrop   = -0 - 1 // -NF_DROP - 1
	verdictReturn = -4 - 1 // XT_RETURN: -NF_REPEAT - 1
)

// hookOf maps built-in chains to netfilter hooks.
var hookOf = map[string]int{"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}

// legacyLayout describes the entry structures of a family.
type legacyLayout struct {
	entrySize, targetOffset, nextOffset int // sizeof(ipt_entry), offsetof target_offset, next_offset
	level                               int
	domain                              int
}

var (
	legacyV4 = legacyLayout{entrySize: 112, targetOffset: 88, nextOffset: 90, level: unix.SOL_IP, domain: unix.AF_INET}
	legacyV6 = legacyLayout{entrySize: 168, targetOffset: 140, nextOffset: 142, level: unix.SOL_IPV6, domain: unix.AF_INET6}
)

// programLegacy replaces, table by table, the tables of fp and those named in drop (tables of fp's
// family that hold nothing but ours, see onlyOurs) with fp's rules: a table of drop that fp does not
// use is left with empty built-in chains.
func programLegacy(fp *redirect.FamilyPlan, drop []string) error {
	if strconv.IntSize != 64 {
		return errNot64Bit // the payload layouts below are those of 64-bit kernels
	}
	lay := legacyV4
	if fp.Family == redirect.IPv6 {
		lay = legacyV6
	}
	fd, err := unix.Socket(lay.domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	tables := slices.Clone(fp.Tables)
	for _, name := range drop {
		if !slices.ContainsFunc(tables, func(t redirect.Table) bool { return t.Name == name }) {
			tables = append(tables, redirect.Table{Name: name})
		}
	}
	for i := range tables {
		if err := replaceTable(fd, &lay, fp.Family, &tables[i]); err != nil {
			return fmt.Errorf("program %s %s table: %w", fp.Family, tables[i].Name, err)
		}
	}
	return nil
}

func replaceTable(fd int, lay *legacyLayout, fam redirect.Family, t *redirect.Table) error {
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
	info := make([]byte, 84)
	copy(info, t.Name)
	size := uint32(len(info))
	if err := sockopt(unix.SYS_GETSOCKOPT, fd, lay.level, soGetInfo, info, &size); err != nil {
		return fmt.Errorf("get table info: %w", err)
	}
	validHooks := binary.NativeEndian.Uint32(info[32:])
	oldEntries := binary.NativeEndian.Uint32(info[76:])

	blob, hookEntry, underflow, n, err := tableBlob(lay, fam, t, validHooks)
	if err != nil {
		return err
	}
	_, err = setReplace(fd, lay, t.Name, validHooks, blob, hookEntry, underflow, n, oldEntries)
	return err
}

// setReplace replaces table name with the n entries of blob, and returns the counters of the entries
// it replaced (struct xt_counters: packets, bytes; oldEntries of them, in entry order).
func setReplace(fd int, lay *legacyLayout, name string, validHooks uint32, blob []byte, hookEntry, underflow [5]uint32, n, oldEntries uint32) ([]byte, error) {
	// struct ipt_replace: name[32], valid_hooks, num_entries, size, hook_entry[5], underflow[5],
	// num_counters, counters (a pointer the kernel writes the old counters to), entries.
	counters := make([]byte, 16*max(oldEntries, 1))
	repl := make([]byte, 96, 96+len(blob))
	copy(repl, name)
	ne := binary.NativeEndian
	ne.PutUint32(repl[32:], validHooks)
	ne.PutUint32(repl[36:], n)
	ne.PutUint32(repl[40:], uint32(len(blob)))
	for h := 0; h < 5; h++ {
		ne.PutUint32(repl[44+4*h:], hookEntry[h])
		ne.PutUint32(repl[64+4*h:], underflow[h])
	}
	ne.PutUint32(repl[84:], oldEntries)
	ne.PutUint64(repl[88:], uint64(uintptr(unsafe.Pointer(&counters[0]))))
	repl = append(repl, blob...)
	err := sockopt(unix.SYS_SETSOCKOPT, fd, lay.level, soSetReplace, repl, nil)
	runtime.KeepAlive(counters)
	if err != nil {
		return nil, fmt.Errorf("replace table: %w", err)
	}
	return counters[:16*oldEntries], nil
}

func sockopt(call uintptr, fd, level, name int, buf []byte, size *uint32) error {
	var lenArg uintptr
	if size != nil {
		lenArg = uintptr(unsafe.Pointer(size))
	} else {
		lenArg = uintptr(len(buf))
	}
	_, _, errno := unix.Syscall6(call, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&buf[0])), lenArg, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// tableBlob lays out the entries of t as libiptc does: built-in chains in hook order, each its rules
// then its ACCEPT policy; user chains sorted by name, each an ERROR entry naming it, its rules, then a
// RETURN; a final ERROR entry.
func tableBlob(lay *legacyLayout, fam redirect.Family, t *redirect.Table, validHooks uint32) (blob []byte, hookEntry, underflow [5]uint32, n uint32, err error) {
	var builtins, users []redirect.Chain
	for _, c := range t.Chains {
		if c.Builtin {
			builtins = append(builtins, c)
		} else {
			users = append(users, c)
		}
	}
	slices.SortFunc(users, func(a, b redirect.Chain) int { return strings.Compare(a.Name, b.Name) })

	// Jumps need the offset of each user chain's first rule: compute the layout first.
	chainStart := map[string]int{}
	off := 0
	for h := 0; h < 5; h++ {
		if validHooks&(1<<h) == 0 {
			continue
		}
		for _, c := range builtins {
			if hookOf[c.Name] == h {
				off += rulesSize(lay, fam, c.Rules)
			}
		}
		off += lay.entrySize + 40 // policy
	}
	for _, c := range users {
		off += lay.entrySize + 64 // ERROR head
		chainStart[c.Name] = off
		off += rulesSize(lay, fam, c.Rules) + lay.entrySize + 40 // rules, RETURN
	}

	emit := func(e []byte) { blob = append(blob, e...); n++ }
	for h := 0; h < 5; h++ {
		if validHooks&(1<<h) == 0 {
			continue
		}
		hookEntry[h] = uint32(len(blob))
		for _, c := range builtins {
			if hookOf[c.Name] != h {
				continue
			}
			for i := range c.Rules {
				e, err := legacyEntry(lay, fam, &c.Rules[i], chainStart)
				if err != nil {
					return nil, hookEntry, underflow, 0, fmt.Errorf("%s: %w", c.Name, err)
				}
				emit(e)
			}
		}
		underflow[h] = uint32(len(blob))
		emit(standardEntry(lay, verdictAccept))
	}
	for _, c := range users {
		emit(errorEntry(lay, c.Name))
		for i := range c.Rules {
			e, err := legacyEntry(lay, fam, &c.Rules[i], chainStart)
			if err != nil {
				return nil, hookEntry, underflow, 0, fmt.Errorf("%s: %w", c.Name, err)
			}
			emit(e)
		}
		emit(standardEntry(lay, verdictReturn))
	}
	emit(errorEntry(lay, "ERROR"))
	if len(blob) != off+lay.entrySize+64 {
		return nil, hookEntry, underflow, 0, fmt.Errorf("table layout: %d bytes, planned %d", len(blob), off+lay.entrySize+64)
	}
	return blob, hookEntry, underflow, n, nil
}

func rulesSize(lay *legacyLayout, fam redirect.Family, rules []redirect.Rule) int {
	size := 0
	for i := range rules {
		e, err := legacyEntry(lay, fam, &rules[i], nil)
		if err == nil {
			size += len(e)
		}
	}
	return size
}

// entry returns an entry header with the given matches and target appended, offsets filled in.
func entry(lay *legacyLayout, ip []byte, matches [][]byte, target []byte) []byte {
	e := make([]byte, lay.entrySize)
	copy(e, ip)
	for _, m := range matches {
		e = append(e, m...)
	}
	binary.NativeEndian.PutUint16(e[lay.targetOffset:], uint16(len(e)))
	e = append(e, target...)
	binary.NativeEndian.PutUint16(e[lay.nextOffset:], uint16(len(e)))
	return e
}

// ext is an xt_entry_match or xt_entry_target: size, name[29], revision, payload.
func ext(name string, rev uint32, payload []byte) []byte {
	b := make([]byte, 32, 32+len(payload))
	binary.NativeEndian.PutUint16(b, uint16(32+len(payload)))
	copy(b[2:31], name)
	b[31] = byte(rev)
	return append(b, payload...)
}

func standardEntry(lay *legacyLayout, verdict int32) []byte {
	return entry(lay, nil, nil, standardTarget(verdict))
}

func standardTarget(verdict int32) []byte {
	v := newInfo(4)
	binary.NativeEndian.PutUint32(v, uint32(verdict))
	return ext("", 0, v)
}

func errorEntry(lay *legacyLayout, name string) []byte {
	msg := newInfo(30) // errorname[XT_FUNCTION_MAXNAMELEN]
	copy(msg, name)
	return entry(lay, nil, nil, ext("ERROR", 0, msg))
}

// legacyEntry encodes r. chainStart (nil while sizing) gives the offsets jumps point at.
func legacyEntry(lay *legacyLayout, fam redirect.Family, r *redirect.Rule, chainStart map[string]int) ([]byte, error) {
	ip := make([]byte, lay.entrySize)
	const (
		invIn, invOut, invSrc, invDst = 0x01, 0x02, 0x08, 0x10
	)
	var inv byte
	alen, ifOff, protoOff, invOff := 4, 16, 80, 83
	if fam == redirect.IPv6 {
		alen, ifOff, protoOff, invOff = 16, 64, 128, 132
	}
	addr := func(slot int, m redirect.AddrMatch, flag byte) {
		if !m.Prefix.IsValid() {
			return // (Masked would make an error to drop)
		}
		p := m.Prefix.Masked()
		if !p.IsValid() || (p.Bits() == 0 && !m.Not) {
			return
		}
		copy(ip[slot*alen:], p.Addr().AsSlice())
		mask := ip[(slot+2)*alen : (slot+3)*alen]
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		if m.Not {
			inv |= flag
		}
	}
	addr(0, r.Src, invSrc)
	addr(1, r.Dst, invDst)
	iface := func(slot int, m redirect.IfaceMatch, flag byte) {
		if m.Name == "" {
			return
		}
		copy(ip[ifOff+16*slot:], m.Name)
		n := len(m.Name) + 1 // with the terminating NUL
		if strings.HasSuffix(m.Name, "+") {
			n = len(m.Name) - 1
		}
		for i := 0; i < n; i++ {
			ip[ifOff+32+16*slot+i] = 0xff
		}
		if m.Not {
			inv |= flag
		}
	}
	iface(0, r.In, invIn)
	iface(1, r.Out, invOut)
	if r.Proto != "" {
		binary.NativeEndian.PutUint16(ip[protoOff:], uint16(protoNum(r.Proto)))
		if fam == redirect.IPv6 {
			ip[131] = 0x01 // IP6T_F_PROTO
		}
	}
	ip[invOff] = inv

	var matches [][]byte
	if p := portMatch(r); p != nil {
		matches = append(matches, p)
	}
	if len(r.CTState) > 0 {
		info, err := xtConntrackState(r.CTState)
		if err != nil {
			return nil, err
		}
		matches = append(matches, ext("conntrack", 3, info))
	}
	if r.Mark.Set {
		matches = append(matches, ext("mark", 1, xtMark(r.Mark)))
	}
	if r.ConnMark.Set {
		matches = append(matches, ext("connmark", 1, xtConnmark(r.ConnMark)))
	}
	for _, o := range r.Owners {
		matches = append(matches, ext("owner", 1, xtOwner(o)))
	}

	var target []byte
	switch r.Target.Kind {
	case redirect.TargetJump:
		start, ok := chainStart[r.Target.Chain]
		if !ok && chainStart != nil {
			return nil, fmt.Errorf("jump to unknown chain %s", r.Target.Chain)
		}
		target = standardTarget(int32(start))
	case redirect.TargetReturn:
		target = standardTarget(verdictReturn)
	case redirect.TargetAccept:
		target = standardTarget(verdictAccept)
	case redirect.TargetDrop:
		target = standardTarget(verdictDrop)
	default:
		name, rev, info, err := xtTargetInfo(&r.Target, fam)
		if err != nil {
			return nil, err
		}
		target = ext(name, rev, info)
	}
	return entry(lay, ip, matches, target), nil
}

// portMatch returns the tcp/udp (struct xt_tcp / xt_udp: port ranges, then flags) or multiport match
// of r's ports, or nil.
func portMatch(r *redirect.Rule) []byte {
	var one *redirect.PortMatch
	for _, m := range []*redirect.PortMatch{&r.SPort, &r.DPort} {
		switch {
		case len(m.Ports) > 1:
			flag := byte(1) // XT_MULTIPORT_DESTINATION
			if m == &r.SPort {
				flag = 0
			}
			return ext("multiport", 1, xtMultiport(*m, flag))
		case len(m.Ports) == 1:
			one = m
		}
	}
	if one == nil {
		return nil
	}
	b := newInfo(12)
	if r.Proto == "udp" {
		b = newInfo(10)
	}
	ne := binary.NativeEndian
	ne.PutUint16(b[2:], 0xffff) // spts = 0:65535
	ne.PutUint16(b[6:], 0xffff) // dpts = 0:65535
	off, flag := 4, byte(0x02)  // dpts, XT_TCP_INV_DSTPT / XT_UDP_INV_DSTPT
	if one == &r.SPort {
		off, flag = 0, 0x01
	}
	ne.PutUint16(b[off:], one.Ports[0])
	ne.PutUint16(b[off+2:], one.Ports[0])
	if one.Not {
		if r.Proto == "udp" {
			b[8] = flag
		} else {
			b[11] = flag
		}
	}
	return ext(r.Proto, 0, b)
}
