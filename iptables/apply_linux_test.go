package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

var variants = []Variant{VariantNFT, VariantLegacy}

// countingRunner counts restores and can fail the restore of one family.
type countingRunner struct {
	restores atomic.Int32
	failOn   string // substring of the tool name whose restore fails
}

func (c *countingRunner) Run(ctx context.Context, name string, args []string, stdin []byte, env []string) ([]byte, error) {
	if strings.HasSuffix(name, "-restore") {
		c.restores.Add(1)
		if c.failOn != "" && strings.Contains(name, c.failOn) {
			return nil, fmt.Errorf("%s: injected failure", name)
		}
	}
	return execRunner{}.Run(ctx, name, args, stdin, env)
}

// fullConfig exercises every part of the plan: TPROXY, IPv6, DNS, interfaces, groups.
func fullConfig() redirect.Config {
	c := redirect.DefaultConfig()
	c.Mode, c.IPv6, c.RedirectDNS, c.DropInvalid = redirect.ModeTProxy, true, true, true
	c.DNSServers = []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")}
	c.ExcludeInterfaces, c.KubeVirtInterfaces = []string{"eth7"}, []string{"eth8"}
	c.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{4242}}
	c.OutboundPortsExclude = []uint16{5555}
	return c
}

func mustBuild(t testing.TB, c redirect.Config) *redirect.Plan {
	t.Helper()
	p, err := redirect.Build(c)
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

var saveNoise = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// save returns the namespace's rules of variant v, both families, without comments and counters.
func save(t *testing.T, ns *testutil.NetNS, v Variant) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := ns.Command(nil, tool+"-"+string(v)+"-save").CombinedOutput()
		if err != nil {
			t.Fatalf("%s-%s-save: %v: %s", tool, v, err, out)
		}
		b.WriteString("## " + tool + "\n" + saveNoise.ReplaceAllString(string(out), ""))
	}
	return b.String()
}

// dropEmptyTables removes tables that hold only built-in chains with ACCEPT policy and no rules: a table
// left empty by cleanup may remain.
func dropEmptyTables(s string) string {
	var out, block []string
	empty := true
	for _, l := range strings.Split(s, "\n") {
		switch {
		case l == "" || strings.HasPrefix(l, "## "):
			out = append(out, l)
		case l[0] == '*':
			block, empty = []string{l}, true
		case l == "COMMIT":
			if !empty {
				out = append(out, append(block, l)...)
			}
			block = nil
		default:
			block = append(block, l)
			if !(l[0] == ':' && strings.Contains(l, " ACCEPT") && redirect.IsBuiltin(strings.Fields(l[1:])[0])) {
				empty = false
			}
		}
	}
	return strings.Join(out, "\n")
}

func ipState(t *testing.T, ns *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-4", "rule"}, {"-6", "rule"}, {"-6", "addr", "show", "dev", "lo"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}} {
		out, err := ns.Command(nil, append([]string{"ip"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		b.Write(out)
	}
	return b.String()
}

func TestApplyIdempotent(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			plan := mustBuild(t, fullConfig())
			r := &countingRunner{}
			opts := Options{Variant: v, NetNS: ns.Path(), run: r}
			if err := Apply(context.Background(), plan, opts); err != nil {
				t.Fatal(err)
			}
			first, firstIP := save(t, ns, v), ipState(t, ns)
			if !strings.Contains(first, ":ISTIO_TPROXY") || !strings.Contains(first, "-j CT --zone 1") || !strings.Contains(firstIP, "lookup 133") {
				t.Fatalf("rules not programmed:\n%s\n%s", first, firstIP)
			}
			// A fresh install is programmed through the kernel API: no restore tool at all.
			const want = 0
			if n := r.restores.Load(); n != want {
				t.Errorf("first apply ran %d restores, want %d", n, want)
			}
			if err := Apply(context.Background(), plan, opts); err != nil {
				t.Fatalf("second apply: %v", err)
			}
			if n := r.restores.Load(); n != want {
				t.Errorf("second apply ran a restore; it must change nothing")
			}
			if second := save(t, ns, v); second != first {
				t.Errorf("second apply changed the rules:\n%s\nthen\n%s", first, second)
			}
			if second := ipState(t, ns); second != firstIP {
				t.Errorf("second apply changed routes:\n%s\nthen\n%s", firstIP, second)
			}
		})
	}
}

func TestApplyDriftAndReconcile(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			opts := Options{Variant: v, NetNS: ns.Path()}
			old := fullConfig()
			if err := Apply(context.Background(), mustBuild(t, old), opts); err != nil {
				t.Fatal(err)
			}
			before := save(t, ns, v)
			changed := redirect.DefaultConfig() // REDIRECT mode, other ports: chains go and rules change
			changed.ProxyPort, changed.IPv6 = 16001, true
			err := Apply(context.Background(), mustBuild(t, changed), opts)
			if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "--to-ports 16001") || !strings.Contains(err.Error(), "ISTIO_TPROXY is not part") {
				t.Fatalf("apply over different rules = %v, want ErrDrift naming the differences", err)
			}
			if after := save(t, ns, v); after != before {
				t.Fatal("a refused apply changed the rules")
			}
			opts.Reconcile = true
			if err := Apply(context.Background(), mustBuild(t, changed), opts); err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
				have, err := stateIn(t, ns, v, fam)
				if err != nil {
					t.Fatal(err)
				}
				if d := Diff(have, PlanState(mustBuild(t, changed).Family(fam))); len(d) > 0 {
					t.Errorf("%s after reconcile:\n%s", fam, strings.Join(d, "\n"))
				}
			}
			if s := save(t, ns, v); strings.Contains(s, "ISTIO_TPROXY") || strings.Contains(s, "ISTIO_DROP") {
				t.Errorf("reconcile left chains of the old configuration:\n%s", s)
			}
		})
	}
}

// stateIn reads our part of the rules of variant v and family fam in ns with the save tool.
func stateIn(t *testing.T, ns *testutil.NetNS, v Variant, fam redirect.Family) (State, error) {
	t.Helper()
	out, err := ns.Exec(nil, nil, familyTool(v, fam, "save"))
	if err != nil {
		return nil, err
	}
	tables, err := ParseSave(out)
	return OwnedState(tables), err
}

// execRunnerIn runs commands inside ns.
type nsRunner struct{ ns *testutil.NetNS }

func execRunnerIn(ns *testutil.NetNS) runner { return nsRunner{ns} }

func (r nsRunner) Run(ctx context.Context, name string, args []string, stdin []byte, env []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.ns.Name, name}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	return cmd.Output()
}

func TestApplyRollsBackOnFailure(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			before := save(t, ns, v)
			program := programNFT
			if v == VariantLegacy {
				program = programLegacy
			}
			failV6 := func(fp *redirect.FamilyPlan, drop []string) error {
				if fp.Family == redirect.IPv6 {
					return errors.New("ip6tables: injected failure")
				}
				return program(fp, drop)
			}
			// With the tools: the fallback after the kernel API's failure fails too.
			err := Apply(context.Background(), mustBuild(t, fullConfig()), Options{Variant: v, NetNS: ns.Path(),
				run: &countingRunner{failOn: "ip6tables"}, program: failV6, UseTools: true})
			if err == nil || !strings.Contains(err.Error(), "injected failure") || strings.Contains(err.Error(), "roll back") {
				t.Fatalf("Apply = %q, want the IPv6 failure and a clean roll-back", err)
			}
			if after := dropEmptyTables(save(t, ns, v)); after != dropEmptyTables(before) {
				t.Errorf("IPv4 rules left after the IPv6 failure:\n%s", after)
			}
		})
	}
}

// foreign are rules of other software, loaded before us; cleanup must leave them exactly as they were.
const foreignV4 = `*filter
:FOREIGN_FW - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A OUTPUT -j FOREIGN_FW
-A FOREIGN_FW -d 192.0.2.1/32 -j DROP
COMMIT
*nat
:FOREIGN_NAT - [0:0]
-A PREROUTING -p udp -m udp --dport 9999 -j FOREIGN_NAT
-A OUTPUT -d 198.51.100.7/32 -p tcp -j DNAT --to-destination 198.51.100.8:80
-A FOREIGN_NAT -j RETURN
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
*mangle
-A PREROUTING -p udp -j MARK --set-xmark 0x7/0xffffffff
-A OUTPUT -p tcp -m tcp --dport 8443 -j RETURN
COMMIT
*raw
-A PREROUTING -p udp -m udp --dport 4789 -j NOTRACK
-A OUTPUT -p udp -m udp --sport 4789 -j NOTRACK
COMMIT
`

const foreignV6 = `*filter
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
*nat
-A OUTPUT -d 2001:db8::7/128 -p tcp -j DNAT --to-destination [2001:db8::8]:80
COMMIT
*mangle
-A OUTPUT -p tcp -m tcp --dport 8443 -j RETURN
COMMIT
*raw
-A PREROUTING -p udp -m udp --dport 4789 -j NOTRACK
COMMIT
`

func TestCleanupLeavesForeignRules(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			for tool, rules := range map[string]string{"iptables": foreignV4, "ip6tables": foreignV6} {
				cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
				cmd.Stdin = strings.NewReader(rules)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("load foreign %s rules: %v: %s", tool, err, out)
				}
			}
			before, beforeIP := save(t, ns, v), ipState(t, ns)
			if err := Apply(context.Background(), mustBuild(t, fullConfig()), Options{Variant: v, NetNS: ns.Path()}); err != nil {
				t.Fatal(err)
			}
			if s := save(t, ns, v); !strings.Contains(s, "ISTIO_INBOUND") {
				t.Fatal("nothing applied")
			}
			// No flags: cleanup works from what the namespace holds.
			if err := Cleanup(context.Background(), Options{NetNS: ns.Path()}); err != nil {
				t.Fatal(err)
			}
			if after := save(t, ns, v); dropEmptyTables(after) != dropEmptyTables(before) {
				t.Errorf("cleanup did not restore the rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if after := ipState(t, ns); after != beforeIP {
				t.Errorf("cleanup did not restore routes and addresses:\nbefore:\n%s\nafter:\n%s", beforeIP, after)
			}
			// A second cleanup finds nothing to do and succeeds.
			if err := Cleanup(context.Background(), Options{NetNS: ns.Path()}); err != nil {
				t.Errorf("second cleanup: %v", err)
			}
		})
	}
}

// TestApplyFallsBackAfterPartialProgram: when the whole-table writer fails after programming part of a
// family, the splice takes over from what is there, without duplicating rules.
func TestApplyFallsBackAfterPartialProgram(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	plan := mustBuild(t, fullConfig())
	partial := func(fp *redirect.FamilyPlan, drop []string) error {
		first := *fp
		first.Tables = fp.Tables[:1] // mangle only, then "fail"
		if err := programLegacy(&first, drop); err != nil {
			return err
		}
		return errors.New("injected failure after the first table")
	}
	if err := Apply(context.Background(), plan, Options{Variant: VariantLegacy, NetNS: ns.Path(), program: partial}); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		have, err := stateIn(t, ns, VariantLegacy, fam)
		if err != nil {
			t.Fatal(err)
		}
		if d := Diff(have, PlanState(plan.Family(fam))); len(d) > 0 {
			t.Errorf("%s after the fallback:\n%s", fam, strings.Join(d, "\n"))
		}
	}
}

// recordingRunner keeps the input of every restore.
type recordingRunner struct {
	mu     sync.Mutex
	inputs []string
}

func (r *recordingRunner) Run(ctx context.Context, name string, args []string, stdin []byte, env []string) ([]byte, error) {
	if strings.HasSuffix(name, "-restore") {
		r.mu.Lock()
		r.inputs = append(r.inputs, string(stdin))
		r.mu.Unlock()
	}
	return execRunner{}.Run(ctx, name, args, stdin, env)
}

// TestNoNameLookups: installing, reinstalling into emptied tables, reconciling and cleaning up a pod
// namespace never hands iptables an owner match to parse, so no user or group name is ever looked up:
// no restore tool runs, also when other software's rules share the tables.
func TestNoNameLookups(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		for _, withForeign := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/foreign=%v", v, withForeign), func(t *testing.T) {
				ns := testutil.NewNetNS(t)
				if withForeign {
					for tool, rules := range map[string]string{"iptables": foreignV4, "ip6tables": foreignV6} {
						cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
						cmd.Stdin = strings.NewReader(rules)
						if out, err := cmd.CombinedOutput(); err != nil {
							t.Fatalf("load foreign %s rules: %v: %s", tool, err, out)
						}
					}
				}
				tproxy := fullConfig() // TPROXY: owner matches in mangle OUTPUT too
				changed := redirect.DefaultConfig()
				changed.IPv6, changed.ProxyUIDs, changed.ProxyGIDs = true, []uint32{1337, 1338}, []uint32{1337}
				apply := func(c redirect.Config, reconcile bool) func(Options) error {
					return func(o Options) error {
						o.Reconcile = reconcile
						return Apply(context.Background(), mustBuild(t, c), o)
					}
				}
				cleanup := func(o Options) error { return Cleanup(context.Background(), o) }
				steps := []struct {
					name    string
					do      func(Options) error
					want    *redirect.Plan // nil: nothing of ours left
					cleanup bool
				}{
					{"install", apply(tproxy, false), mustBuild(t, tproxy), false},
					{"cleanup", cleanup, nil, true},
					{"reinstall", apply(tproxy, false), mustBuild(t, tproxy), false},
					{"reconcile", apply(changed, true), mustBuild(t, changed), false},
					{"cleanup again", cleanup, nil, true},
				}
				for _, s := range steps {
					rec := &recordingRunner{}
					if err := s.do(Options{Variant: v, NetNS: ns.Path(), run: rec}); err != nil {
						t.Fatalf("%s: %v", s.name, err)
					}
					for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
						have, err := stateIn(t, ns, v, fam)
						if err != nil {
							t.Fatal(err)
						}
						want := State{}
						if s.want != nil {
							want = PlanState(s.want.Family(fam))
						}
						if d := Diff(have, want); len(d) > 0 {
							t.Errorf("%s: %s rules:\n%s", s.name, fam, strings.Join(d, "\n"))
						}
					}
					if withForeign && !strings.Contains(save(t, ns, v), "FOREIGN_NAT") {
						t.Fatalf("%s removed foreign rules", s.name)
					}
					// Every step is programmed from this process, shared tables spliced: no restore, so
					// no owner match is ever handed to libxt_owner.
					if len(rec.inputs) > 0 {
						t.Errorf("%s: the restore tool ran:\n%s", s.name, strings.Join(rec.inputs, "\n----\n"))
					}
				}
			})
		}
	}
}
