package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Variant is an iptables implementation.
type Variant string

// Variants.
const (
	VariantNFT    Variant = "nft"
	VariantLegacy Variant = "legacy"
)

// Options control Apply and Cleanup.
type Options struct {
	// Variant forces an iptables variant; empty detects it.
	Variant Variant
	// NetNS is the path of the network namespace to program; empty means the current one.
	NetNS string
	// Reconcile replaces differing rules of ours instead of failing.
	Reconcile bool
	// Force re-applies the rules even when they are in place.
	Force bool
	// Logger receives progress; nil discards.
	Logger *slog.Logger
	// UseTools hands tables that other programs' rules share to iptables-restore --noflush (and reads
	// with iptables-save when reading from the kernel fails), as before the kernel API could splice
	// them. Off (the default), no command is ever run.
	UseTools bool

	run     runner                                             // nil: exec
	program func(fp *redirect.FamilyPlan, drop []string) error // nil: programNFT or programLegacy
	// splice (nil: splice) splices fp into the tables names of family fam shared with other programs,
	// starting from read, what a read of the family just found (nil: it reads).
	splice func(v Variant, fam redirect.Family, fp *redirect.FamilyPlan, names, env []string, read *kernelTables) error
}

// ErrDrift is returned (wrapped) when rules of ours differ from the plan and Reconcile is off.
var ErrDrift = errors.New("installed rules differ from this configuration")

// runner runs a command with stdin and extra environment, returning its standard output.
type runner interface {
	Run(ctx context.Context, name string, args []string, stdin []byte, env []string) ([]byte, error)
}

type execRunner struct{}

func (execRunner) Run(ctx context.Context, name string, args []string, stdin []byte, env []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if len(env) > 0 {
		cmd.Env = append(cmd.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return stdout.Bytes(), nil
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o *Options) runner() runner {
	if o.run == nil {
		return execRunner{}
	}
	return o.run
}

// familyTool names the binary of a tool ("restore", "save") for a variant and family, preferring the
// variant-specific name (iptables-nft-restore) and falling back to the plain one.
func familyTool(v Variant, fam redirect.Family, tool string) string {
	base := "iptables"
	if fam == redirect.IPv6 {
		base = "ip6tables"
	}
	name := base + "-" + string(v) + "-" + tool
	if _, err := exec.LookPath(name); err == nil {
		return name
	}
	return base + "-" + tool
}

// readState returns our part of the rules of family fam in variant v; hasTables false skips the read
// (the namespace holds no tables of that variant and family at all).
func readState(ctx context.Context, o *Options, v Variant, fam redirect.Family, hasTables bool) (State, error) {
	tables, err := readTables(ctx, o, v, fam, hasTables)
	if err != nil {
		return nil, err
	}
	return OwnedState(tables), nil
}

// readTables returns the rules of family fam in variant v, as the save tool prints them: read from
// the kernel in-process, or, should that fail, with the save tool.
func readTables(ctx context.Context, o *Options, v Variant, fam redirect.Family, hasTables bool) (map[string]*SavedTable, error) {
	k, err := readFamily(ctx, o, v, fam, hasTables)
	if err != nil {
		return nil, err
	}
	return k.tables, nil
}

// readFamily is readTables returning the whole read: from the kernel, with the counters and (nft) the
// handles a splice deletes by; from the save tool, the tables alone. names, when given, are the
// family's tables as lookTables just found them.
func readFamily(ctx context.Context, o *Options, v Variant, fam redirect.Family, hasTables bool, names ...string) (*kernelTables, error) {
	if !hasTables {
		return newKernelTables(), nil
	}
	k, err := readKernel(v, fam, names...)
	if err == nil {
		return k, nil
	}
	if !o.UseTools {
		return nil, fmt.Errorf("read %s rules: %w", fam, err)
	}
	o.logger().Warn("reading the rules in-process failed, using the save tool", "variant", string(v), "family", fam.String(), "error", err.Error())
	out, err := o.runner().Run(ctx, familyTool(v, fam, "save"), nil, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s rules: %w", fam, err)
	}
	tables, err := ParseSave(out)
	if err != nil {
		return nil, fmt.Errorf("parse %s rules: %w", fam, err)
	}
	return &kernelTables{tables: tables}, nil
}

// restore feeds input to the variant's restore tool with --noflush: one atomic transaction per table.
func restore(ctx context.Context, r runner, v Variant, fam redirect.Family, input []byte, lockEnv []string) error {
	if _, err := r.Run(ctx, familyTool(v, fam, "restore"), restoreArgs(v), input, lockEnv); err != nil {
		return fmt.Errorf("program %s rules: %w", fam, err)
	}
	return nil
}

// restoreArgs are the restore tool's arguments: never flush foreign rules; legacy waits for the lock.
func restoreArgs(v Variant) []string {
	if v == VariantLegacy {
		return []string{"--noflush", "--wait=30"}
	}
	return []string{"--noflush"}
}

// Installed is our part of the rules of one iptables variant and family.
type Installed struct {
	Variant Variant
	Family  redirect.Family
	State   State
}

// String names the variant, family, our chains and our rules in built-in chains:
// "iptables-nft IPv4: chains ISTIO_INBOUND, ISTIO_OUTPUT; 3 jumps" (and "and 2 other rules in
// built-in chains" for TPROXY's marks and the like).
func (in Installed) String() string {
	var chains []string
	jumps, other := 0, 0
	for _, t := range in.State {
		for c := range t.Owned {
			if !slices.Contains(chains, c) {
				chains = append(chains, c)
			}
		}
		for _, specs := range t.Builtin {
			for _, spec := range specs {
				if _, target, ok := strings.Cut(spec, "-j "); ok && redirect.IsOwned(strings.Fields(target + " ")[0]) {
					jumps++
				} else {
					other++
				}
			}
		}
	}
	slices.Sort(chains)
	var parts []string
	if len(chains) > 0 {
		parts = append(parts, "chains "+strings.Join(chains, ", "))
	}
	count := func(n int, one, many string) string {
		if n == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %s", n, many)
	}
	switch {
	case jumps > 0 && other > 0:
		parts = append(parts, count(jumps, "jump", "jumps")+" and "+count(other, "other rule", "other rules")+" in built-in chains")
	case jumps > 0:
		parts = append(parts, count(jumps, "jump", "jumps"))
	case other > 0:
		parts = append(parts, count(other, "rule", "rules")+" in built-in chains")
	}
	return fmt.Sprintf("iptables-%s %s: %s", in.Variant, in.Family, strings.Join(parts, "; "))
}
