package redirect

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestMigrationGuard: in TPROXY mode the guard comes first in mangle PREROUTING of every family (IPv4,
// IPv6, inet), is the engine's by its shape (so a backend's read-back, reconcile and removal take it as
// ours), and leaves the rest and the plan it came from untouched; outside TPROXY it changes nothing.
func TestMigrationGuard(t *testing.T) {
	equate := cmpopts.EquateComparable(Rule{}.Src.Prefix)
	for _, native := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.IPv6, cfg.NativeNFTables = true, native
		plan, err := Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(plan, plan.MigrationGuard(), equate); diff != "" {
			t.Errorf("native=%v REDIRECT: the guard changed the plan (-want +got):\n%s", native, diff)
		}
		cfg.Mode = ModeTProxy
		plan, err = Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		before, _ := Build(cfg)
		g := plan.MigrationGuard()
		if diff := cmp.Diff(before, plan, equate); diff != "" {
			t.Errorf("native=%v: MigrationGuard changed the plan it was called on (-want +got):\n%s", native, diff)
		}
		for i, fp := range g.Families {
			pre := fp.Table(TableMangle).Chain("PREROUTING")
			orig := plan.Families[i].Table(TableMangle).Chain("PREROUTING")
			if len(pre.Rules) != len(orig.Rules)+1 {
				t.Fatalf("%v: %d rules in mangle PREROUTING, want %d", fp.Family, len(pre.Rules), len(orig.Rules)+1)
			}
			guard := pre.Rules[0]
			want := Rule{In: IfaceMatch{Name: "lo", Not: true}, Proto: "tcp", Mark: MarkMatch{Set: true, Value: cfg.TProxyMark},
				Target: Target{Kind: TargetAccept}}
			if !sameMatch(&want, &guard) || !guard.Head || guard.Why == "" {
				t.Errorf("%v: first rule %+v, want the guard", fp.Family, guard)
			}
			if !OwnsBuiltinRule(TableMangle, "PREROUTING", &guard, false) {
				t.Errorf("%v: the guard is not recognised as the engine's", fp.Family)
			}
			if diff := cmp.Diff(orig.Rules, pre.Rules[1:], equate); diff != "" {
				t.Errorf("%v: the rules after the guard differ (-want +got):\n%s", fp.Family, diff)
			}
		}
	}
}
