package iptables

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

// foreignRules returns iptables-restore input (for --noflush) adding another program's chains and
// rules to built-in chains, with the matches and targets shunt and Istio use and some shunt never
// writes.
func foreignRules(r *rand.Rand, fam redirect.Family) string {
	pick := func(n int) bool { return r.IntN(n) == 0 }
	not := func() string {
		if pick(3) {
			return "! "
		}
		return ""
	}
	addrs := []string{"10.0.0.0/8", "192.168.7.1/32", "172.16.0.0/13", "10.1.2.3/31"}
	if fam == redirect.IPv6 {
		addrs = []string{"fd00::/16", "2001:db8::1/128", "fd12:3456::/33", "2001:db8::/127"}
	}
	var b strings.Builder
	for _, table := range []string{"nat", "mangle", "raw"} {
		if pick(3) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n:FOREIGN_%s - [0:0]\n", table, strings.ToUpper(table))
		chains := slices.Concat(xtBuiltinChains[table], []string{"FOREIGN_" + strings.ToUpper(table)})
		for range 1 + r.IntN(6) {
			chain := chains[r.IntN(len(chains))]
			var w []string
			if pick(3) {
				w = append(w, not()+"-s "+addrs[r.IntN(len(addrs))])
			}
			if pick(3) {
				w = append(w, not()+"-d "+addrs[r.IntN(len(addrs))])
			}
			in := chain == "PREROUTING" || chain == "INPUT" || chain == "FORWARD"
			if pick(3) && in {
				w = append(w, not()+"-i "+[]string{"eth0", "veth+", "lo"}[r.IntN(3)])
			}
			if pick(3) && !in {
				w = append(w, not()+"-o "+[]string{"eth1", "cali+", "lo"}[r.IntN(3)])
			}
			proto := ""
			if pick(2) {
				proto = []string{"tcp", "udp"}[r.IntN(2)]
				w = append(w, "-p "+proto)
			}
			if proto != "" && pick(2) {
				switch r.IntN(4) {
				case 0:
					w = append(w, "-m "+proto+" "+not()+"--dport "+fmt.Sprint(1+r.IntN(65000)))
				case 1:
					w = append(w, "-m "+proto+" "+not()+"--sport "+fmt.Sprint(1+r.IntN(65000)))
				case 2:
					w = append(w, fmt.Sprintf("-m multiport %s--dports %d,%d", not(), 1+r.IntN(999), 1000+r.IntN(999)))
				case 3:
					w = append(w, fmt.Sprintf("-m %s --dport %d:%d", proto, 100, 200+r.IntN(99))) // a range: unknown
				}
			}
			if pick(4) {
				w = append(w, "-m conntrack --ctstate "+[]string{"NEW", "ESTABLISHED,RELATED", "INVALID", "NEW,UNTRACKED"}[r.IntN(4)])
			}
			if pick(4) {
				w = append(w, fmt.Sprintf("-m mark %s--mark 0x%x", not(), 1+r.IntN(0xffff)))
			}
			if pick(5) {
				w = append(w, fmt.Sprintf("-m connmark %s--mark 0x%x", not(), 1+r.IntN(0xffff)))
			}
			if pick(4) && chain == "OUTPUT" {
				w = append(w, fmt.Sprintf("-m owner %s--%s-owner %d", not(), []string{"uid", "gid"}[r.IntN(2)], r.IntN(3000)))
			}
			if pick(6) {
				w = append(w, fmt.Sprintf("-m comment --comment \"foreign %d\"", r.IntN(100)))
			}
			if pick(8) {
				w = append(w, "-m addrtype --dst-type LOCAL") // unknown to shunt
			}
			targets := []string{"ACCEPT", "RETURN", "LOG --log-prefix x", "FOREIGN_" + strings.ToUpper(table)}
			if table != "nat" {
				targets = append(targets, "DROP")
			}
			if table == "nat" && (chain == "PREROUTING" || chain == "OUTPUT") && proto != "" {
				targets = append(targets, fmt.Sprintf("REDIRECT --to-ports %d", 1+r.IntN(65000)))
			}
			if table == "mangle" {
				targets = append(targets, fmt.Sprintf("MARK --set-xmark 0x%x/0xffffffff", r.IntN(0xffff)), "CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff")
			}
			target := targets[r.IntN(len(targets))]
			if strings.HasPrefix(target, "FOREIGN_") && (chain != "OUTPUT" || strings.HasPrefix(chain, "FOREIGN_")) {
				target = "ACCEPT"
			}
			if target == "RETURN" && !strings.HasPrefix(chain, "FOREIGN_") && pick(2) {
				target = "ACCEPT"
			}
			w = append(w, "-j "+target)
			fmt.Fprintf(&b, "-A %s %s\n", chain, strings.Join(w, " "))
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// sameTables compares an in-process read with the tool's: the same tables, chains, policies and
// rules, where the in-process read may hold placeholders for rules it does not know. It returns the
// differences and the number of placeholders.
func sameTables(got, want map[string]*SavedTable) (diff string, unknown int) {
	g := map[string]*SavedTable{}
	for name, t := range got {
		c := *t
		c.Rules = map[string][]string{}
		for chain, specs := range t.Rules {
			for i, spec := range specs {
				if strings.HasPrefix(spec, "-m unknown-to-shunt ") && i < len(want[name].Rules[chain]) {
					unknown++
					spec = want[name].Rules[chain][i]
				}
				c.Rules[chain] = append(c.Rules[chain], spec)
			}
		}
		g[name] = &c
	}
	return cmp.Diff(want, g), unknown
}

// readBoth reads fam's rules in ns in-process and with the save tool.
func readBoth(t *testing.T, ns *testutil.NetNS, v Variant, fam redirect.Family) (got, want map[string]*SavedTable, took [2]time.Duration) {
	t.Helper()
	start := time.Now()
	var k *kernelTables
	if err := ns.Do(func() (err error) { k, err = readKernel(v, fam); return err }); err != nil {
		t.Fatalf("read in-process: %v", err)
	}
	took[0] = time.Since(start)
	tool := "iptables"
	if fam == redirect.IPv6 {
		tool = "ip6tables"
	}
	start = time.Now()
	out, err := ns.Exec(nil, nil, tool+"-"+string(v)+"-save")
	if err != nil {
		t.Fatalf("%s-%s-save: %v", tool, v, err)
	}
	took[1] = time.Since(start)
	want, err = ParseSave(out)
	if err != nil {
		t.Fatal(err)
	}
	return k.tables, want, took
}

func TestReadKernelFullConfig(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			plan := mustBuild(t, fullConfig())
			if err := Apply(t.Context(), plan, Options{Variant: v, NetNS: ns.Path(), run: execRunnerIn(ns)}); err != nil {
				t.Fatal(err)
			}
			for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
				got, want, _ := readBoth(t, ns, v, fam)
				if d, n := sameTables(got, want); d != "" || n > 0 {
					t.Errorf("%s: %d unknown; (-tool +in-process):\n%s", fam, n, d)
				}
			}
		})
	}
}

// TestReadKernelMatchesSave: for random configurations applied over random foreign rules, the rules
// read in-process are those iptables-save prints — ours and foreign ones alike, rules the decoder
// does not know as placeholders at their positions — in both variants and families.
func TestReadKernelMatchesSave(t *testing.T) {
	testutil.RequireRoot(t)
	const cases = 30
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			r := rand.New(rand.NewPCG(13, uint64(len(v))))
			unknown, rules := 0, 0
			var took [2]time.Duration
			for i := range cases {
				ns := testutil.NewNetNS(t)
				cfg := randconfig.Config(r, redirect.DefaultConfig())
				plan := mustBuild(t, cfg)
				for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
					tool := "iptables"
					if fam == redirect.IPv6 {
						tool = "ip6tables"
					}
					input := foreignRules(r, fam)
					cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
					cmd.Stdin = strings.NewReader(input)
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("case %d: foreign rules: %v: %s\n%s", i, err, out, input)
					}
				}
				if err := Apply(t.Context(), plan, Options{Variant: v, NetNS: ns.Path(), run: execRunnerIn(ns)}); err != nil {
					t.Fatalf("case %d: apply: %v", i, err)
				}
				for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
					got, want, d := readBoth(t, ns, v, fam)
					took[0] += d[0]
					took[1] += d[1]
					diff, n := sameTables(got, want)
					if diff != "" {
						t.Errorf("case %d %s: (-iptables-save +in-process):\n%s", i, fam, diff)
					}
					unknown += n
					// Ours are told from the foreign ones as with the tool's text.
					if d := cmp.Diff(OwnedState(want), OwnedState(got)); d != "" {
						t.Errorf("case %d %s: our rules (-iptables-save +in-process):\n%s", i, fam, d)
					}
					for _, tb := range want {
						for _, specs := range tb.Rules {
							rules += len(specs)
						}
					}
					// A placeholder stands only for a rule shunt could not have written.
					for name, tb := range got {
						for chain, specs := range tb.Rules {
							for j, spec := range specs {
								if w := want[name].Rules[chain][j]; strings.HasPrefix(spec, "-m unknown-to-shunt ") {
									// (savedRule takes any conntrack state; shunt writes four.)
									if r, exact := savedRule(w); exact && (r.CTState == nil || validStates(r.CTState)) {
										t.Errorf("case %d %s: %s/%s rule %d %q read as %q", i, fam, name, chain, j+1, w, spec)
									}
								}
							}
						}
					}
				}
			}
			t.Logf("%d cases, %d rules, %d placeholders; reads in-process %v, with the save tool %v", cases, rules, unknown, took[0], took[1])
		})
	}
}

func validStates(states []string) bool {
	_, err := xtConntrackState(states)
	return err == nil
}

// FuzzDecodeNFTRule: arbitrary expression attributes never make the nft decoder panic.
func FuzzDecodeNFTRule(f *testing.F) {
	for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		for _, r := range mustBuild(f, fullConfig()).Family(fam).Tables[0].Chains[0].Rules {
			exprs, err := nftExprs(&r, fam)
			if err != nil {
				f.Fatal(err)
			}
			var seed []byte
			for _, e := range exprs {
				b, err := expr.Marshal(unix.NFPROTO_IPV4, e)
				if err != nil {
					f.Fatal(err)
				}
				seed = append(seed, byte(len(b)), byte(len(b)>>8))
				seed = append(seed, b...)
			}
			f.Add(seed, fam == redirect.IPv6)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, v6 bool) {
		fam := redirect.IPv4
		if v6 {
			fam = redirect.IPv6
		}
		var ex []nftExpr
		ud := udataComment(data)
		for len(data) >= 2 {
			n := min(int(data[0])|int(data[1])<<8, len(data)-2)
			e, err := decodeNFTExpr(data[2 : 2+n])
			data = data[2+n:]
			if err == nil {
				ex = append(ex, e)
			}
		}
		nftRuleSpec(ex, fam, ud)
	})
}

// FuzzDecodeLegacyTable: arbitrary entry bytes never make the legacy decoder panic.
func FuzzDecodeLegacyTable(f *testing.F) {
	for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		lay := legacyV4
		if fam == redirect.IPv6 {
			lay = legacyV6
		}
		for _, tb := range mustBuild(f, fullConfig()).Family(fam).Tables {
			blob, hooks, under, _, err := tableBlob(&lay, fam, &tb, 1<<0|1<<3)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(blob, fam == redirect.IPv6, hooks[3], under[3])
		}
	}
	f.Fuzz(func(t *testing.T, blob []byte, v6 bool, hook, under uint32) {
		fam, lay := redirect.IPv4, legacyV4
		if v6 {
			fam, lay = redirect.IPv6, legacyV6
		}
		li := legacyInfo{validHooks: 1<<0 | 1<<3}
		li.hookEntry[3], li.underflow[3] = hook, under
		_, _ = decodeLegacyTable(newKernelTables(), &lay, fam, "nat", blob, li)
	})
}

// noExec is a runner that fails every command: there is no binary.
type noExec struct{ calls []string }

func (n *noExec) Run(_ context.Context, name string, _ []string, _ []byte, _ []string) ([]byte, error) {
	n.calls = append(n.calls, name)
	return nil, fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// TestRerunWithoutBinaries is the init container's first and second run: with no binary on PATH, Apply
// installs the rules (beside another program's rules or not); then Apply of the same plan finds them
// in place, Check passes, Find and Counters see them, a reconcile replaces them and Cleanup removes
// them, foreign rules or not — all without starting a command.
func TestRerunWithoutBinaries(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		for _, foreign := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/foreign=%v", v, foreign), func(t *testing.T) {
				ns := testutil.NewNetNS(t)
				plan := mustBuild(t, fullConfig())
				if foreign {
					for _, tool := range []string{"iptables", "ip6tables"} {
						cmd := ns.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
						cmd.Stdin = strings.NewReader("*nat\n:FOREIGN - [0:0]\n-A OUTPUT -p tcp -m tcp --dport 9 -j FOREIGN\n-A FOREIGN -m comment --comment \"x\" -j RETURN\nCOMMIT\n*mangle\n-A PREROUTING -m addrtype --dst-type LOCAL -j ACCEPT\nCOMMIT\n")
						if out, err := cmd.CombinedOutput(); err != nil {
							t.Fatalf("foreign rules: %v: %s", err, out)
						}
					}
				}
				path := os.Getenv("PATH")
				t.Setenv("PATH", t.TempDir())
				install := &noExec{}
				if err := Apply(t.Context(), plan, Options{Variant: v, NetNS: ns.Path(), run: install}); err != nil || len(install.calls) > 0 {
					t.Fatalf("install: %v, commands %v", err, install.calls)
				}
				t.Setenv("PATH", path)
				before := save(t, ns, v)
				for _, fam := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
					got, want, _ := readBoth(t, ns, v, fam)
					if d, _ := sameTables(got, want); d != "" {
						t.Fatalf("%s: (-iptables-save +in-process):\n%s", fam, d)
					}
				}
				t.Setenv("PATH", t.TempDir())
				run := &noExec{}
				var logs testutil.LockedBuffer
				opts := Options{Variant: v, NetNS: ns.Path(), run: run, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
				start := time.Now()
				if err := Apply(t.Context(), plan, opts); err != nil {
					t.Fatalf("re-run: %v\n%s\n%s", err, logs.String(), before)
				}
				t.Logf("re-run without binaries: %v", time.Since(start))
				if n := strings.Count(logs.String(), "rules already in place"); n != len(plan.Families) {
					t.Errorf("re-run: %d families in place, want %d:\n%s", n, len(plan.Families), logs.String())
				}
				if err := Check(t.Context(), plan, opts); err != nil {
					t.Errorf("check: %v", err)
				}
				found, err := Find(t.Context(), opts)
				if err != nil || len(found) != len(plan.Families) {
					t.Errorf("find: %v, %v", found, err)
				}
				cs, err := Counters(t.Context(), opts)
				if err != nil || len(cs) == 0 {
					t.Errorf("counters: %d, %v", len(cs), err)
				}
				if len(run.calls) > 0 || strings.Contains(logs.String(), "level=WARN") {
					t.Errorf("commands started: %v\n%s", run.calls, logs.String())
				}
				t.Setenv("PATH", path)
				if after := save(t, ns, v); after != before {
					t.Errorf("the re-run changed the rules:\n%s", cmp.Diff(before, after))
				}
				// A reconcile to another configuration and the cleanup, shared tables spliced, run no
				// command either.
				t.Setenv("PATH", t.TempDir())
				changed := redirect.DefaultConfig()
				changed.ProxyPort, changed.IPv6 = 16001, true
				reconcile := opts
				reconcile.Reconcile = true
				if err := Apply(t.Context(), mustBuild(t, changed), reconcile); err != nil {
					t.Errorf("reconcile: %v", err)
				}
				if err := Cleanup(t.Context(), opts); err != nil {
					t.Errorf("cleanup: %v", err)
				}
				if len(run.calls) > 0 || strings.Contains(logs.String(), "level=WARN") {
					t.Errorf("commands started: %v\n%s", run.calls, logs.String())
				}
				t.Setenv("PATH", path)
				after := save(t, ns, v)
				if strings.Contains(after, "ISTIO") || foreign && !strings.Contains(after, "FOREIGN") {
					t.Errorf("cleanup left rules of ours or removed foreign ones:\n%s", after)
				}
			})
		}
	}
}
