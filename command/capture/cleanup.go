package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/shuntmesh/shunt/backend"
)

// cleanupScope is what --cleanup-only or `shunt cleanup` removes: every backend unless the flags narrow it.
func (f *istioFlags) cleanupScope(log *slog.Logger) backend.Scope {
	s := backend.Scope{NetNS: f.netns, NativeNFTables: f.nativeNFT, IptablesVariant: f.forceBinary, Logger: log}
	switch {
	case f.nativeNFT:
		s.Narrowing = "--native-nftables"
	case f.forceBinary != "":
		s.Narrowing = "--force-iptables-binary " + f.forceBinary
	}
	return s
}

// runCleanup removes what shunt installed in scope (see backend.Cleanup) and writes one line per
// removal to out.
func runCleanup(ctx context.Context, scope backend.Scope, out io.Writer) error {
	removed, err := backend.Cleanup(ctx, scope)
	for _, line := range removed {
		if _, werr := fmt.Fprintln(out, line); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}
