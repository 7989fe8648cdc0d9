package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
)

// cleanupScope narrows a cleanup to one backend; the zero value cleans every backend.
type cleanupScope struct {
	NetNS          string           // network namespace path; "" = the current one
	NativeNFTables bool             // only shunt's native nftables tables
	Variant        iptables.Variant // only this iptables variant; "" = both
}

// narrowed reports whether the scope leaves out a backend, and names the flag that narrows it.
func (s cleanupScope) narrowed() (string, bool) {
	switch {
	case s.NativeNFTables:
		return "--native-nftables", true
	case s.Variant != "":
		return "--force-iptables-binary " + string(s.Variant), true
	}
	return "", false
}

// runCleanup removes what shunt installed in scope and writes one line per removal to out.
//
// What is installed is read from the kernel, not taken from flags: shunt's chains and rules in
// iptables-nft and iptables-legacy (both families each), shunt's three inet tables, and the TPROXY
// routing and lo address shunt added. A narrowed scope cleans its backend only; when another backend
// still holds shunt's rules afterwards, runCleanup fails naming them, and leaves the routing in place
// (those rules may need it).
func runCleanup(ctx context.Context, scope cleanupScope, log *slog.Logger, out io.Writer) error {
	switch scope.Variant {
	case "", iptables.VariantNFT, iptables.VariantLegacy:
	default:
		return fmt.Errorf("iptables variant %q: want nft or legacy", scope.Variant)
	}
	if scope.NativeNFTables && scope.Variant != "" {
		return errors.New("narrow a cleanup to one backend: native nftables or an iptables variant, not both")
	}
	flag, narrow := scope.narrowed()
	var removed []string
	var errs []error
	if !narrow || scope.NativeNFTables {
		tables, err := nftables.Remove(nftables.Options{NetNS: scope.NetNS, Logger: log})
		for _, t := range tables {
			removed = append(removed, "removed nftables table inet "+t)
		}
		errs = append(errs, err)
	}
	if !narrow || scope.Variant != "" {
		rules, err := iptables.Remove(ctx, iptables.Options{NetNS: scope.NetNS, Variant: scope.Variant, Logger: log})
		for _, r := range rules {
			removed = append(removed, "removed "+r.String())
		}
		errs = append(errs, err)
	}
	var left []string
	if narrow {
		var err error
		left, err = remaining(ctx, scope, log)
		errs = append(errs, err)
	}
	if len(left) == 0 && errors.Join(errs...) == nil {
		routes, err := podroute.CleanupAt(scope.NetNS)
		removed = append(removed, routes...)
		errs = append(errs, err)
	}
	if len(removed) == 0 && len(left) == 0 && errors.Join(errs...) == nil {
		removed = append(removed, "nothing of shunt's found")
	}
	for _, line := range removed {
		if _, err := fmt.Fprintln(out, line); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("shunt's rules remain where %s does not look:\n  %s\nrun shunt cleanup without %s to remove them",
			flag, strings.Join(left, "\n  "), flag))
	}
	return errors.Join(errs...)
}

// remaining names what shunt installed in the backends a narrowed scope leaves out.
func remaining(ctx context.Context, scope cleanupScope, log *slog.Logger) ([]string, error) {
	var left []string
	var errs []error
	if !scope.NativeNFTables {
		tables, err := nftables.Find(nftables.Options{NetNS: scope.NetNS, Logger: log})
		for _, t := range tables {
			left = append(left, "nftables table inet "+t)
		}
		errs = append(errs, err)
	}
	var variants []iptables.Variant
	switch scope.Variant {
	case iptables.VariantNFT:
		variants = []iptables.Variant{iptables.VariantLegacy}
	case iptables.VariantLegacy:
		variants = []iptables.Variant{iptables.VariantNFT}
	default:
		variants = []iptables.Variant{""} // both
	}
	for _, v := range variants {
		rules, err := iptables.Find(ctx, iptables.Options{NetNS: scope.NetNS, Variant: v, Logger: log})
		for _, r := range rules {
			left = append(left, r.String())
		}
		errs = append(errs, err)
	}
	return left, errors.Join(errs...)
}
