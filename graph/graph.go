// Package graph draws a redirect.Plan: per family plan, the hooks that enter it, each chain as a box
// listing its rules in order, the jumps between chains as edges and the verdicts that end a packet's
// way (REDIRECT to a listener, TPROXY, DROP, ACCEPT) as terminal nodes, every rule and edge coloured by
// the flow (redirect.Flow) it serves. A traced path can be emphasised and the kernel's counters shown
// beside the rules. It writes Graphviz DOT, Mermaid flowchart text and SVG, which it lays out itself:
// no Graphviz needed.
//
// The package is pure: it performs no I/O but writing to the writer it is given, and the same plan
// and options give the same bytes.
package graph

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Options are what is drawn besides the plan.
type Options struct {
	// Title heads the drawing; empty for none.
	Title string
	// Highlight names the rules of a traced path. They are drawn emphasised, and so are the edges
	// between them: a jump of a highlighted rule into a chain that holds one, a highlighted rule's
	// verdict, and the hook's edge into a built-in chain that holds one. Each must name a rule of the plan.
	Highlight []redirect.RuleRef
	// Counters are shown beside the rules they name, when given. Each must name a rule of the plan.
	Counters map[redirect.RuleRef]redirect.Counters
}

// Format is an output format.
type Format string

// Formats.
const (
	FormatSVG     Format = "svg"     // SVG, laid out by this package
	FormatDOT     Format = "dot"     // Graphviz DOT, for dot -Tsvg
	FormatMermaid Format = "mermaid" // a Mermaid flowchart, as GitHub renders in ```mermaid blocks
)

// Formats lists the formats, the default first.
var Formats = []Format{FormatSVG, FormatDOT, FormatMermaid}

// ErrFormat is wrapped by ParseFormat's error for an unknown format.
var ErrFormat = errors.New("unknown format")

// ParseFormat returns the Format named s.
func ParseFormat(s string) (Format, error) {
	f := Format(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Formats, f) {
		return f, nil
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("%w %q: want %s", ErrFormat, s, strings.Join(names, ", "))
}

// Render writes plan, drawn with opts, to w in format f.
func Render(w io.Writer, f Format, plan *redirect.Plan, opts Options) error {
	g, err := New(plan, opts)
	if err != nil {
		return err
	}
	var out []byte
	switch f {
	case FormatSVG:
		out = g.SVG()
	case FormatDOT:
		out = g.DOT()
	case FormatMermaid:
		out = g.Mermaid()
	default:
		_, err := ParseFormat(string(f))
		return err
	}
	_, err = w.Write(out)
	return err
}

// Graph is a plan's drawing: its nodes and edges, before they are written in a format.
type Graph struct {
	title     string
	sections  []section
	flows     []redirect.Flow // the flows the plan's rules serve, in order
	counters  bool
	highlight bool
	ordered   bool // a hook enters several tables' chains: its edges are numbered
}

// section is the drawing of one family plan.
type section struct {
	family redirect.Family
	title  string
	id     string // a short identifier: ip4, ip6, inet
	nodes  []*node
	edges  []edge
}

type nodeKind int

const (
	kindHook    nodeKind = iota // a netfilter hook, where packets enter the built-in chains
	kindChain                   // a chain and its rules
	kindVerdict                 // where a rule sends a packet for good
)

type node struct {
	id      string // unique in the drawing
	kind    nodeKind
	table   string // chains
	title   string // hook or chain name, verdict
	sub     string // what a hook sees, a verdict's listener
	builtin bool
	flow    redirect.Flow // verdicts: the flow of the first rule that ends there
	rows    []row
	// highlight: a chain holds a highlighted rule, a verdict ends one, a hook enters a chain holding one.
	highlight bool
	orphan    bool // a chain of ours that no rule jumps to
	col       int  // layout column: 0 hooks, 1 built-in chains, then by jump depth; verdicts last
}

// tableNote is what a chain's header says besides its name: its table, and whether nothing jumps to it.
func (n *node) tableNote() string {
	if n.orphan {
		return n.table + ", nothing jumps here"
	}
	return n.table
}

type row struct {
	ref       redirect.RuleRef
	text      string // match → target
	flow      redirect.Flow
	why       string
	counters  *redirect.Counters
	highlight bool
}

type edge struct {
	from, to  int // node indexes in the section
	fromRow   int // the rule whose target the edge is; -1 for a hook's edge
	flow      redirect.Flow
	label     string
	highlight bool
}

// hooks in the order packets meet them, with what each sees.
var hooks = []struct{ name, sub string }{
	{"PREROUTING", "packets arriving"},
	{"INPUT", "delivered locally"},
	{"FORWARD", "routed through"},
	{"OUTPUT", "locally generated"},
	{"POSTROUTING", "packets leaving"},
}

// tablePriority orders the tables at a hook as the kernel runs them.
var tablePriority = []string{redirect.TableRaw, redirect.TableMangle, redirect.TableNAT}

// New returns the drawing of plan with opts. It fails when a highlighted rule or a counter names no
// rule of plan.
func New(plan *redirect.Plan, opts Options) (*Graph, error) {
	var errs []error
	hl := map[redirect.RuleRef]bool{}
	for _, ref := range opts.Highlight {
		if plan.Rule(ref) == nil {
			errs = append(errs, fmt.Errorf("highlight %s: no such rule in the plan", ref))
		}
		hl[ref] = true
	}
	refs := make([]redirect.RuleRef, 0, len(opts.Counters))
	for ref := range opts.Counters {
		refs = append(refs, ref)
	}
	slices.SortFunc(refs, compareRefs)
	for _, ref := range refs {
		if plan.Rule(ref) == nil {
			errs = append(errs, fmt.Errorf("counters of %s: no such rule in the plan", ref))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g := &Graph{title: opts.Title, counters: len(opts.Counters) > 0, highlight: len(opts.Highlight) > 0}
	used := map[redirect.Flow]bool{}
	for i := range plan.Families {
		s := newSection(&plan.Families[i], hl, opts.Counters)
		for _, e := range s.edges {
			g.ordered = g.ordered || e.label != ""
		}
		for _, n := range s.nodes {
			for _, r := range n.rows {
				used[r.flow] = true
			}
		}
		g.sections = append(g.sections, s)
	}
	for _, f := range allFlows() {
		if used[f] {
			g.flows = append(g.flows, f)
		}
	}
	return g, nil
}

// allFlows lists the flows in order: F1…F9, then any other the plan names, sorted.
func allFlows() []redirect.Flow {
	var fs []redirect.Flow
	for f := range redirect.FlowTitle {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	return fs
}

func compareRefs(a, b redirect.RuleRef) int {
	switch {
	case a.Family != b.Family:
		return int(a.Family) - int(b.Family)
	case a.Table != b.Table:
		return strings.Compare(a.Table, b.Table)
	case a.Chain != b.Chain:
		return strings.Compare(a.Chain, b.Chain)
	}
	return a.Index - b.Index
}

func familyID(f redirect.Family) string {
	switch f {
	case redirect.IPv4:
		return "ip4"
	case redirect.IPv6:
		return "ip6"
	case redirect.Inet:
		return "inet"
	}
	return "f" + strconv.Itoa(int(f))
}

func sectionTitle(fp *redirect.FamilyPlan) string {
	switch fp.Family {
	case redirect.IPv4:
		return "IPv4 — iptables"
	case redirect.IPv6:
		return "IPv6 — ip6tables"
	case redirect.Inet:
		covers := make([]string, len(fp.Covers))
		for i, f := range fp.Covers {
			covers[i] = f.String()
		}
		return "inet — native nftables (" + strings.Join(covers, " + ") + ")"
	}
	return fp.Family.String()
}

func newSection(fp *redirect.FamilyPlan, hl map[redirect.RuleRef]bool, counters map[redirect.RuleRef]redirect.Counters) section {
	s := section{family: fp.Family, title: sectionTitle(fp), id: familyID(fp.Family)}
	index := map[string]int{} // node id → index
	add := func(n *node) int {
		if i, ok := index[n.id]; ok {
			return i
		}
		index[n.id] = len(s.nodes)
		s.nodes = append(s.nodes, n)
		return len(s.nodes) - 1
	}
	chainID := func(table, chain string) string { return s.id + "/" + table + "/" + chain }

	// Hooks, each followed by its built-in chains in the order the kernel runs them.
	for _, h := range hooks {
		var builtins []*redirect.Chain
		var tables []string
		for _, tn := range tablePriority {
			if t := fp.Table(tn); t != nil {
				if c := t.Chain(h.name); c != nil {
					builtins = append(builtins, c)
					tables = append(tables, tn)
				}
			}
		}
		if len(builtins) == 0 {
			continue
		}
		hi := add(&node{id: s.id + "/hook/" + h.name, kind: kindHook, title: h.name, sub: h.sub})
		for k, c := range builtins {
			ci := add(&node{id: chainID(tables[k], c.Name), kind: kindChain, table: tables[k], title: c.Name, builtin: true})
			e := edge{from: hi, to: ci, fromRow: -1}
			if len(builtins) > 1 {
				e.label = strconv.Itoa(k + 1) // the order the tables see a packet in
			}
			s.edges = append(s.edges, e)
		}
	}
	// Every chain, with its rules; user chains in plan order after the built-in ones.
	for ti := range fp.Tables {
		t := &fp.Tables[ti]
		for ci := range t.Chains {
			c := &t.Chains[ci]
			n := s.nodes[add(&node{id: chainID(t.Name, c.Name), kind: kindChain, table: t.Name, title: c.Name, builtin: c.Builtin})]
			for ri := range c.Rules {
				r := &c.Rules[ri]
				ref := redirect.RuleRef{Family: fp.Family, Table: t.Name, Chain: c.Name, Index: ri}
				rw := row{ref: ref, text: RuleText(r), flow: r.Flow, why: r.Why, highlight: hl[ref]}
				if cs, ok := counters[ref]; ok {
					rw.counters = &cs
				}
				n.rows = append(n.rows, rw)
				n.highlight = n.highlight || rw.highlight
			}
		}
	}
	// Jumps and verdicts.
	for ti := range fp.Tables {
		t := &fp.Tables[ti]
		for ci := range t.Chains {
			c := &t.Chains[ci]
			from := index[chainID(t.Name, c.Name)]
			for ri := range c.Rules {
				r := &c.Rules[ri]
				var to int
				switch r.Target.Kind {
				case redirect.TargetJump:
					to = add(&node{id: chainID(t.Name, r.Target.Chain), kind: kindChain, table: t.Name, title: r.Target.Chain,
						builtin: redirect.IsBuiltin(r.Target.Chain)})
				case redirect.TargetRedirect, redirect.TargetTProxy, redirect.TargetDrop, redirect.TargetAccept:
					title, sub := verdictText(r)
					to = add(&node{id: s.id + "/verdict/" + title, kind: kindVerdict, title: title, sub: sub, flow: r.Flow})
				default:
					continue
				}
				s.edges = append(s.edges, edge{from: from, to: to, fromRow: ri, flow: r.Flow})
			}
		}
	}
	// Emphasis: rows are marked; edges and verdicts follow them.
	for i := range s.edges {
		e := &s.edges[i]
		to := s.nodes[e.to]
		switch {
		case e.fromRow < 0:
			e.highlight = to.highlight
		case s.nodes[e.from].rows[e.fromRow].highlight:
			e.highlight = to.kind == kindVerdict || to.highlight
		}
	}
	entered := map[int]bool{}
	for _, e := range s.edges {
		entered[e.to] = true
	}
	for i, n := range s.nodes {
		n.orphan = n.kind == kindChain && !n.builtin && !entered[i]
	}
	for _, e := range s.edges {
		if e.highlight {
			if n := s.nodes[e.to]; n.kind == kindVerdict {
				n.highlight = true
			}
			if n := s.nodes[e.from]; n.kind == kindHook {
				n.highlight = true
			}
		}
	}
	s.layer()
	return s
}

// layer assigns columns: hooks 0, built-in chains 1, every other chain one past the deepest chain
// that jumps to it (netfilter refuses jump loops; a loop in a hand-made plan is cut at the number of
// chains), verdicts after all chains.
func (s *section) layer() {
	for _, n := range s.nodes {
		switch n.kind {
		case kindHook:
			n.col = 0
		default:
			n.col = 1
		}
	}
	for range len(s.nodes) {
		changed := false
		for _, e := range s.edges {
			from, to := s.nodes[e.from], s.nodes[e.to]
			if e.fromRow >= 0 && to.kind == kindChain && !to.builtin && to.col < from.col+1 {
				to.col = from.col + 1
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	last := 1
	for _, n := range s.nodes {
		if n.kind == kindChain {
			last = max(last, n.col)
		}
	}
	for _, n := range s.nodes {
		if n.kind == kindVerdict {
			n.col = last + 1
		}
	}
}

// verdictText is the title of the verdict node of r, and what it is.
func verdictText(r *redirect.Rule) (title, sub string) {
	switch r.Target.Kind {
	case redirect.TargetRedirect:
		return "REDIRECT :" + strconv.Itoa(int(r.Target.Port)), listener(r.Flow)
	case redirect.TargetTProxy:
		return "TPROXY :" + strconv.Itoa(int(r.Target.Port)) + " mark " + strconv.FormatUint(uint64(r.Target.Mark), 10), listener(r.Flow)
	case redirect.TargetDrop:
		return "DROP", "dropped"
	}
	return "ACCEPT", "accepted"
}

// listener names the proxy's listener the rules of flow f are sent to.
func listener(f redirect.Flow) string {
	switch f {
	case redirect.FlowOutbound:
		return "outbound listener"
	case redirect.FlowDNS:
		return "DNS proxy"
	case redirect.FlowInbound, redirect.FlowHairpin, redirect.FlowExclusions, redirect.FlowAgentPorts:
		return "inbound listener"
	}
	return "listener"
}
