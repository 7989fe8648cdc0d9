package backend

import (
	"context"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

func (b *iptablesBackend) Counters(ctx context.Context) ([]Counter, error) {
	cs, err := iptables.Counters(ctx, b.opts)
	out := make([]Counter, len(cs))
	for i, c := range cs {
		out[i] = Counter(c)
	}
	return out, err
}

func (b *nftBackend) Counters(context.Context) ([]Counter, error) {
	cs, err := nftables.Counters(b.opts)
	out := make([]Counter, len(cs))
	for i, c := range cs {
		out[i] = Counter{Family: redirect.Inet, Table: c.Table, Chain: c.Chain, Index: c.Index, Rule: c.Rule, Packets: c.Packets, Bytes: c.Bytes}
	}
	return out, err
}
