package backend

import (
	"cmp"
	"context"
	"slices"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/redirect"
)

// iptablesBackend programs per-family plans with one iptables variant.
type iptablesBackend struct {
	opts iptables.Options // Variant is set
}

func (b *iptablesBackend) Name() string { return "iptables-" + string(b.opts.Variant) }

func (b *iptablesBackend) Plan(cfg redirect.Config) (redirect.Plan, error) {
	cfg.NativeNFTables = false
	return redirect.Build(cfg)
}

func (b *iptablesBackend) Apply(ctx context.Context, plan *redirect.Plan, mode Mode) error {
	opts := b.opts
	opts.Reconcile, opts.Force = mode.Reconcile, mode.Force
	return drift(iptables.Apply(ctx, plan, opts))
}

func (b *iptablesBackend) Check(ctx context.Context, plan *redirect.Plan) error {
	return drift(iptables.Check(ctx, plan, b.opts))
}

func (b *iptablesBackend) Read(ctx context.Context) ([]Chain, error) {
	found, err := iptables.Find(ctx, b.opts)
	if err != nil {
		return nil, err
	}
	var out []Chain
	for _, in := range found {
		for table, ts := range in.State {
			for name, rules := range ts.Owned {
				out = append(out, Chain{Family: in.Family, Table: table, Chain: name, Rules: rules})
			}
			for name, rules := range ts.Builtin {
				out = append(out, Chain{Family: in.Family, Table: table, Chain: name, Builtin: true, Rules: rules})
			}
		}
	}
	sortChains(out)
	return out, nil
}

func (b *iptablesBackend) find(ctx context.Context) ([]string, error) {
	found, err := iptables.Find(ctx, b.opts)
	lines := make([]string, len(found))
	for i, in := range found {
		lines[i] = in.String()
	}
	return lines, err
}

func (b *iptablesBackend) Remove(ctx context.Context) ([]string, error) {
	removed, err := iptables.Remove(ctx, b.opts)
	lines := make([]string, len(removed))
	for i, r := range removed {
		lines[i] = "removed " + r.String()
	}
	return lines, err
}

// sortChains orders chains by family, table and name, built-in chains first.
func sortChains(cs []Chain) {
	slices.SortFunc(cs, func(a, b Chain) int {
		if c := cmp.Compare(a.Family, b.Family); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Table, b.Table); c != 0 {
			return c
		}
		if a.Builtin != b.Builtin {
			if a.Builtin {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Chain, b.Chain)
	})
}
