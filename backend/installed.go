package backend

import (
	"context"
	"errors"
	"fmt"
)

// Found is what of shunt's one backend holds in a namespace: its chains as Read returns them.
type Found struct {
	Backend string // "nftables", "iptables-nft" or "iptables-legacy"
	Chains  []Chain
}

// Installed returns, for every backend holding rules of shunt's in the namespace at netns (the current
// one when empty), the chains it holds, read from the kernel as Cleanup finds them. It changes nothing
// and creates no table: tables that do not exist are not read.
func Installed(ctx context.Context, netns string) ([]Found, error) {
	all, _, err := Scope{NetNS: netns}.backends()
	if err != nil {
		return nil, err
	}
	var found []Found
	var errs []error
	for _, b := range all {
		chains, err := b.Read(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", b.Name(), err))
			continue
		}
		if len(chains) > 0 {
			found = append(found, Found{Backend: b.Name(), Chains: chains})
		}
	}
	return found, errors.Join(errs...)
}
