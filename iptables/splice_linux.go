package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/redirect"
)

// This file splices our rules into and out of tables that other programs' rules share, from this
// process, with the result iptables-restore --noflush gives for RenderReplace's input: foreign
// chains and rules stay where they are; our rules in built-in chains and our chains go; fp's chains
// are created (or kept, flushed, where they were), its head rules inserted at the top of their
// built-in chains in order, its other rules appended. nft does it in one netlink transaction for the
// whole family; legacy with one IPT_SO_SET_REPLACE per table (as iptables-legacy-restore), keeping
// the counters of the entries it keeps.

const soSetAddCounters = 65 // IPT_SO_SET_ADD_COUNTERS, IP6T_SO_SET_ADD_COUNTERS

// splice replaces our part of the tables named (those holding ours and fp's) of family fam in variant
// v with fp; a nil fp removes it. read is what a read of the family just found: nft splices from it
// (reading again only should the transaction fail); legacy reads each table again holding the
// xtables lock, as it must.
func splice(v Variant, fam redirect.Family, fp *redirect.FamilyPlan, names, env []string, read *kernelTables) error {
	if strconv.IntSize != 64 {
		return errNot64Bit
	}
	if v == VariantLegacy {
		return withXtablesLock(env, func() error { return spliceLegacy(fam, fp, names) })
	}
	if read == nil || read.handles == nil { // nothing read, or read with the save tool
		return spliceNFT(fam, fp, names, nil)
	}
	if err := spliceNFT(fam, fp, names, read); err == nil {
		return nil
	}
	// Another program may have changed the tables since read: the transaction, all or nothing, changed
	// nothing. Start from what they hold now.
	return spliceNFT(fam, fp, names, nil)
}

// splicer returns how o splices: o.splice, or splice.
func (o *Options) splicer() func(v Variant, fam redirect.Family, fp *redirect.FamilyPlan, names, env []string, read *kernelTables) error {
	if o.splice != nil {
		return o.splice
	}
	return splice
}

// planned returns fp's table name, or nil.
func planned(fp *redirect.FamilyPlan, name string) *redirect.Table {
	if fp == nil {
		return nil
	}
	for i := range fp.Tables {
		if fp.Tables[i].Name == name {
			return &fp.Tables[i]
		}
	}
	return nil
}

// oursIn reports, per built-in chain of t, which of its rules are ours (as OwnedState tells them).
func oursIn(t *SavedTable) map[string][]bool {
	has := slices.ContainsFunc(t.Chains, redirect.IsOwned)
	out := map[string][]bool{}
	for _, c := range t.Chains {
		if !redirect.IsBuiltin(c) {
			continue
		}
		for _, spec := range t.Rules[c] {
			out[c] = append(out[c], isOurs(t.Name, c, spec, has))
		}
	}
	return out
}

// spliceNFT does the splice in one nftables transaction: rules of ours deleted by handle, our chains
// flushed and deleted or kept, missing tables and chains created, fp's rules added. k is the family
// as read; nil reads it.
func spliceNFT(fam redirect.Family, fp *redirect.FamilyPlan, names []string, k *kernelTables) error {
	if k == nil {
		var err error
		if k, err = readNFT(fam, nil); err != nil {
			return err
		}
	}
	nfFam := byte(unix.NFPROTO_IPV4)
	if fam == redirect.IPv6 {
		nfFam = unix.NFPROTO_IPV6
	}
	b := newNFTMsgs(nfFam)
	for _, name := range names {
		t, p := k.tables[name], planned(fp, name)
		if t != nil {
			ours := oursIn(t)
			for _, c := range t.Chains {
				for i, mine := range ours[c] {
					if mine {
						b.delRule(name, c, k.handles[name][c][i])
					}
				}
			}
			// All flushed before any is deleted: one may jump to another.
			for _, c := range t.Chains {
				if redirect.IsOwned(c) {
					b.flushChain(name, c)
				}
			}
			for _, c := range t.Chains {
				if redirect.IsOwned(c) && (p == nil || p.Chain(c) == nil) {
					b.delChain(name, c)
				}
			}
		}
		if p == nil {
			continue
		}
		if t == nil {
			b.newTable(name)
		}
		for _, c := range p.Chains {
			switch {
			case c.Builtin && !k.bases[name][c.Name], !c.Builtin && (t == nil || !slices.Contains(t.Chains, c.Name)):
				b.newChain(name, c)
			}
		}
		for _, c := range p.Chains {
			// Head rules go on top in plan order: each inserted at the head, last first.
			for i := len(c.Rules) - 1; i >= 0; i-- {
				if c.Builtin && c.Rules[i].Head {
					b.newRule(name, c.Name, &c.Rules[i], fam, false)
				}
			}
			for i := range c.Rules {
				if !c.Builtin || !c.Rules[i].Head {
					b.newRule(name, c.Name, &c.Rules[i], fam, true)
				}
			}
		}
	}
	msgs, err := b.done()
	if err != nil {
		return err
	}
	if len(msgs) == 2 {
		return nil
	}
	if err := nfnl.Transact(msgs); err != nil {
		return fmt.Errorf("splice %s rules over netlink: %w", fam, err)
	}
	return nil
}

// spliceLegacy splices, table by table, with IPT_SO_GET_ENTRIES, then IPT_SO_SET_REPLACE of the new
// blob and IPT_SO_SET_ADD_COUNTERS giving back the kept entries' counters, as libiptc commits. A table
// fp uses that does not exist yet is created by asking for it, as the restore tool does.
func spliceLegacy(fam redirect.Family, fp *redirect.FamilyPlan, names []string) error {
	lay := legacyV4
	if fam == redirect.IPv6 {
		lay = legacyV6
	}
	fd, err := unix.Socket(lay.domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	for _, name := range names {
		err := spliceLegacyTable(fd, &lay, fam, name, planned(fp, name))
		for try := 0; errors.Is(err, unix.EAGAIN) && try < 3; try++ {
			// The table changed between reading and replacing it (a writer that takes no lock).
			err = spliceLegacyTable(fd, &lay, fam, name, planned(fp, name))
		}
		if err != nil {
			return fmt.Errorf("splice %s %s table: %w", fam, name, err)
		}
	}
	return nil
}

// legacyItem is one entry of a new blob: kept from the old one (old set) or one of ours (rule set),
// or made new (data set, old nil).
type legacyItem struct {
	old   *legacyRaw
	rule  *redirect.Rule
	data  []byte
	start string // the user chain whose first entry this is
	off   int
}

func spliceLegacyTable(fd int, lay *legacyLayout, fam redirect.Family, name string, p *redirect.Table) error {
	blob, li, err := getEntries(fd, lay, name)
	if err != nil {
		return err
	}
	k := newKernelTables()
	lt, err := decodeLegacyTable(k, lay, fam, name, blob, li)
	if err != nil {
		return err
	}
	if lt == nil {
		return errors.New("entries outside any chain")
	}
	t := k.table(name)
	ours := oursIn(t)

	var items []legacyItem
	hookFirst, hookPolicy := map[string]int{}, map[string]int{} // built-in chain → item index
	rules := func(c *redirect.Chain, head bool) {
		for i := range c.Rules {
			if c.Rules[i].Head == head || !c.Builtin && !head {
				items = append(items, legacyItem{rule: &c.Rules[i]})
			}
		}
	}
	userChain := func(c *redirect.Chain) {
		items = append(items, legacyItem{data: errorEntry(lay, c.Name)})
		first := len(items)
		rules(c, false)
		items = append(items, legacyItem{data: standardEntry(lay, verdictReturn)})
		items[first].start = c.Name
	}
	// New user chains of fp go where libiptc inserts them: before the first user chain sorting after
	// them (the chains of a table it wrote are sorted).
	var fresh []*redirect.Chain
	if p != nil {
		for i := range p.Chains {
			c := &p.Chains[i]
			if c.Builtin {
				if _, ok := hookOf[c.Name]; !ok || !slices.ContainsFunc(lt.chains, func(o legacyChain) bool { return o.builtin && o.name == c.Name }) {
					return fmt.Errorf("no built-in chain %s", c.Name)
				}
			} else if !slices.ContainsFunc(lt.chains, func(o legacyChain) bool { return !o.builtin && o.name == c.Name }) {
				fresh = append(fresh, c)
			}
		}
		slices.SortFunc(fresh, func(a, b *redirect.Chain) int { return strings.Compare(a.Name, b.Name) })
	}
	for ci := range lt.chains {
		oc := &lt.chains[ci]
		if oc.builtin {
			var pc *redirect.Chain
			if p != nil {
				pc = p.Chain(oc.name)
			}
			hookFirst[oc.name] = len(items)
			if pc != nil {
				rules(pc, true)
			}
			for i := range oc.rules {
				if !ours[oc.name][i] {
					items = append(items, legacyItem{old: &oc.rules[i]})
				}
			}
			if pc != nil {
				rules(pc, false)
			}
			hookPolicy[oc.name] = len(items)
			items = append(items, legacyItem{old: &oc.tail})
			continue
		}
		for len(fresh) > 0 && strings.Compare(fresh[0].Name, oc.name) <= 0 {
			userChain(fresh[0])
			fresh = fresh[1:]
		}
		var pc *redirect.Chain
		if redirect.IsOwned(oc.name) {
			if p != nil {
				pc = p.Chain(oc.name)
			}
			if pc == nil {
				continue // ours, and not fp's: deleted
			}
		}
		items = append(items, legacyItem{old: &oc.head})
		first := len(items)
		if pc != nil {
			rules(pc, false)
		} else {
			for i := range oc.rules {
				items = append(items, legacyItem{old: &oc.rules[i]})
			}
		}
		items = append(items, legacyItem{old: &oc.tail})
		items[first].start = oc.name
	}
	for _, c := range fresh {
		userChain(c)
	}
	items = append(items, legacyItem{old: &lt.end})

	// Lay out, then encode with the new offsets of chains and kept entries.
	off := 0
	chainStart, moved := map[string]int{}, map[int]int{}
	for i := range items {
		it := &items[i]
		it.off = off
		switch {
		case it.rule != nil:
			e, err := legacyEntry(lay, fam, it.rule, nil)
			if err != nil {
				return err
			}
			off += len(e)
		case it.old != nil:
			moved[it.old.off] = it.off
			off += len(it.old.data)
		default:
			off += len(it.data)
		}
		if it.start != "" {
			chainStart[it.start] = it.off
		}
	}
	var hookEntry, underflow [5]uint32
	for c, i := range hookFirst {
		hookEntry[hookOf[c]] = uint32(items[i].off)
		underflow[hookOf[c]] = uint32(items[hookPolicy[c]].off)
	}
	newBlob := make([]byte, 0, off)
	oldIndex := make([]int, len(items))
	for i := range items {
		it := &items[i]
		oldIndex[i] = -1
		switch {
		case it.rule != nil:
			e, err := legacyEntry(lay, fam, it.rule, chainStart)
			if err != nil {
				return err
			}
			newBlob = append(newBlob, e...)
		case it.old != nil:
			oldIndex[i] = it.old.idx
			e := slices.Clone(it.old.data)
			if err := relocate(lay, e, lt.starts, chainStart, moved); err != nil {
				return err
			}
			newBlob = append(newBlob, e...)
		default:
			newBlob = append(newBlob, it.data...)
		}
	}
	old, err := setReplace(fd, lay, name, li.validHooks, newBlob, hookEntry, underflow, uint32(len(items)), uint32(lt.count))
	if err != nil {
		return err
	}
	// struct xt_counters_info: name[32], num_counters, then struct xt_counters[num_counters] at 40.
	add := make([]byte, 40+16*len(items))
	copy(add, name)
	binary.NativeEndian.PutUint32(add[32:], uint32(len(items)))
	for i, o := range oldIndex {
		if o >= 0 && 16*(o+1) <= len(old) {
			copy(add[40+16*i:], old[16*o:16*(o+1)])
		}
	}
	if err := sockopt(unix.SYS_SETSOCKOPT, fd, lay.level, soSetAddCounters, add, nil); err != nil {
		return fmt.Errorf("restore counters: %w", err)
	}
	return nil
}

// relocate points the jump or goto of e, a kept entry, at the new offset of its destination: the
// chain that started at the old offset (by name), else the kept entry that was there.
func relocate(lay *legacyLayout, e []byte, oldStarts map[int]string, chainStart map[string]int, moved map[int]int) error {
	v, ok := standardVerdict(lay, e)
	if !ok || v < 0 {
		return nil
	}
	to, found := 0, false
	if name, ok := oldStarts[int(v)]; ok {
		to, found = chainStart[name]
		if !found {
			return fmt.Errorf("a rule kept jumps to chain %s, which is removed", name)
		}
	} else if to, found = moved[int(v)]; !found {
		return fmt.Errorf("a rule kept jumps to offset %d, which is removed", v)
	}
	tgt := int(binary.NativeEndian.Uint16(e[lay.targetOffset:]))
	binary.NativeEndian.PutUint32(e[tgt+32:], uint32(int32(to)))
	return nil
}
