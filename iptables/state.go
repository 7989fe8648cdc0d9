package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/internal/sorted"
	"github.com/shuntmesh/shunt/redirect"
)

// SavedTable is one table of iptables-save output.
type SavedTable struct {
	Name     string
	Chains   []string            // every chain, built-in and user-defined, in save order
	Policies map[string]string   // chain → policy ("ACCEPT", "DROP"; "-" for user-defined chains)
	Rules    map[string][]string // chain → rule specs (the text after "-A CHAIN ")
}

// ParseSave parses iptables-save output (counters, if any, are dropped).
func ParseSave(data []byte) (map[string]*SavedTable, error) {
	tables := make(map[string]*SavedTable)
	var cur *SavedTable
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '*':
			name := strings.TrimSpace(line[1:])
			if name == "" {
				return nil, fmt.Errorf("line %d: table without a name", n)
			}
			cur = &SavedTable{Name: name, Policies: make(map[string]string), Rules: make(map[string][]string)}
			tables[name] = cur
		case cur == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", n, line)
		case line == "COMMIT":
			cur = nil
		case line[0] == ':':
			fields := strings.Fields(line[1:])
			if len(fields) == 0 {
				return nil, fmt.Errorf("line %d: chain without a name", n)
			}
			if !slices.Contains(cur.Chains, fields[0]) {
				cur.Chains = append(cur.Chains, fields[0])
			}
			if len(fields) > 1 {
				cur.Policies[fields[0]] = fields[1]
			}
		case line[0] == '[':
			// "[pkts:bytes] -A CHAIN ..." from iptables-save -c
			i := strings.IndexByte(line, ']')
			if i < 0 {
				return nil, fmt.Errorf("line %d: unterminated counters", n)
			}
			line = strings.TrimSpace(line[i+1:])
			fallthrough
		default:
			fields := strings.SplitN(line, " ", 3)
			if len(fields) < 2 || fields[0] != "-A" {
				return nil, fmt.Errorf("line %d: not a rule: %q", n, line)
			}
			spec := ""
			if len(fields) == 3 {
				spec = fields[2]
			}
			cur.Rules[fields[1]] = append(cur.Rules[fields[1]], spec)
		}
	}
	return tables, sc.Err()
}

// State is the part of a family's ruleset that is ours, per table: our chains with all their rules,
// and our rules in the built-in chains, in order.
type State map[string]*TableState

// TableState is our part of one table.
type TableState struct {
	Owned   map[string][]string // our chains → rule specs
	Builtin map[string][]string // built-in chain → our rule specs, in order
	// Positions holds, for state read from a namespace, the 1-based position in its chain of each rule
	// of Builtin, so that cleanup deletes rules by number: iptables then parses no rule text, and
	// libxt_owner looks up no user or group name.
	Positions map[string][]int
}

// Empty reports whether nothing of ours is installed.
func (s State) Empty() bool {
	for _, t := range s {
		if len(t.Owned) > 0 || len(t.Builtin) > 0 {
			return false
		}
	}
	return true
}

// isOurs reports whether spec, a rule of the built-in chain chain of table, is one the engine installs there (see
// redirect.OwnsBuiltinRule); tableHasOurChains tells whether its table holds chains of ours. Nothing is
// compiled: the init container's start-up stays lean.
func isOurs(table, chain, spec string, tableHasOurChains bool) bool {
	r, exact := savedRule(spec)
	if !exact {
		// It matches what no Rule holds: only its target can make it ours.
		r = redirect.Rule{Target: r.Target}
	}
	return redirect.OwnsBuiltinRule(table, chain, &r, tableHasOurChains)
}

// savedRule reads spec, a rule as iptables-save prints it, back into the Rule that RuleSpec renders as
// spec. exact is false when spec is no rendering of RuleSpec; r then still holds the target of spec's
// last -j.
func savedRule(spec string) (r redirect.Rule, exact bool) {
	w := strings.Fields(spec)
	j := -1
	for i, s := range w {
		if s == "-j" {
			j = i
		}
	}
	if j < 0 || j == len(w)-1 {
		return r, false
	}
	fam := savedTarget(&r.Target, w[j+1:])
	return r, savedMatches(&r, w[:j]) && RuleSpec(&r, fam) == spec
}

// savedTarget reads the target w (its name and options) into t, and returns the family its options
// imply (TPROXY's --on-ip).
func savedTarget(t *redirect.Target, w []string) redirect.Family {
	opt := func(name string) string {
		if i := slices.Index(w, name); i >= 0 && i+1 < len(w) {
			return w[i+1]
		}
		return ""
	}
	fam := redirect.IPv4
	switch w[0] {
	case "RETURN":
		t.Kind = redirect.TargetReturn
	case "ACCEPT":
		t.Kind = redirect.TargetAccept
	case "DROP":
		t.Kind = redirect.TargetDrop
	case "REDIRECT":
		t.Kind, t.Port = redirect.TargetRedirect, uint16(savedNumber(opt("--to-ports")))
	case "TPROXY":
		t.Kind, t.Port, t.Mark = redirect.TargetTProxy, uint16(savedNumber(opt("--on-port"))), savedNumber(opt("--tproxy-mark"))
		if opt("--on-ip") == "::" {
			fam = redirect.IPv6
		}
	case "MARK":
		t.Kind, t.Mark = redirect.TargetSetMark, savedNumber(opt("--set-xmark"))
	case "CONNMARK":
		t.Kind = redirect.TargetRestoreMark
		if slices.Contains(w, "--save-mark") {
			t.Kind = redirect.TargetSaveMark
		}
	case "CT":
		t.Kind, t.Zone = redirect.TargetCTZone, uint16(savedNumber(opt("--zone")))
	default:
		t.Kind, t.Chain = redirect.TargetJump, w[0]
	}
	return fam
}

// savedMatches reads the matches w into r. It reports false for an option RuleSpec does not write.
func savedMatches(r *redirect.Rule, w []string) bool {
	module := ""
	for i := 0; i < len(w); i += 2 {
		not := w[i] == "!"
		if not {
			i++
		}
		if i+1 >= len(w) {
			return false
		}
		flag, val := w[i], w[i+1]
		switch flag {
		case "-s", "-d":
			p, err := netip.ParsePrefix(val)
			if err != nil {
				return false
			}
			if flag == "-s" {
				r.Src = redirect.AddrMatch{Prefix: p, Not: not}
			} else {
				r.Dst = redirect.AddrMatch{Prefix: p, Not: not}
			}
		case "-i":
			r.In = redirect.IfaceMatch{Name: val, Not: not}
		case "-o":
			r.Out = redirect.IfaceMatch{Name: val, Not: not}
		case "-p":
			r.Proto = val
		case "-m":
			module = val
		case "--dport", "--dports", "--sport", "--sports":
			m := redirect.PortMatch{Not: not}
			for _, p := range strings.Split(val, ",") {
				m.Ports = append(m.Ports, uint16(savedNumber(p)))
			}
			if strings.HasPrefix(flag, "--d") {
				r.DPort = m
			} else {
				r.SPort = m
			}
		case "--ctstate":
			r.CTState = strings.Split(val, ",")
		case "--mark":
			m := redirect.MarkMatch{Set: true, Value: savedNumber(val), Not: not}
			if module == "connmark" {
				r.ConnMark = m
			} else {
				r.Mark = m
			}
		case "--uid-owner", "--gid-owner":
			r.Owners = append(r.Owners, redirect.OwnerMatch{GID: flag == "--gid-owner", ID: savedNumber(val), Not: not})
		default:
			return false
		}
	}
	return true
}

// savedNumber reads a decimal or 0x-prefixed number, without its /mask; 0 when there is none.
func savedNumber(s string) uint32 {
	s, _, _ = strings.Cut(s, "/")
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
}

// OwnedState extracts our part of parsed iptables-save output.
func OwnedState(tables map[string]*SavedTable) State {
	s := make(State)
	for name, t := range tables {
		ts := &TableState{Owned: map[string][]string{}, Builtin: map[string][]string{}}
		for _, c := range t.Chains {
			if redirect.IsOwned(c) {
				ts.Owned[c] = append([]string{}, t.Rules[c]...)
			}
		}
		has := len(ts.Owned) > 0
		for _, c := range t.Chains {
			if !redirect.IsBuiltin(c) {
				continue
			}
			for i, spec := range t.Rules[c] {
				if isOurs(name, c, spec, has) {
					ts.Builtin[c] = append(ts.Builtin[c], spec)
					if ts.Positions == nil {
						ts.Positions = map[string][]int{}
					}
					ts.Positions[c] = append(ts.Positions[c], i+1)
				}
			}
		}
		if len(ts.Owned) > 0 || len(ts.Builtin) > 0 {
			s[name] = ts
		}
	}
	return s
}

// PlanState is the State the plan fp installs.
func PlanState(fp *redirect.FamilyPlan) State {
	s := make(State)
	for _, t := range fp.Tables {
		ts := &TableState{Owned: map[string][]string{}, Builtin: map[string][]string{}}
		for _, c := range t.Chains {
			specs := make([]string, 0, len(c.Rules))
			for i := range c.Rules {
				specs = append(specs, RuleSpec(&c.Rules[i], fp.Family))
			}
			if c.Builtin {
				ts.Builtin[c.Name] = specs
			} else {
				ts.Owned[c.Name] = specs
			}
		}
		s[t.Name] = ts
	}
	return s
}

// Diff lists how have differs from want, one line per difference; none when they are equal.
func Diff(have, want State) []string {
	var out []string
	for _, table := range sorted.Keys(have, want) {
		h, w := have[table], want[table]
		if h == nil {
			h = &TableState{}
		}
		if w == nil {
			w = &TableState{}
		}
		for _, chain := range sorted.Keys(h.Owned, w.Owned) {
			hr, hok := h.Owned[chain]
			wr, wok := w.Owned[chain]
			switch {
			case !hok:
				out = append(out, fmt.Sprintf("%s: chain %s is missing", table, chain))
			case !wok:
				out = append(out, fmt.Sprintf("%s: chain %s is not part of this configuration", table, chain))
			default:
				out = append(out, diffRules(table+"/"+chain, hr, wr)...)
			}
		}
		for _, chain := range sorted.Keys(h.Builtin, w.Builtin) {
			out = append(out, diffRules(table+"/"+chain, h.Builtin[chain], w.Builtin[chain])...)
		}
	}
	return out
}

func diffRules(where string, have, want []string) []string {
	var out []string
	for i := 0; i < max(len(have), len(want)); i++ {
		switch {
		case i >= len(have):
			out = append(out, fmt.Sprintf("%s: rule %d is missing: %s", where, i+1, want[i]))
		case i >= len(want):
			out = append(out, fmt.Sprintf("%s: rule %d is not part of this configuration: %s", where, i+1, have[i]))
		case have[i] != want[i]:
			out = append(out, fmt.Sprintf("%s: rule %d is %q, want %q", where, i+1, have[i], want[i]))
		}
	}
	return out
}

// RenderReplace returns restore input that, in one transaction per table, removes everything of ours in
// have and installs fp (when fp is nil: only removes, which is cleanup). Our chains are flushed by
// declaring them, our rules in built-in chains deleted one by one (by number when have was read from
// the namespace), chains not in fp deleted.
func RenderReplace(have State, fp *redirect.FamilyPlan, opts RenderOptions) []byte {
	var b bytes.Buffer
	planned := map[string]*redirect.Table{}
	if fp != nil {
		for i := range fp.Tables {
			planned[fp.Tables[i].Name] = &fp.Tables[i]
		}
	}
	names := make([]string, 0, len(have)+len(planned))
	for _, t := range redirect.Tables {
		if have[t] != nil || planned[t] != nil {
			names = append(names, t)
		}
	}
	for t := range have {
		if !slices.Contains(names, t) {
			names = append(names, t)
		}
	}
	for _, table := range names {
		h, p := have[table], planned[table]
		if h == nil {
			h = &TableState{}
		}
		fmt.Fprintf(&b, "*%s\n", table)
		declared := map[string]bool{}
		for _, chain := range sorted.Keys(h.Owned) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", chain)
			declared[chain] = true
		}
		if p != nil {
			for _, c := range p.Chains {
				if !c.Builtin && !declared[c.Name] {
					fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
				}
			}
		}
		for _, chain := range sorted.Keys(h.Builtin) {
			specs, pos := h.Builtin[chain], h.Positions[chain]
			if len(pos) != len(specs) {
				for _, spec := range specs {
					fmt.Fprintf(&b, "-D %s %s\n", chain, spec)
				}
				continue
			}
			// By number, last first, so that each deletion leaves the earlier positions valid.
			for i := len(pos) - 1; i >= 0; i-- {
				fmt.Fprintf(&b, "-D %s %d\n", chain, pos[i])
			}
		}
		for _, chain := range sorted.Keys(h.Owned) {
			if p == nil || p.Chain(chain) == nil {
				fmt.Fprintf(&b, "-X %s\n", chain)
			}
		}
		if p != nil {
			writeRules(&b, fp.Family, p, opts)
		}
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// onlyOurs reports whether the tables named hold nothing but ours: every chain is either one of ours or a
// built-in chain with policy ACCEPT whose rules are all ours. Such tables can be rebuilt whole, from the
// plan alone, without losing anything.
func onlyOurs(tables map[string]*SavedTable, names []string) bool {
	for _, name := range names {
		t := tables[name]
		if t == nil {
			continue
		}
		has := slices.ContainsFunc(t.Chains, redirect.IsOwned)
		for _, c := range t.Chains {
			switch {
			case redirect.IsOwned(c):
			case redirect.IsBuiltin(c) && t.Policies[c] == "ACCEPT":
				for _, spec := range t.Rules[c] {
					if !isOurs(name, c, spec, has) {
						return false
					}
				}
			default:
				return false
			}
		}
	}
	return true
}
