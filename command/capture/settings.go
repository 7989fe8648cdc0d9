package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/redirect"
)

// What `shunt graph` and `shunt trace` share: the settings of `shunt iptables --dry-run` (flags,
// environment or --pod), and with --network-namespace the backend holding a namespace's rules and
// its counters.

// settingsConfig is the Config of the settings flags f, or of the Pod given with --pod, with IPv6
// detected in the namespace (the current one without --network-namespace) when --ipv6 is not given.
func settingsConfig(env Env, f *istioFlags, detectIPv6 func(path string, dualStack bool) (bool, error)) (redirect.Config, error) {
	if f.pod != "" {
		cfg, err := f.ruleConfig(env)
		cfg.NativeNFTables = f.nativeNFT
		return cfg, err
	}
	cfg, err := f.config(env.Getenv, os.ReadFile, func(dualStack bool) (bool, error) {
		return detectIPv6(f.netns, dualStack)
	})
	cfg.NativeNFTables = f.nativeNFT
	return cfg, err
}

// checkLiveFlags refuses the flags that only choose what is read in a namespace when none is given.
func checkLiveFlags(f *istioFlags) error {
	if f.fs.Changed("force-iptables-binary") && f.netns == "" {
		return errors.New("--force-iptables-binary only with --network-namespace: it chooses whose rules and counters are read")
	}
	return nil
}

// liveBackend returns the backend whose rules are read in --network-namespace: the one the flags
// name, else the one holding shunt's rules there.
func liveBackend(ctx context.Context, f *istioFlags, installed func(ctx context.Context, netns string) ([]backend.Found, error)) (backend.Backend, error) {
	s := backend.Settings{NetNS: f.netns, NativeNFTables: f.nativeNFT, IptablesVariant: f.forceBinary}
	if f.nativeNFT || f.forceBinary != "" {
		b, _, err := backend.Select(s)
		return b, err
	}
	found, err := installed(ctx, f.netns)
	if err != nil {
		return nil, fmt.Errorf("--network-namespace %s: %w", f.netns, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("--network-namespace %s: no backend holds rules of shunt's (or istio-iptables') there", f.netns)
	case 1:
		return backend.Named(found[0].Backend, s)
	}
	names := make([]string, len(found))
	for i, fd := range found {
		names[i] = fd.Backend
	}
	return nil, fmt.Errorf("--network-namespace %s: %s all hold rules of shunt's (a migration under way?): choose one with --native-nftables or --force-iptables-binary",
		f.netns, strings.Join(names, ", "))
}

// liveCounters returns what the kernel counted for the rules of plan that b holds in netns. Rules
// of the plan b lacks are named in a warning on env.Stderr and left out; none held at all is an
// error.
func liveCounters(ctx context.Context, env Env, b backend.Backend, plan *redirect.Plan, netns string) (map[redirect.RuleRef]redirect.Counters, error) {
	counters, err := backend.RuleCounters(ctx, b, plan)
	switch {
	case errors.Is(err, backend.ErrNoRules):
		return nil, fmt.Errorf("--network-namespace %s: %w", netns, err)
	case errors.Is(err, backend.ErrDrift):
		// Used all the same: the rules held are counted, the others shown without counters.
		fmt.Fprintf(env.Stderr, "shunt: warning: %v; are these the settings the rules were programmed with?\n", err)
	case err != nil:
		return nil, err
	}
	return counters, nil
}
