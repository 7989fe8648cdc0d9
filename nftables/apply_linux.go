package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	gonft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/redirect"
)

// dial opens one netlink socket for every request of a call.
func dial() (*gonft.Conn, error) {
	c, err := gonft.New(gonft.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return c, nil
}

// Apply programs plan (an inet plan): shunt's tables in one netlink transaction, then the TPROXY
// routes and the IPv6 passthrough address. A second Apply of the same plan changes nothing. When tables
// of ours differ from the plan, Apply fails naming the differences, unless opts.Reconcile: the old
// tables are then deleted in the transaction that adds the new ones, so capture never stops. When the
// routes fail, tables this call created are deleted again.
func Apply(ctx context.Context, plan *redirect.Plan, opts Options) error {
	want, err := compilePlan(plan)
	if err != nil {
		return err
	}
	log := opts.logger()
	return netns.Do(opts.NetNS, func() error {
		have, present, err := readState()
		if err != nil {
			return err
		}
		if !have.Empty() {
			diff := Diff(have, wantState(want))
			switch {
			case len(diff) == 0 && !opts.Force:
				log.Info("nftables rules already in place")
				return podroute.Sync(plan)
			case len(diff) > 0 && !opts.Reconcile && !opts.Force:
				return fmt.Errorf("%w (run with --reconcile to replace them):\n  %s", ErrDrift, strings.Join(diff, "\n  "))
			}
			log.Info("replacing nftables rules", "differences", len(diff))
		}
		if err := program(want, present); err != nil {
			return err
		}
		log.Info("nftables rules programmed", "tables", len(want), "replaced", len(present))
		if err := podroute.Sync(plan); err != nil {
			if have.Empty() {
				if derr := deleteTables(tableNames(want)); derr != nil {
					err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
				}
			}
			return err
		}
		return nil
	})
}

// program deletes the tables in drop and adds want, in one transaction: all of it happens or nothing.
func program(want []compiledTable, drop []string) error {
	err := commit(func(conn *gonft.Conn) error {
		for _, name := range drop {
			conn.DelTable(&gonft.Table{Name: name, Family: gonft.TableFamilyINet})
		}
		for i := range want {
			t := conn.AddTable(&gonft.Table{Name: want[i].name, Family: gonft.TableFamilyINet})
			chains := make([]*gonft.Chain, len(want[i].chains))
			for j := range want[i].chains {
				chains[j] = conn.AddChain(chainObject(t, &want[i].chains[j]))
			}
			for j, c := range want[i].chains {
				for _, r := range c.rules {
					for _, s := range r.sets {
						set := &gonft.Set{Table: t, Anonymous: true, Constant: true, KeyType: gonft.TypeInetService, Size: uint32(len(s.ports))}
						elems := make([]gonft.SetElement, len(s.ports))
						for k, p := range s.ports {
							elems[k] = gonft.SetElement{Key: binary.BigEndian.AppendUint16(nil, p)}
						}
						if err := conn.AddSet(set, elems); err != nil {
							return fmt.Errorf("%s/%s: set %v: %w", t.Name, c.name, s.ports, err)
						}
						s.lookup.SetName, s.lookup.SetID = set.Name, set.ID
					}
					conn.AddRule(&gonft.Rule{Table: t, Chain: chains[j], Exprs: r.exprs})
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("program nftables tables %s: %w", strings.Join(tableNames(want), ", "), err)
	}
	return nil
}

// commit commits the transaction queue builds.
func commit(queue func(*gonft.Conn) error) error {
	msgs, err := batch(queue)
	if err != nil {
		return err
	}
	return nfnl.Transact(msgs)
}

// batch returns the messages of the transaction queue builds on a google/nftables Conn. The library
// encodes the tables, chains, sets and rules; nfnl.Transact then commits them with one send and one
// acknowledgement, where Conn.Flush would wait for an acknowledgement of every message in turn.
func batch(queue func(*gonft.Conn) error) ([]mdnetlink.Message, error) {
	var msgs []mdnetlink.Message
	ack := []mdnetlink.Message{{Header: mdnetlink.Header{Type: mdnetlink.Error}, Data: make([]byte, 4)}}
	conn, err := gonft.New(gonft.WithTestDial(func(reqs []mdnetlink.Message) ([]mdnetlink.Message, error) {
		if reqs == nil {
			return ack, nil // Flush waits for one acknowledgement per message
		}
		msgs = append(msgs, reqs...)
		return nil, nil
	}))
	if err != nil {
		return nil, err
	}
	if err := queue(conn); err != nil {
		return nil, err
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("encode nftables batch: %w", err)
	}
	return msgs, nil
}

// deleteTables deletes the named tables of ours in one transaction.
func deleteTables(names []string) error {
	if len(names) == 0 {
		return nil
	}
	err := commit(func(conn *gonft.Conn) error {
		for _, name := range names {
			conn.DelTable(&gonft.Table{Name: name, Family: gonft.TableFamilyINet})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete nftables tables %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

func tableNames(ts []compiledTable) []string {
	names := make([]string, len(ts))
	for i := range ts {
		names[i] = ts[i].name
	}
	return names
}

// Check compares shunt's tables in the namespace with plan and returns an error wrapping ErrDrift
// that names every difference. It changes nothing.
func Check(ctx context.Context, plan *redirect.Plan, opts Options) error {
	want, err := compilePlan(plan)
	if err != nil {
		return err
	}
	return netns.Do(opts.NetNS, func() error {
		have, _, err := readState()
		if err != nil {
			return err
		}
		if diff := Diff(have, wantState(want)); len(diff) > 0 {
			return fmt.Errorf("%w:\n  %s", ErrDrift, strings.Join(diff, "\n  "))
		}
		return nil
	})
}

// Read returns what shunt's tables in the namespace hold.
func Read(opts Options) (State, error) {
	var s State
	err := netns.Do(opts.NetNS, func() error {
		var err error
		s, _, err = readState()
		return err
	})
	return s, err
}

// Cleanup deletes shunt's tables, and only them, in one transaction, then the TPROXY routes and the
// IPv6 passthrough address shunt added. Every other table, route and address stays as it is.
func Cleanup(ctx context.Context, opts Options) error {
	_, err := Remove(opts)
	return errors.Join(err, netns.Do(opts.NetNS, func() error {
		_, err := podroute.Cleanup()
		return err
	}))
}

// Find returns the names of shunt's tables in the namespace, changing nothing.
func Find(opts Options) ([]string, error) {
	var names []string
	err := netns.Do(opts.NetNS, func() error {
		var err error
		names, err = ourTables()
		return err
	})
	return names, err
}

// Remove deletes shunt's tables, and only them, in one transaction, and returns their names. Routes
// and addresses stay: see Cleanup.
func Remove(opts Options) ([]string, error) {
	var names []string
	err := netns.Do(opts.NetNS, func() error {
		var err error
		if names, err = ourTables(); err != nil {
			return err
		}
		if err := deleteTables(names); err != nil {
			names = nil
			return err
		}
		if len(names) > 0 {
			opts.logger().Info("nftables tables removed", "tables", strings.Join(names, ","))
		}
		return nil
	})
	return names, err
}

// ourTables lists the inet tables of ours that exist, with one netlink dump. A kernel without
// nftables (no nfnetlink: EPROTONOSUPPORT; no nf_tables subsystem: EINVAL) holds none: a cleanup
// of every backend then goes on with iptables-legacy.
func ourTables() ([]string, error) {
	sock, err := nfnl.Open()
	if errors.Is(err, unix.EPROTONOSUPPORT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer sock.Close()
	msgs, err := sock.DumpTables(unix.NFPROTO_INET)
	if errors.Is(err, unix.EINVAL) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var ours []string
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := mdnetlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list nftables tables: %w", err)
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_TABLE_NAME && slices.Contains(Tables, ad.String()) {
				ours = append(ours, ad.String())
			}
		}
	}
	return ours, nil
}

// readState reads shunt's tables: their chains, hooks, rules and the anonymous sets the rules use. It
// returns the names of the tables too.
func readState() (State, []string, error) {
	names, err := ourTables()
	if err != nil || len(names) == 0 {
		return State{}, nil, err
	}
	conn, err := dial()
	if err != nil {
		return nil, nil, err
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChainsOfTableFamily(gonft.TableFamilyINet)
	if err != nil {
		return nil, nil, fmt.Errorf("list nftables chains: %w", err)
	}
	rules, err := dumpRules()
	if err != nil {
		return nil, nil, err
	}
	s := State{}
	for _, name := range names {
		t := &gonft.Table{Name: name, Family: gonft.TableFamilyINet}
		ts := &TableState{Chains: map[string]*ChainState{}}
		s[t.Name] = ts
		sets, err := setPorts(conn, t)
		if err != nil {
			return nil, nil, err
		}
		for _, c := range chains {
			if c.Table == nil || c.Table.Name != t.Name {
				continue
			}
			cs := &ChainState{}
			if c.Hooknum != nil && c.Priority != nil {
				policy := "accept"
				if c.Policy != nil && *c.Policy == gonft.ChainPolicyDrop {
					policy = "drop"
				}
				cs.Hook = hookString(string(c.Type), hookName(*c.Hooknum), int(*c.Priority), policy)
			}
			for _, r := range rules[t.Name+" "+c.Name] {
				cs.Rules = append(cs.Rules, RuleState{Exprs: r.describe(func(l *expr.Lookup) string { return sets[l.SetName] })})
			}
			ts.Chains[c.Name] = cs
		}
	}
	return s, names, nil
}

// setPorts returns the elements of t's anonymous sets by set name, as describe writes them.
func setPorts(conn *gonft.Conn, t *gonft.Table) (map[string]string, error) {
	sets, err := conn.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets of %s: %w", t.Name, err)
	}
	out := map[string]string{}
	for _, set := range sets {
		elems, err := conn.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("list elements of %s %s: %w", t.Name, set.Name, err)
		}
		keys := make([][]byte, len(elems))
		for i := range elems {
			keys[i] = elems[i].Key
		}
		out[set.Name] = setString(keys)
	}
	return out, nil
}

// setString is the canonical form of a set's keys: sorted, in hex.
func setString(keys [][]byte) string {
	list := make([]string, len(keys))
	for i, k := range keys {
		list[i] = fmt.Sprintf("%x", k)
	}
	slices.Sort(list)
	return "{" + strings.Join(list, ",") + "}"
}

// wantState returns the state the compiled tables would leave.
func wantState(tables []compiledTable) State {
	s := State{}
	for i := range tables {
		ts := &TableState{Chains: map[string]*ChainState{}}
		for _, c := range tables[i].chains {
			cs := &ChainState{}
			if c.base != nil {
				cs.Hook = hookString(c.base.Type, c.base.Hook, c.base.Priority, "accept")
			}
			for _, r := range c.rules {
				// The n-th lookup of a rule uses its n-th set.
				var sets []string
				for _, set := range r.sets {
					keys := make([][]byte, len(set.ports))
					for k, p := range set.ports {
						keys[k] = binary.BigEndian.AppendUint16(nil, p)
					}
					sets = append(sets, setString(keys))
				}
				raw, err := rawExprs(r.exprs)
				if err != nil {
					panic(err) // compile built them: they marshal
				}
				n := 0
				next := func(*expr.Lookup) string {
					n++
					if n > len(sets) {
						return "{?}"
					}
					return sets[n-1]
				}
				cs.Rules = append(cs.Rules, RuleState{Text: r.text, Exprs: raw.describe(next)})
			}
			ts.Chains[c.name] = cs
		}
		s[tables[i].name] = ts
	}
	return s
}

func hookName(h gonft.ChainHook) string {
	for name, ref := range hooks {
		if *ref == h {
			return name
		}
	}
	return "hook" + strconv.Itoa(int(h))
}
