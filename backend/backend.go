// Package backend is the one seam between shunt's callers — the init container's commands, the CNI
// plugin, the node agent, the operator CLI — and the kernel interfaces that hold a pod's capture rules.
//
// A caller describes what it wants (Settings: the namespace, native nftables or not, a forced iptables
// variant) and Select picks the Backend in one place, from those settings and from what the namespace
// holds, saying why. Every Backend builds the plan shape it programs from a redirect.Config (Plan), so
// no caller matches Config.NativeNFTables to a backend by hand, and applies, checks, reads back, counts
// and removes rules of that shape. Cleanup removes what every backend holds, whatever the settings
// were. The eBPF data path is not a Backend: it registers a pod on top of one (see cni.DataPathLayer).
//
// Policy stays in package redirect; a Backend only programs what the Plan says.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// Backend programs a pod's capture rules into one network namespace with one kernel interface.
type Backend interface {
	// Name is "iptables-nft", "iptables-legacy" or "nftables".
	Name() string
	// Plan builds cfg's plan in the shape this backend programs (per-family tables, or one inet plan).
	Plan(cfg redirect.Config) (redirect.Plan, error)
	// Apply programs plan with the TPROXY routes and loopback addresses it needs. A second Apply of the
	// same plan changes nothing; rules of ours that differ fail with an error wrapping ErrDrift unless
	// mode.Reconcile replaces them, atomically per table.
	Apply(ctx context.Context, plan *redirect.Plan, mode Mode) error
	// Check compares the namespace with plan and returns an error wrapping ErrDrift that names every
	// difference, or nil. It changes nothing.
	Check(ctx context.Context, plan *redirect.Plan) error
	// Read returns the chains of ours the namespace holds, as the backend's own text.
	Read(ctx context.Context) ([]Chain, error)
	// Counters returns the packet and byte counters of every rule of ours.
	Counters(ctx context.Context) ([]Counter, error)
	// Remove deletes every rule of ours this backend holds and says what it removed. Routes and
	// addresses stay: another backend's rules may use them (see Cleanup).
	Remove(ctx context.Context) ([]string, error)
}

// Mode says how Apply treats rules of ours already in place.
type Mode struct {
	// Reconcile replaces rules of ours that differ from the plan, in the transaction that adds the new
	// ones, instead of failing.
	Reconcile bool
	// Force programs the plan even when it is in place already.
	Force bool
}

// ErrDrift is wrapped by the errors of Apply and Check when rules of ours differ from the plan.
var ErrDrift = errors.New("installed rules differ from this configuration")

// drift wraps err, when it is a backend's own drift error, so that errors.Is(err, ErrDrift) holds.
func drift(err error) error {
	if errors.Is(err, iptables.ErrDrift) || errors.Is(err, nftables.ErrDrift) {
		return &driftError{err}
	}
	return err
}

type driftError struct{ err error }

func (e *driftError) Error() string        { return e.err.Error() }
func (e *driftError) Unwrap() []error      { return []error{e.err, ErrDrift} }
func (e *driftError) Is(target error) bool { return target == ErrDrift }

// Chain is one chain of ours as a namespace holds it; for a built-in chain, only our rules in it.
type Chain struct {
	Family  redirect.Family // IPv4 or IPv6; redirect.Inet for native nftables
	Table   string          // the plan's table name: nat, mangle, raw
	Chain   string          // the plan's chain name: ISTIO_OUTPUT, OUTPUT, …
	Builtin bool
	Rules   []string // in order, as the backend writes them (an iptables spec, an nft rule)
}

// Counter is what the kernel counted for one rule of ours. Family, Table, Chain and Index (the
// rule's position among ours in the chain) name the rule of the plan it counts for.
type Counter struct {
	Family         redirect.Family
	Table, Chain   string
	Index          int
	Rule           string
	Packets, Bytes uint64
}

// Settings are a caller's choices; the zero value is iptables with the variant the namespace suggests,
// in the current namespace.
type Settings struct {
	// NetNS is the path of the network namespace; "" is the current one.
	NetNS string
	// NativeNFTables programs shunt's own inet tables (Istio's --native-nftables) instead of iptables.
	NativeNFTables bool
	// IptablesVariant forces "nft" or "legacy"; "" picks it from what the namespace holds.
	IptablesVariant string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// Choice is the backend Select picked, and why.
type Choice struct {
	Backend string
	Reason  string
}

// Select returns the backend for s in its namespace. Only when the iptables variant is left open does
// it look into the namespace, creating nothing.
func Select(s Settings) (Backend, Choice, error) {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := iptables.Variant(s.IptablesVariant)
	switch v {
	case "", iptables.VariantNFT, iptables.VariantLegacy:
	default:
		return nil, Choice{}, &redirect.FieldError{Field: "iptables variant", Value: s.IptablesVariant, Err: errors.New(`want "nft", "legacy" or empty`)}
	}
	if s.NativeNFTables {
		if v != "" {
			return nil, Choice{}, &redirect.FieldError{Field: "iptables variant", Value: s.IptablesVariant,
				Err: errors.New("native nftables uses no iptables variant")}
		}
		return &nftBackend{opts: nftables.Options{NetNS: s.NetNS, Logger: log}}, Choice{Backend: "nftables", Reason: "native nftables requested"}, nil
	}
	reason := "iptables variant set in the configuration"
	if v == "" {
		var err error
		if v, reason, err = iptables.ChooseVariant(s.NetNS); err != nil {
			return nil, Choice{}, fmt.Errorf("choose the iptables variant: %w", err)
		}
	}
	b := &iptablesBackend{opts: iptables.Options{NetNS: s.NetNS, Variant: v, Logger: log}}
	return b, Choice{Backend: b.Name(), Reason: reason}, nil
}

// Named returns the backend called name ("nftables", "iptables-nft" or "iptables-legacy", as Name
// returns them) in the namespace of s; the backend fields of s are ignored.
func Named(name string, s Settings) (Backend, error) {
	switch name {
	case "nftables":
		s.NativeNFTables, s.IptablesVariant = true, ""
	case "iptables-nft", "iptables-legacy":
		s.NativeNFTables, s.IptablesVariant = false, strings.TrimPrefix(name, "iptables-")
	default:
		return nil, &redirect.FieldError{Field: "backend", Value: name, Err: errors.New(`want "nftables", "iptables-nft" or "iptables-legacy"`)}
	}
	b, _, err := Select(s)
	return b, err
}
