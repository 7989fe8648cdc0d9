package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
)

// cleanupScope narrows a cleanup to one backend; the zero value cleans every backend.
type cleanupScope struct {
	NetNS          string           // network namespace path; "" = the current one
	NativeNFTables bool             // only shunt's native nftables tables
	Variant        iptables.Variant // only this iptables variant; "" = both
}

// runCleanup removes what shunt installed in scope and writes one line per removal to out.
func runCleanup(ctx context.Context, scope cleanupScope, log *slog.Logger, out io.Writer) error {
	if scope.NativeNFTables {
		return nftables.Cleanup(ctx, nftables.Options{NetNS: scope.NetNS, Logger: log})
	}
	return iptables.Cleanup(ctx, iptables.Options{NetNS: scope.NetNS, Variant: scope.Variant, Logger: log})
}
