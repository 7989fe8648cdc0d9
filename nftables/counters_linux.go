package nftables

import (
	"fmt"
	"slices"

	gonft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/shuntmesh/shunt/internal/netns"
)

// Counters returns the packet and byte counters of every rule of shunt's tables in the namespace,
// tables in the order of Tables, chains in the kernel's (the plan's) order, rules in chain order. A
// rule without a counter expression, which shunt never writes, counts zero. It changes nothing.
func Counters(opts Options) ([]Counter, error) {
	var out []Counter
	err := netns.Do(opts.NetNS, func() error {
		names, err := ourTables()
		if err != nil || len(names) == 0 {
			return err
		}
		conn, err := dial()
		if err != nil {
			return err
		}
		defer conn.CloseLasting()
		chains, err := conn.ListChainsOfTableFamily(gonft.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("list nftables chains: %w", err)
		}
		rules, err := dumpRules()
		if err != nil {
			return err
		}
		for _, table := range Tables {
			if !slices.Contains(names, table) {
				continue
			}
			sets, err := setPorts(conn, &gonft.Table{Name: table, Family: gonft.TableFamilyINet})
			if err != nil {
				return err
			}
			lookup := func(l *expr.Lookup) string { return sets[l.SetName] }
			for _, c := range chains {
				if c.Table == nil || c.Table.Name != table {
					continue
				}
				for i, r := range rules[table+" "+c.Name] {
					packets, bytes, err := r.counts()
					if err != nil {
						return fmt.Errorf("%s %s rule %d: %w", table, c.Name, i, err)
					}
					out = append(out, Counter{Table: PlanTable(table), Chain: PlanChain(c.Name), NFTTable: table, NFTChain: c.Name,
						Index: i, Rule: r.describe(lookup), Packets: packets, Bytes: bytes})
				}
			}
		}
		return nil
	})
	return out, err
}
