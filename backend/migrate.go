package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/shuntmesh/shunt/redirect"
)

// Migrate moves a namespace's capture to target without a gap: Stage, then every other backend's
// rules removed, then (TPROXY mode) the migration guard dropped from target's. While both are
// installed, a new connection is captured by whichever nat (or TPROXY) chain the kernel runs first —
// both send it to the same proxy port — and a connection established before keeps its conntrack NAT
// binding whatever the rules become. The routing stays: target needs it. Each step is atomic per
// table, and every state in between captures every connection.
//
// s names the namespace and logger; its backend fields are ignored: every backend other than target
// is emptied. It returns one line per change.
func Migrate(ctx context.Context, target Backend, cfg redirect.Config, s Scope) ([]string, error) {
	lines, err := Stage(ctx, target, cfg, s)
	if err != nil {
		return lines, err
	}
	plan, others, err := migration(target, cfg, s)
	if err != nil {
		return lines, err
	}
	var errs []error
	for _, b := range others {
		removed, err := b.Remove(ctx)
		lines = append(lines, removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove the %s rules (the %s rules are in place and capture): %w", b.Name(), target.Name(), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return lines, err
	}
	if tproxy(&plan) {
		if err := target.Apply(ctx, &plan, Mode{Reconcile: true}); err != nil {
			return lines, fmt.Errorf("drop the migration guard from the %s rules (they capture, with it): %w", target.Name(), err)
		}
		lines = append(lines, "dropped the migration guard of "+target.Name())
	}
	return lines, nil
}

// Stage is the first half of Migrate: target programs cfg's plan (the policy routing and addresses
// included) next to the rules of the other backends, which keep capturing. In TPROXY mode two
// backends' mangle rules would break each other's connections (see redirect.Plan.MigrationGuard): the
// backends holding rules are first reconciled to cfg's plan with the migration guard, and target
// programs it with the guard too. The other backends' rules are taken to be of cfg; rules of other
// settings are replaced by cfg's. Migrate, run after, finishes the move.
func Stage(ctx context.Context, target Backend, cfg redirect.Config, s Scope) ([]string, error) {
	plan, others, err := migration(target, cfg, s)
	if err != nil {
		return nil, err
	}
	if !tproxy(&plan) {
		if err := target.Apply(ctx, &plan, Mode{Reconcile: true}); err != nil {
			return nil, fmt.Errorf("install the %s rules: %w", target.Name(), err)
		}
		return []string{"programmed " + target.Name()}, nil
	}
	var lines []string
	for _, b := range others {
		chains, err := b.Read(ctx)
		if err != nil {
			return lines, fmt.Errorf("read the %s rules: %w", b.Name(), err)
		}
		if len(chains) == 0 {
			continue
		}
		bp, err := b.Plan(cfg)
		if err != nil {
			return lines, fmt.Errorf("plan the %s rules: %w", b.Name(), err)
		}
		g := bp.MigrationGuard()
		if err := b.Apply(ctx, &g, Mode{Reconcile: true}); err != nil {
			return lines, fmt.Errorf("guard the %s rules for the migration: %w", b.Name(), err)
		}
		lines = append(lines, "guarded "+b.Name()+" for the migration")
	}
	g := plan.MigrationGuard()
	if err := target.Apply(ctx, &g, Mode{Reconcile: true}); err != nil {
		return lines, fmt.Errorf("install the %s rules: %w", target.Name(), err)
	}
	return append(lines, "programmed "+target.Name()+", with the migration guard"), nil
}

// migration returns target's plan of cfg and the backends to migrate from: all the others.
func migration(target Backend, cfg redirect.Config, s Scope) (redirect.Plan, []installed, error) {
	plan, err := target.Plan(cfg)
	if err != nil {
		return plan, nil, fmt.Errorf("plan the %s rules: %w", target.Name(), err)
	}
	s.NativeNFTables, s.IptablesVariant = false, ""
	all, _, err := s.backends()
	if err != nil {
		return plan, nil, err
	}
	var others []installed
	for _, b := range all {
		if b.Name() != target.Name() {
			others = append(others, b)
		}
	}
	return plan, others, nil
}

func tproxy(p *redirect.Plan) bool {
	for _, fp := range p.Families {
		if fp.TProxy != nil {
			return true
		}
	}
	return false
}
