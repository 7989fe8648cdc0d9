package iptables

import (
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// BenchmarkReadKernel reads a family's rules back in-process, the injector's default rules or
// fullConfig's in place: what the init container's re-run reads.
func BenchmarkReadKernel(b *testing.B) {
	testutil.RequireRoot(b)
	for _, v := range variants {
		for _, c := range []struct {
			name string
			cfg  redirect.Config
		}{{"default", redirect.DefaultConfig()}, {"full", fullConfig()}} {
			b.Run(string(v)+"/"+c.name, func(b *testing.B) {
				ns := testutil.NewNetNS(b)
				if err := Apply(b.Context(), mustBuild(b, c.cfg), Options{Variant: v, NetNS: ns.Path(), run: &noExec{}}); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				err := ns.Do(func() error {
					for b.Loop() {
						if _, err := readKernel(v, redirect.IPv4); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkRerun applies the injector's default rules where they are in place already (the init
// container run again), and reconciles them to TPROXY and back.
func BenchmarkRerun(b *testing.B) {
	testutil.RequireRoot(b)
	tproxy := redirect.DefaultConfig()
	tproxy.Mode = redirect.ModeTProxy
	plans := []*redirect.Plan{mustBuild(b, redirect.DefaultConfig()), mustBuild(b, tproxy)}
	for _, v := range variants {
		b.Run(string(v)+"/in-place", func(b *testing.B) {
			ns := testutil.NewNetNS(b)
			opts := Options{Variant: v, NetNS: ns.Path(), run: &noExec{}}
			if err := Apply(b.Context(), plans[0], opts); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := Apply(b.Context(), plans[0], opts); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(v)+"/reconcile", func(b *testing.B) {
			ns := testutil.NewNetNS(b)
			opts := Options{Variant: v, NetNS: ns.Path(), run: &noExec{}, Reconcile: true}
			if err := Apply(b.Context(), plans[0], opts); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := Apply(b.Context(), plans[(i+1)%2], opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
