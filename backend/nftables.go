package backend

import (
	"context"

	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// nftBackend programs one inet plan as shunt's native nftables tables.
type nftBackend struct {
	opts nftables.Options
}

func (b *nftBackend) Name() string { return "nftables" }

func (b *nftBackend) Plan(cfg redirect.Config) (redirect.Plan, error) {
	cfg.NativeNFTables = true
	return redirect.Build(cfg)
}

func (b *nftBackend) Apply(ctx context.Context, plan *redirect.Plan, mode Mode) error {
	opts := b.opts
	opts.Reconcile, opts.Force = mode.Reconcile, mode.Force
	return drift(nftables.Apply(ctx, plan, opts))
}

func (b *nftBackend) Check(ctx context.Context, plan *redirect.Plan) error {
	return drift(nftables.Check(ctx, plan, b.opts))
}

func (b *nftBackend) Read(context.Context) ([]Chain, error) {
	s, err := nftables.Read(b.opts)
	if err != nil {
		return nil, err
	}
	var out []Chain
	for table, ts := range s {
		for name, cs := range ts.Chains {
			c := Chain{Family: redirect.Inet, Table: nftables.PlanTable(table), Chain: nftables.PlanChain(name), Builtin: cs.Hook != ""}
			for _, r := range cs.Rules {
				c.Rules = append(c.Rules, r.String())
			}
			out = append(out, c)
		}
	}
	sortChains(out)
	return out, nil
}

func (b *nftBackend) find(context.Context) ([]string, error) {
	tables, err := nftables.Find(b.opts)
	return tableLines("", tables), err
}

func (b *nftBackend) Remove(context.Context) ([]string, error) {
	tables, err := nftables.Remove(b.opts)
	return tableLines("removed ", tables), err
}

func tableLines(prefix string, tables []string) []string {
	lines := make([]string, len(tables))
	for i, t := range tables {
		lines[i] = prefix + "nftables table inet " + t
	}
	return lines
}
