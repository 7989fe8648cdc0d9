package validation_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/validation"
)

// TestProbe: the probe fails in a namespace without rules, naming what it tried, and passes once a
// backend has programmed them — each backend, each inbound mode, IPv4 and IPv6.
func TestProbe(t *testing.T) {
	testutil.RequireRoot(t)
	for _, s := range []backend.Settings{{IptablesVariant: "nft"}, {IptablesVariant: "legacy"}, {NativeNFTables: true}} {
		for _, mode := range []redirect.Mode{redirect.ModeRedirect, redirect.ModeTProxy} {
			ns := testutil.NewNetNS(t)
			s.NetNS = ns.Path()
			b, _, err := backend.Select(s)
			if err != nil {
				t.Fatal(err)
			}
			t.Run(b.Name()+"/"+string(mode), func(t *testing.T) {
				cfg := redirect.DefaultConfig()
				// The test runs as root: make root the "proxy", so the probe runs in this process.
				cfg.ProxyUIDs, cfg.ProxyGIDs, cfg.Mode, cfg.IPv6 = []uint32{0}, []uint32{0}, mode, true
				v := validation.Probe{Config: cfg, ProbePort: 15002, Timeout: 5 * time.Second, NetNS: ns.Path()}
				err := v.Run(context.Background())
				if err == nil || !strings.Contains(err.Error(), "127.0.0.6:15002") {
					t.Fatalf("validation without rules = %v, want a failure naming the probe", err)
				}
				plan, err := b.Plan(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := b.Apply(context.Background(), &plan, backend.Mode{}); err != nil {
					t.Fatal(err)
				}
				if err := v.Run(context.Background()); err != nil {
					t.Fatalf("validation with rules: %v", err)
				}
			})
		}
	}
}
