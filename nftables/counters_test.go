package nftables

import (
	"testing"

	"github.com/shuntmesh/shunt/redirect"
)

// TestCounterNamesArePlanNames: a counter's nftables table and chain name the engine's table and
// chain they were made from.
func TestCounterNamesArePlanNames(t *testing.T) {
	for _, table := range redirect.Tables {
		if got := PlanTable(TableName(table)); got != table {
			t.Errorf("PlanTable(%q) = %q, want %q", TableName(table), got, table)
		}
	}
	for _, chain := range append(append([]string{}, redirect.OwnedChains...), redirect.BuiltinChains...) {
		if got := PlanChain(ChainName(chain)); got != chain {
			t.Errorf("PlanChain(%q) = %q, want %q", ChainName(chain), got, chain)
		}
	}
}
