package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// ErrNoRules is returned (wrapped) by RuleCounters when the backend holds no rule of shunt's.
var ErrNoRules = errors.New("no rules of shunt's")

// RuleCounters returns what the kernel counted for the rules of plan that b holds in its namespace,
// by the plan's RuleRef. It changes nothing.
//
// A counter is paired with a rule of the plan by b's own rendering of that rule, not by position
// alone: iptables' by the spec iptables-save prints (iptables.RuleSpec), native nftables' by the
// rule's nft text (nftables.RuleText against the kernel's expressions in nft's words, the order of
// the matches aside). Within each chain the pairing keeps the order of both (the longest common
// subsequence), so that in a built-in chain, where our rules sit among foreign ones, a foreign rule
// that reads like ours, or one of ours left from other settings, is not taken for the plan's. Another
// Backend's counters are paired by position.
//
// Rules of plan that b does not hold are left out of the map, which is returned all the same with an
// error wrapping ErrDrift that names them. When b holds no rule of shunt's at all the error wraps
// ErrNoRules.
func RuleCounters(ctx context.Context, b Backend, plan *redirect.Plan) (map[redirect.RuleRef]redirect.Counters, error) {
	cs, err := b.Counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the %s counters: %w", b.Name(), err)
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%s holds %w", b.Name(), ErrNoRules)
	}
	key := ruleKey(b)
	type chainKey struct {
		family       redirect.Family
		table, chain string
	}
	held := map[chainKey][]Counter{}
	for _, c := range cs {
		k := chainKey{c.Family, c.Table, c.Chain}
		held[k] = append(held[k], c)
	}
	out := map[redirect.RuleRef]redirect.Counters{}
	var missing []string
	for _, fp := range plan.Families {
		for _, t := range fp.Tables {
			for _, c := range t.Chains {
				have := held[chainKey{fp.Family, t.Name, c.Name}]
				slices.SortStableFunc(have, func(a, b Counter) int { return a.Index - b.Index })
				want := make([]string, len(c.Rules))
				for i := range c.Rules {
					want[i] = key.plan(&c.Rules[i], fp.Family, i)
				}
				got := make([]string, len(have))
				for i, h := range have {
					got[i] = key.held(h)
				}
				pairs := align(want, got)
				for i := range c.Rules {
					ref := redirect.RuleRef{Family: fp.Family, Table: t.Name, Chain: c.Name, Index: i}
					j, ok := pairs[i]
					if !ok {
						missing = append(missing, ref.String()+" "+strconv.Quote(want[i]))
						continue
					}
					out[ref] = redirect.Counters{Packets: have[j].Packets, Bytes: have[j].Bytes}
				}
			}
		}
	}
	if len(missing) > 0 {
		return out, &driftError{fmt.Errorf("%s does not hold %d rules of the plan: %s", b.Name(), len(missing), strings.Join(missing, "; "))}
	}
	return out, nil
}

// keyer renders a plan's rule and a held rule into strings that are equal when they are the same rule.
type keyer struct {
	plan func(r *redirect.Rule, f redirect.Family, index int) string
	held func(c Counter) string
}

func ruleKey(b Backend) keyer {
	switch b.(type) {
	case *iptablesBackend:
		return keyer{
			plan: func(r *redirect.Rule, f redirect.Family, _ int) string { return iptables.RuleSpec(r, f) },
			held: func(c Counter) string { return c.Rule },
		}
	case *nftBackend:
		return keyer{
			plan: func(r *redirect.Rule, _ redirect.Family, index int) string {
				text, err := nftables.RuleText(r)
				if err != nil {
					return "unrenderable rule #" + strconv.Itoa(index) + ": " + err.Error()
				}
				return nftKey(text)
			},
			held: func(c Counter) string { return nftKey(nftables.Pretty(c.Rule)) },
		}
	}
	return keyer{
		plan: func(_ *redirect.Rule, _ redirect.Family, index int) string { return "#" + strconv.Itoa(index) },
		held: func(c Counter) string { return "#" + strconv.Itoa(c.Index) },
	}
}

// nftKey reduces an nft rule text, as nftables.RuleText writes a plan's rule or nftables.Pretty reads
// the kernel's, to what both say alike: the words, sorted, without the ones only one of them writes
// ("meta", "th", "nfproto ipv4", a prefix's length, which nftables.Pretty leaves out when the mask is
// not whole bytes, and an interface wildcard's "*", which it also leaves out), quotes, and the order of a state list; "!=" stays with the value it negates.
func nftKey(text string) string {
	var words []string
	fields := strings.Fields(text)
	for i := 0; i < len(fields); i++ {
		// Pretty writes an interface wildcard (veth*) as its prefix (veth).
		w := strings.TrimSuffix(strings.Trim(fields[i], `"`), "*")
		switch w {
		case "meta", "th", "l4proto", "counter":
			continue
		case "nfproto":
			i++ // and its value: the address's family says it
			continue
		case "!=":
			if i+1 < len(fields) {
				i++
				w = "!=" + strings.TrimSuffix(strings.Trim(fields[i], `"`), "*")
			}
		}
		if p, err := netip.ParsePrefix(strings.TrimPrefix(w, "!=")); err == nil {
			// Pretty leaves out the length of a prefix whose mask is not whole bytes.
			w = strings.TrimSuffix(w, "/"+strconv.Itoa(p.Bits()))
		}
		if strings.Contains(w, ",") && !strings.ContainsAny(w, "{}") {
			parts := strings.Split(w, ",")
			slices.Sort(parts)
			w = strings.Join(parts, ",")
		}
		words = append(words, w)
	}
	slices.Sort(words)
	return strings.Join(slices.Compact(words), " ")
}

// align pairs the strings of want with equal ones of got, keeping the order of both and pairing as
// many as can be (a longest common subsequence), and returns want's index → got's.
func align(want, got []string) map[int]int {
	n, m := len(want), len(got)
	// l[i][j] is the length of the longest common subsequence of want[i:] and got[j:].
	l := make([][]int, n+1)
	for i := range l {
		l[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i] == got[j] {
				l[i][j] = l[i+1][j+1] + 1
			} else {
				l[i][j] = max(l[i+1][j], l[i][j+1])
			}
		}
	}
	pairs := map[int]int{}
	for i, j := 0, 0; i < n && j < m; {
		switch {
		case want[i] == got[j]:
			pairs[i] = j
			i++
			j++
		case l[i+1][j] >= l[i][j+1]:
			i++
		default:
			j++
		}
	}
	return pairs
}
