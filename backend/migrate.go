package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/shuntmesh/shunt/redirect"
)

// ErrMigrateTProxy refuses a migration in TPROXY mode: while two backends' mangle rules TPROXY and
// mark the same packets, the proxy's connections stall (e2e/TestMigrate shows it), so the overlap that
// makes a REDIRECT migration seamless would break a TPROXY pod's traffic.
var ErrMigrateTProxy = errors.New("TPROXY mode cannot be migrated without breaking connections yet: while both backends' mangle rules are installed the proxy's traffic stalls; migrate in REDIRECT mode, or clean up and program the pod again (a capture gap)")

// Migrate moves a namespace's capture to target without a gap: target programs plan first (the
// policy routing and addresses included), while the rules of every other backend still capture; only
// then are those removed. While both are installed, a new connection is captured by whichever nat
// (or TPROXY) chain the kernel runs first — both send it to the same proxy port — and a connection
// established before keeps its conntrack NAT binding whatever the rules become. The routing stays:
// target needs it. It returns one line per change.
//
// s names the namespace and logger; its backend fields are ignored: every backend other than target
// is emptied.
func Migrate(ctx context.Context, target Backend, plan *redirect.Plan, s Scope) ([]string, error) {
	for _, fp := range plan.Families {
		if fp.TProxy != nil {
			return nil, ErrMigrateTProxy
		}
	}
	s.NativeNFTables, s.IptablesVariant = false, ""
	all, _, err := s.backends()
	if err != nil {
		return nil, err
	}
	if err := target.Apply(ctx, plan, Mode{Reconcile: true}); err != nil {
		return nil, fmt.Errorf("install the %s rules: %w", target.Name(), err)
	}
	lines := []string{"programmed " + target.Name()}
	var errs []error
	for _, b := range all {
		if b.Name() == target.Name() {
			continue
		}
		removed, err := b.Remove(ctx)
		lines = append(lines, removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove the %s rules (the %s rules are in place and capture): %w", b.Name(), target.Name(), err))
		}
	}
	return lines, errors.Join(errs...)
}
