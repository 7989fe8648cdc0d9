package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
)

// Scope narrows a Cleanup to one backend; the zero value cleans every backend of the current namespace.
type Scope struct {
	NetNS           string // network namespace path; "" = the current one
	NativeNFTables  bool   // only shunt's native nftables tables
	IptablesVariant string // only this iptables variant ("nft", "legacy"); "" = both
	// Narrowing names, in the error about rules left elsewhere, the setting that narrowed the scope
	// ("--native-nftables"); "" names the fields.
	Narrowing string
	Logger    *slog.Logger
}

// backends returns the backends s cleans, and, when s is narrowed, those it leaves out.
func (s Scope) backends() (in, out []installed, err error) {
	v := iptables.Variant(s.IptablesVariant)
	switch v {
	case "", iptables.VariantNFT, iptables.VariantLegacy:
	default:
		return nil, nil, fmt.Errorf("iptables variant %q: want nft or legacy", s.IptablesVariant)
	}
	if s.NativeNFTables && v != "" {
		return nil, nil, errors.New("narrow a cleanup to one backend: native nftables or an iptables variant, not both")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nft := &nftBackend{opts: nftables.Options{NetNS: s.NetNS, Logger: log}}
	ipt := func(v iptables.Variant) installed {
		return &iptablesBackend{opts: iptables.Options{NetNS: s.NetNS, Variant: v, Logger: log}}
	}
	all := []installed{nft, ipt(iptables.VariantNFT), ipt(iptables.VariantLegacy)}
	for _, b := range all {
		if !s.NativeNFTables && v == "" || s.NativeNFTables && b == installed(nft) || v != "" && b.Name() == "iptables-"+string(v) {
			in = append(in, b)
		} else {
			out = append(out, b)
		}
	}
	return in, out, nil
}

// Cleanup removes what shunt installed in the scope's namespace and returns one line per removal.
//
// What is installed is read from the kernel, not taken from any configuration: shunt's chains and
// rules in iptables-nft and iptables-legacy (both families each), shunt's inet tables, and the TPROXY
// routing and lo address shunt added. A narrowed scope cleans its backend only; when another backend
// still holds shunt's rules afterwards, Cleanup fails naming them and leaves the routing in place (those
// rules may need it).
func Cleanup(ctx context.Context, s Scope) ([]string, error) {
	in, out, err := s.backends()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, b := range in {
		lines, err := b.Remove(ctx)
		removed = append(removed, lines...)
		errs = append(errs, err)
	}
	var left []string
	for _, b := range out {
		found, err := b.find(ctx)
		left = append(left, found...)
		errs = append(errs, err)
	}
	if len(left) == 0 && errors.Join(errs...) == nil {
		routes, err := podroute.CleanupAt(s.NetNS)
		removed = append(removed, routes...)
		errs = append(errs, err)
	}
	if len(removed) == 0 && len(left) == 0 && errors.Join(errs...) == nil {
		removed = append(removed, "nothing of shunt's found")
	}
	if len(left) > 0 {
		flag := s.Narrowing
		if flag == "" {
			flag = "the narrowed scope"
		}
		errs = append(errs, fmt.Errorf("shunt's rules remain where %s does not look:\n  %s\nrun shunt cleanup without %s to remove them",
			flag, strings.Join(left, "\n  "), flag))
	}
	return removed, errors.Join(errs...)
}

// installed is a backend Cleanup knows: it can say what of shunt's it holds, one line per table or
// family, as Remove names what it removed.
type installed interface {
	Backend
	find(ctx context.Context) ([]string, error)
}
