package nftables

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/shuntmesh/shunt/internal/sorted"
)

// Options control Apply, Check and Cleanup.
type Options struct {
	// NetNS is the path of the network namespace to program; empty means the current one.
	NetNS string
	// Reconcile replaces differing tables of ours, in the same transaction that adds the new ones,
	// instead of failing.
	Reconcile bool
	// Force replaces the tables even when they hold the plan already.
	Force bool
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// ErrDrift is returned (wrapped) when tables of ours differ from the plan and Reconcile is off.
var ErrDrift = errors.New("installed nftables rules differ from this configuration")

// State is what shunt's tables hold, keyed by table name, in a form that compares equal exactly when
// the kernel holds the same chains, hooks and rule expressions (counter values aside).
type State map[string]*TableState

// TableState is one table: its chains by name.
type TableState struct {
	Chains map[string]*ChainState
}

// ChainState is one chain: its hook ("" for a regular chain) and its rules in order.
type ChainState struct {
	Hook  string
	Rules []RuleState
}

// RuleState is one rule: its expressions in canonical form, and its nft text when it comes from a plan.
type RuleState struct {
	Text  string
	Exprs string
}

func (r RuleState) String() string {
	if r.Text != "" {
		return r.Text
	}
	return "[" + Pretty(r.Exprs) + "]"
}

// Empty reports whether s holds no table of ours.
func (s State) Empty() bool { return len(s) == 0 }

// Diff returns the differences between have and want, one line each: tables, chains and hooks
// missing or extra, and the rules of every chain that differ.
func Diff(have, want State) []string {
	var out []string
	for _, tn := range sorted.Keys(have, want) {
		h, w := have[tn], want[tn]
		switch {
		case h == nil:
			out = append(out, "table inet "+tn+" is missing")
			continue
		case w == nil:
			out = append(out, "table inet "+tn+" is not in this configuration")
			continue
		}
		for _, cn := range sorted.Keys(h.Chains, w.Chains) {
			hc, wc := h.Chains[cn], w.Chains[cn]
			where := tn + " " + cn
			switch {
			case hc == nil:
				out = append(out, "chain "+where+" is missing")
				continue
			case wc == nil:
				out = append(out, "chain "+where+" is not in this configuration")
				continue
			case hc.Hook != wc.Hook:
				out = append(out, fmt.Sprintf("chain %s: hook %q, want %q", where, hc.Hook, wc.Hook))
			}
			out = append(out, diffRules(where, hc.Rules, wc.Rules)...)
		}
	}
	return out
}

// diffRules names the rules of a chain that differ; when only the order differs it says so.
func diffRules(where string, have, want []RuleState) []string {
	eq := func(a, b RuleState) bool { return a.Exprs == b.Exprs }
	if slices.EqualFunc(have, want, eq) {
		return nil
	}
	var out []string
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h RuleState) bool { return eq(h, w) }) {
			out = append(out, fmt.Sprintf("%s: missing rule %s", where, w))
		}
	}
	for _, h := range have {
		if !slices.ContainsFunc(want, func(w RuleState) bool { return eq(h, w) }) {
			out = append(out, fmt.Sprintf("%s: unexpected rule %s", where, h))
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("%s: rules in another order or repeated (%d installed, %d wanted)", where, len(have), len(want)))
	}
	return out
}

// hookString is the canonical form of a base chain's hook.
func hookString(typ, hook string, prio int, policy string) string {
	return strings.Join([]string{"type", typ, "hook", hook, "priority", fmt.Sprint(prio), "policy", policy}, " ")
}
