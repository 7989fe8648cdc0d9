package nftables

import (
	"context"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// BenchmarkApply measures Apply of the sidecar injector's rules (IPv4 and IPv6) into an empty
// namespace, in process: the reading of what is there and the one transaction. The tables are deleted
// between iterations, off the clock.
func BenchmarkApply(b *testing.B) {
	testutil.RequireRoot(b)
	cfg := injector()
	cfg.IPv6 = true
	plan, err := redirect.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	n := testutil.NewNetNS(b)
	opts := Options{NetNS: n.Path()}
	ctx := context.Background()
	for b.Loop() {
		if err := Apply(ctx, &plan, opts); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := Cleanup(ctx, opts); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkApplyFreshNetNS is BenchmarkApply into a new namespace each time.
func BenchmarkApplyFreshNetNS(b *testing.B) {
	testutil.RequireRoot(b)
	cfg := injector()
	cfg.IPv6 = true
	plan, err := redirect.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		n := testutil.NewNetNS(b)
		b.StartTimer()
		if err := Apply(ctx, &plan, Options{NetNS: n.Path()}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompile measures turning a plan into netlink objects, without the kernel.
func BenchmarkCompile(b *testing.B) {
	cfg := injector()
	cfg.IPv6 = true
	plan, err := redirect.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := compile(&plan.Families[0]); err != nil {
			b.Fatal(err)
		}
	}
}
