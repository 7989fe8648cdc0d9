// Package backendtest is a fake of the backend seam for tests of its callers (the CNI plugin, the node
// agent, the commands): it keeps the plans "installed" per network namespace in memory, so that a
// caller's logic is tested without root and without a kernel.
package backendtest

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/redirect"
)

// Fake selects fake backends that share its state. The zero value is ready.
type Fake struct {
	mu        sync.Mutex
	installed map[string]*redirect.Plan // by network namespace path
	calls     []Call
	// Errors, by method name ("Select", "Apply", "Check", "Read", "Counters", "Remove"), make the
	// method fail with that error.
	Errors map[string]error
}

// Call is one call of a fake backend's method (or of Select or Cleanup).
type Call struct {
	Method string
	NetNS  string
	Mode   backend.Mode  // of Apply
	Inet   bool          // Select: native nftables
	Scope  backend.Scope // of Cleanup
}

// Select is a backend.Select: native nftables when asked, else iptables-nft (or the forced variant).
func (f *Fake) Select(s backend.Settings) (backend.Backend, backend.Choice, error) {
	if err := f.record(Call{Method: "Select", NetNS: s.NetNS, Inet: s.NativeNFTables}); err != nil {
		return nil, backend.Choice{}, err
	}
	name := "iptables-nft"
	switch {
	case s.NativeNFTables:
		name = "nftables"
	case s.IptablesVariant != "":
		name = "iptables-" + s.IptablesVariant
	}
	return &fakeBackend{f: f, name: name, netns: s.NetNS, inet: s.NativeNFTables}, backend.Choice{Backend: name, Reason: "fake"}, nil
}

// Installed returns the plan installed in netns, or nil.
func (f *Fake) Installed(netns string) *redirect.Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.installed[netns]
}

// Install puts plan in netns as if another program (or an earlier run) had installed it.
func (f *Fake) Install(netns string, plan *redirect.Plan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		f.installed = map[string]*redirect.Plan{}
	}
	f.installed[netns] = plan
}

// Cleanup is a backend.Cleanup: it removes the plan installed in the scope's namespace.
func (f *Fake) Cleanup(_ context.Context, s backend.Scope) ([]string, error) {
	if err := f.record(Call{Method: "Cleanup", NetNS: s.NetNS, Scope: s}); err != nil {
		return nil, err
	}
	return f.remove(s.NetNS), nil
}

func (f *Fake) remove(netns string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.installed[netns]; !ok {
		return nil
	}
	delete(f.installed, netns)
	return []string{"removed the rules of " + netns}
}

// Calls returns the calls made so far.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Last returns the last call of method, and whether there was one.
func (f *Fake) Last(method string) (Call, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.calls) - 1; i >= 0; i-- {
		if f.calls[i].Method == method {
			return f.calls[i], true
		}
	}
	return Call{}, false
}

func (f *Fake) record(c Call) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	return f.Errors[c.Method]
}

func (b *fakeBackend) record(method string) error {
	return b.f.record(Call{Method: method, NetNS: b.netns})
}

type fakeBackend struct {
	f     *Fake
	name  string
	netns string
	inet  bool
}

func (b *fakeBackend) Name() string { return b.name }

func (b *fakeBackend) Plan(cfg redirect.Config) (redirect.Plan, error) {
	cfg.NativeNFTables = b.inet
	return redirect.Build(cfg)
}

func (b *fakeBackend) Apply(_ context.Context, plan *redirect.Plan, mode backend.Mode) error {
	if err := b.f.record(Call{Method: "Apply", NetNS: b.netns, Mode: mode}); err != nil {
		return err
	}
	if have := b.f.Installed(b.netns); have != nil && !reflect.DeepEqual(have, plan) && !mode.Reconcile && !mode.Force {
		return fmt.Errorf("%s: %w", b.netns, backend.ErrDrift)
	}
	b.f.Install(b.netns, plan)
	return nil
}

func (b *fakeBackend) Check(_ context.Context, plan *redirect.Plan) error {
	if err := b.record("Check"); err != nil {
		return err
	}
	if have := b.f.Installed(b.netns); !reflect.DeepEqual(have, plan) {
		return fmt.Errorf("%s: %w", b.netns, backend.ErrDrift)
	}
	return nil
}

func (b *fakeBackend) Read(context.Context) ([]backend.Chain, error) {
	if err := b.record("Read"); err != nil {
		return nil, err
	}
	plan := b.f.Installed(b.netns)
	if plan == nil {
		return nil, nil
	}
	var out []backend.Chain
	for _, fp := range plan.Families {
		for _, t := range fp.Tables {
			for _, c := range t.Chains {
				bc := backend.Chain{Family: fp.Family, Table: t.Name, Chain: c.Name, Builtin: c.Builtin}
				for _, r := range c.Rules {
					bc.Rules = append(bc.Rules, r.Why)
				}
				out = append(out, bc)
			}
		}
	}
	return out, nil
}

// Counters counts nothing: every rule of the installed plan, at zero.
func (b *fakeBackend) Counters(context.Context) ([]backend.Counter, error) {
	if err := b.record("Counters"); err != nil {
		return nil, err
	}
	var out []backend.Counter
	if plan := b.f.Installed(b.netns); plan != nil {
		for _, fp := range plan.Families {
			for _, t := range fp.Tables {
				for _, c := range t.Chains {
					for i, r := range c.Rules {
						out = append(out, backend.Counter{Family: fp.Family, Table: t.Name, Chain: c.Name, Index: i, Rule: r.Why})
					}
				}
			}
		}
	}
	return out, nil
}

func (b *fakeBackend) Remove(context.Context) ([]string, error) {
	if err := b.record("Remove"); err != nil {
		return nil, err
	}
	return b.f.remove(b.netns), nil
}
