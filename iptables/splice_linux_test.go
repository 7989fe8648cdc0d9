package iptables

import (
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

// restoreIn feeds input to the restore tool of v and fam in ns with --noflush.
func restoreIn(t *testing.T, ns *testutil.NetNS, v Variant, fam redirect.Family, input string) {
	t.Helper()
	if input == "" {
		return
	}
	tool := "iptables"
	if fam == redirect.IPv6 {
		tool = "ip6tables"
	}
	cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s-%s-restore: %v: %s\n%s", tool, v, err, out, input)
	}
}

// restoreTo makes ns hold fp (nil: nothing of ours) in family fam as the restore tool does, from the
// rules the save tool reads there: Render into tables without ours, RenderReplace over ours.
func restoreTo(t *testing.T, ns *testutil.NetNS, v Variant, fam redirect.Family, fp *redirect.FamilyPlan) {
	t.Helper()
	have, err := stateIn(t, ns, v, fam)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case have.Empty() && fp != nil:
		restoreIn(t, ns, v, fam, string(Render(fp, RenderOptions{})))
	case !have.Empty() && fp == nil:
		restoreIn(t, ns, v, fam, string(RenderReplace(have, nil, RenderOptions{})))
	case !have.Empty() && len(Diff(have, PlanState(fp))) > 0:
		restoreIn(t, ns, v, fam, string(RenderReplace(have, fp, RenderOptions{})))
	}
}

// zzForeign is another program's chains named to sort after ours (ISTIO_*), reached by a jump and a
// goto from built-in chains and from each other.
const zzForeign = `*nat
:ZZ_FOREIGN - [0:0]
:ZZ_LAST - [0:0]
-A OUTPUT -p tcp -j ZZ_FOREIGN
-A PREROUTING -p udp -g ZZ_LAST
-A ZZ_FOREIGN -p tcp -m tcp --dport 7 -j ZZ_LAST
-A ZZ_LAST -j RETURN
COMMIT
*mangle
:ZZ_FOREIGN - [0:0]
-A OUTPUT -j ZZ_FOREIGN
-A ZZ_FOREIGN -p udp -j MARK --set-xmark 0x9/0xffffffff
COMMIT
`

// TestSpliceMatchesRestore: for random configurations over random foreign rules, installing,
// reconciling to another random configuration and cleaning up from this process (no command: the
// runner fails every one) leaves exactly the rules — ours and the foreign ones, in order — that
// iptables-restore --noflush of Render/RenderReplace leaves in a twin namespace, in both variants and
// families.
func TestSpliceMatchesRestore(t *testing.T) {
	testutil.RequireRoot(t)
	cases := 40
	if testing.Short() {
		cases = 5
	}
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			r := rand.New(rand.NewPCG(1313, uint64(len(v))))
			var took [2]time.Duration // reconciles: in-process, with the restore tool
			spliced, claimed := 0, 0
			for i := range cases {
				ours, tools := testutil.NewNetNS(t), testutil.NewNetNS(t)
				plans := []*redirect.Plan{mustBuild(t, randconfig.Config(r, redirect.DefaultConfig())), mustBuild(t, randconfig.Config(r, redirect.DefaultConfig()))}
				for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
					input := foreignRules(r, fam)
					if i%2 == 1 {
						// Chains sorting after ours, reached by jumps and gotos that must follow them.
						input += zzForeign
					}
					restoreIn(t, ours, v, fam, input)
					restoreIn(t, tools, v, fam, input)
				}
				foreign := save(t, ours, v)
				run := &noExec{}
				var logs testutil.LockedBuffer
				opts := Options{Variant: v, NetNS: ours.Path(), run: run, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
				compare := func(step string) {
					t.Helper()
					if got, want := save(t, ours, v), save(t, tools, v); got != want {
						t.Fatalf("case %d %s: (-restore tool +in-process):\n%s\nforeign rules:\n%s", i, step, cmp.Diff(want, got), foreign)
					}
					if len(run.calls) > 0 || strings.Contains(logs.String(), "level=WARN") {
						t.Fatalf("case %d %s: commands %v\n%s", i, step, run.calls, logs.String())
					}
				}
				for step, plan := range plans {
					opts.Reconcile = step > 0
					start := time.Now()
					if err := Apply(t.Context(), plan, opts); err != nil {
						t.Fatalf("case %d apply %d: %v\nforeign rules:\n%s", i, step, err, foreign)
					}
					d := time.Since(start)
					start = time.Now()
					for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
						restoreTo(t, tools, v, fam, plan.Family(fam))
					}
					if step > 0 {
						took[0] += d
						took[1] += time.Since(start)
					}
					compare([]string{"install", "reconcile"}[step])
				}
				spliced += strings.Count(logs.String(), "kernel API splice")
				if err := Cleanup(t.Context(), opts); err != nil {
					t.Fatalf("case %d cleanup: %v", i, err)
				}
				for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
					restoreTo(t, tools, v, fam, nil)
				}
				compare("cleanup")
				if after := save(t, ours, v); dropEmptyTables(after) != dropEmptyTables(foreign) {
					// Both ways alike: a foreign rule of the shape the engine writes there is taken
					// for ours (redirect.OwnsBuiltinRule).
					claimed++
					t.Logf("case %d: cleanup (restore tool and in-process alike) removed foreign rules taken for ours:\n%s", i, cmp.Diff(foreign, after))
				}
			}
			t.Logf("%d cases (%d families spliced, %d with foreign rules taken for ours); reconciles: in-process %v, with the restore tool %v", cases, spliced, claimed, took[0], took[1])
		})
	}
}

// TestSpliceKeepsCounters: the counters of foreign rules survive a splice of ours in and out, in both
// variants (legacy gives them back with IPT_SO_SET_ADD_COUNTERS).
func TestSpliceKeepsCounters(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			cmd := ns.Command(nil, "iptables-"+string(v)+"-restore", "--noflush", "--counters")
			cmd.Stdin = strings.NewReader("*nat\n:FOREIGN - [0:0]\n[7:700] -A OUTPUT -p tcp -m tcp --dport 9 -j FOREIGN\n[3:300] -A FOREIGN -j RETURN\n[5:500] -A POSTROUTING -o eth0 -j ACCEPT\nCOMMIT\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("foreign rules: %v: %s", err, out)
			}
			counts := func() map[string][]count {
				var k *kernelTables
				if err := ns.Do(func() (err error) { k, err = readKernel(v, redirect.IPv4); return err }); err != nil {
					t.Fatal(err)
				}
				return map[string][]count{"OUTPUT": k.counts["nat"]["OUTPUT"][:1], "FOREIGN": k.counts["nat"]["FOREIGN"], "POSTROUTING": k.counts["nat"]["POSTROUTING"]}
			}
			before := counts()
			if want := (count{packets: 3, bytes: 300}); len(before["FOREIGN"]) != 1 || before["FOREIGN"][0] != want {
				t.Fatalf("foreign counters %v, want FOREIGN %v", before, want)
			}
			opts := Options{Variant: v, NetNS: ns.Path(), run: &noExec{}}
			if err := Apply(t.Context(), mustBuild(t, fullConfig()), opts); err != nil {
				t.Fatal(err)
			}
			if got := counts(); !cmp.Equal(before, got, cmp.AllowUnexported(count{})) {
				t.Errorf("after the install: counters %v, want %v", got, before)
			}
			if err := Cleanup(t.Context(), opts); err != nil {
				t.Fatal(err)
			}
			if got := counts(); !cmp.Equal(before, got, cmp.AllowUnexported(count{})) {
				t.Errorf("after the cleanup: counters %v, want %v", got, before)
			}
		})
	}
}

// TestSpliceRollsBack: when splicing IPv6 into tables shared with foreign rules fails, the IPv4 rules
// this Apply spliced in are spliced out again, without a command.
func TestSpliceRollsBack(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			restoreIn(t, ns, v, redirect.IPv4, foreignV4)
			restoreIn(t, ns, v, redirect.IPv6, foreignV6)
			before := save(t, ns, v)
			run := &noExec{}
			failV6 := func(v Variant, fam redirect.Family, fp *redirect.FamilyPlan, names, env []string, read *kernelTables) error {
				if fam == redirect.IPv6 && fp != nil {
					return errors.New("injected failure")
				}
				return splice(v, fam, fp, names, env, read)
			}
			err := Apply(t.Context(), mustBuild(t, fullConfig()), Options{Variant: v, NetNS: ns.Path(), run: run, splice: failV6})
			if err == nil || !strings.Contains(err.Error(), "injected failure") || strings.Contains(err.Error(), "roll back") {
				t.Fatalf("Apply = %v, want the IPv6 failure and a clean roll-back", err)
			}
			if after := save(t, ns, v); after != before {
				t.Errorf("rules left after the roll-back:\n%s", cmp.Diff(before, after))
			}
			if len(run.calls) > 0 {
				t.Errorf("commands started: %v", run.calls)
			}
		})
	}
}

// BenchmarkReconcileShared reconciles, back and forth between two configurations, a namespace whose
// tables other programs' rules share: spliced from this process, or with the restore tool.
func BenchmarkReconcileShared(b *testing.B) {
	testutil.RequireRoot(b)
	changed := redirect.DefaultConfig()
	changed.ProxyPort, changed.IPv6 = 16001, true
	plans := []*redirect.Plan{mustBuild(b, fullConfig()), mustBuild(b, changed)}
	for _, v := range variants {
		for _, tools := range []bool{false, true} {
			name := string(v) + "/in-process"
			if tools {
				name = string(v) + "/restore-tool"
			}
			b.Run(name, func(b *testing.B) {
				ns := testutil.NewNetNS(b)
				for tool, rules := range map[string]string{"iptables": foreignV4, "ip6tables": foreignV6} {
					cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
					cmd.Stdin = strings.NewReader(rules)
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("foreign rules: %v: %s", err, out)
					}
				}
				opts := Options{Variant: v, NetNS: ns.Path(), Reconcile: true, UseTools: tools}
				if !tools {
					opts.run = &noExec{}
				}
				if err := Apply(b.Context(), plans[0], opts); err != nil {
					b.Fatal(err)
				}
				for i := 0; b.Loop(); i++ {
					if err := Apply(b.Context(), plans[(i+1)%2], opts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestSpliceNFTFromStaleRead: a splice that starts from a read the tables have changed since (another
// program replaced our rules: the handles read are gone) changes nothing, then splices from what the
// tables hold: the same rules as a splice from a fresh read, the foreign ones kept.
func TestSpliceNFTFromStaleRead(t *testing.T) {
	testutil.RequireRoot(t)
	changed := redirect.DefaultConfig()
	changed.ProxyPort = 16001
	stale, fresh := testutil.NewNetNS(t), testutil.NewNetNS(t)
	opts := func(ns *testutil.NetNS) Options {
		return Options{Variant: VariantNFT, NetNS: ns.Path(), run: &noExec{}, Reconcile: true}
	}
	for _, ns := range []*testutil.NetNS{stale, fresh} {
		restoreIn(t, ns, VariantNFT, redirect.IPv4, foreignV4)
		if err := Apply(t.Context(), mustBuild(t, fullConfig()), opts(ns)); err != nil {
			t.Fatal(err)
		}
	}
	var read *kernelTables
	if err := stale.Do(func() (err error) { read, err = readKernel(VariantNFT, redirect.IPv4); return err }); err != nil {
		t.Fatal(err)
	}
	// Our rules replaced behind the read's back: every handle it holds of ours is gone.
	for _, ns := range []*testutil.NetNS{stale, fresh} {
		if err := Apply(t.Context(), mustBuild(t, changed), opts(ns)); err != nil {
			t.Fatal(err)
		}
	}
	fp := mustBuild(t, fullConfig()).Family(redirect.IPv4)
	names := involvedTables(OwnedState(read.tables), fp)
	if err := stale.Do(func() error { return splice(VariantNFT, redirect.IPv4, fp, names, nil, read) }); err != nil {
		t.Fatalf("splice from the stale read: %v", err)
	}
	if err := fresh.Do(func() error { return splice(VariantNFT, redirect.IPv4, fp, names, nil, nil) }); err != nil {
		t.Fatalf("splice: %v", err)
	}
	if got, want := save(t, stale, VariantNFT), save(t, fresh, VariantNFT); got != want {
		t.Errorf("(-fresh read +stale read):\n%s", cmp.Diff(want, got))
	}
	if have, err := stateIn(t, stale, VariantNFT, redirect.IPv4); err != nil || len(Diff(have, PlanState(fp))) > 0 {
		t.Errorf("our rules after the splice: %v, %v", Diff(have, PlanState(fp)), err)
	}
}
