package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/internal/sorted"
	"github.com/shuntmesh/shunt/redirect"
)

// Counter is what the kernel counted for one rule of ours: the packets and bytes that matched it.
type Counter struct {
	Family       redirect.Family
	Table, Chain string
	// Index is the rule's position among our rules of Chain, from 0: in a chain of ours its position
	// in the chain, in a built-in chain its position once foreign rules are left out. It is the index
	// of the rule in the plan's chain (redirect.Chain.Rules) while the rules match the plan (Check).
	Index int
	// Rule is the rule's spec as iptables-save prints it, after "-A CHAIN ".
	Rule           string
	Packets, Bytes uint64
}

func (c Counter) String() string {
	return fmt.Sprintf("%s %s/%s #%d [%d:%d] %s", c.Family, c.Table, c.Chain, c.Index, c.Packets, c.Bytes, c.Rule)
}

// count is the "[packets:bytes]" of one rule of iptables-save -c output.
type count struct{ packets, bytes uint64 }

// parseCounters returns the counters of our rules in iptables-save -c output of family fam: every rule
// of our chains and our rules of built-in chains, as OwnedState tells them, tables by name, chains in
// save order. A rule without counters is an error: the output was not saved with -c.
func parseCounters(data []byte, fam redirect.Family) ([]Counter, error) {
	tables, err := ParseSave(data)
	if err != nil {
		return nil, err
	}
	counts, err := parseCounts(data)
	if err != nil {
		return nil, err
	}
	return ownCounters(tables, counts, fam)
}

// ownCounters returns the counters of our rules in tables, given the counters of every rule, by table
// and chain, in order.
func ownCounters(tables map[string]*SavedTable, counts map[string]map[string][]count, fam redirect.Family) ([]Counter, error) {
	state := OwnedState(tables)
	var out []Counter
	for _, name := range sorted.Keys(state) {
		t, ts := tables[name], state[name]
		for _, chain := range t.Chains {
			rules, n := t.Rules[chain], counts[name][chain]
			if len(n) != len(rules) {
				return nil, fmt.Errorf("%s/%s: %d rules, %d counters", name, chain, len(rules), len(n))
			}
			// Positions in the chain, from 1, of the rules of ours.
			pos := ts.Positions[chain]
			if _, ok := ts.Owned[chain]; ok {
				pos = make([]int, len(rules))
				for i := range pos {
					pos[i] = i + 1
				}
			}
			for i, p := range pos {
				if p < 1 || p > len(rules) {
					return nil, fmt.Errorf("%s/%s: rule %d of %d", name, chain, p, len(rules))
				}
				out = append(out, Counter{Family: fam, Table: name, Chain: chain, Index: i, Rule: rules[p-1],
					Packets: n[p-1].packets, Bytes: n[p-1].bytes})
			}
		}
	}
	return out, nil
}

// parseCounts returns the counters of every rule of iptables-save -c output, by table and chain, in
// order. It reads the lines ParseSave accepts and only the tables and rules of them.
func parseCounts(data []byte) (map[string]map[string][]count, error) {
	out := map[string]map[string][]count{}
	var table map[string][]count
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table = map[string][]count{}
			out[strings.TrimSpace(line[1:])] = table
		case strings.HasPrefix(line, "-A"):
			return nil, fmt.Errorf("line %d: rule without counters (not iptables-save -c output): %q", n, line)
		case strings.HasPrefix(line, "["):
			c, rest, err := cutCount(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			fields := strings.SplitN(strings.TrimSpace(rest), " ", 3)
			if table == nil || len(fields) < 2 || fields[0] != "-A" {
				return nil, fmt.Errorf("line %d: not a rule: %q", n, line)
			}
			table[fields[1]] = append(table[fields[1]], c)
		}
	}
	return out, sc.Err()
}

// cutCount splits "[packets:bytes] rest" into its counters and rest.
func cutCount(line string) (count, string, error) {
	inner, rest, ok := strings.Cut(strings.TrimPrefix(line, "["), "]")
	if !ok {
		return count{}, "", fmt.Errorf("unterminated counters: %q", line)
	}
	p, b, ok := strings.Cut(inner, ":")
	if !ok {
		return count{}, "", fmt.Errorf("counters %q: want [packets:bytes]", inner)
	}
	var c count
	var err error
	if c.packets, err = strconv.ParseUint(p, 10, 64); err != nil {
		return count{}, "", fmt.Errorf("packet counter: %w", err)
	}
	if c.bytes, err = strconv.ParseUint(b, 10, 64); err != nil {
		return count{}, "", fmt.Errorf("byte counter: %w", err)
	}
	return c, rest, nil
}
