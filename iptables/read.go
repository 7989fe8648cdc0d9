package iptables

// This file holds what the in-process readers (read_linux.go) fill, on every platform: apply.go
// reads through them.

// kernelTables is a family's rules as read from the kernel: the tables as ParseSave returns them from
// iptables-save output, and the counters of every rule, by table and chain, in order.
type kernelTables struct {
	tables map[string]*SavedTable
	counts map[string]map[string][]count
	// handles (nft only) holds the kernel's handle of every rule, by table and chain, in order, and
	// bases the built-in chains that exist as base chains: what a splice deletes and creates.
	handles map[string]map[string][]uint64
	bases   map[string]map[string]bool
}

func newKernelTables() *kernelTables {
	return &kernelTables{tables: map[string]*SavedTable{}, counts: map[string]map[string][]count{}}
}

// table returns the table named name, adding it.
func (k *kernelTables) table(name string) *SavedTable {
	t := k.tables[name]
	if t == nil {
		t = &SavedTable{Name: name, Policies: map[string]string{}, Rules: map[string][]string{}}
		k.tables[name] = t
		k.counts[name] = map[string][]count{}
	}
	return t
}

// chain adds a chain to table with its policy ("-" for user chains).
func (k *kernelTables) chain(table, name, policy string) {
	t := k.table(table)
	t.Chains = append(t.Chains, name)
	t.Policies[name] = policy
}

// rule appends a rule to a chain of table.
func (k *kernelTables) rule(table, chain, spec string, c count) {
	t := k.table(table)
	t.Rules[chain] = append(t.Rules[chain], spec)
	k.counts[table][chain] = append(k.counts[table][chain], c)
}
