//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// shuntPlain runs `shunt ARGS...` in ns as they are, without a variant's
// flags, and returns its standard output and error (which carries standard
// error).
func shuntPlain(t *testing.T, ns *testutil.NetNS, args ...string) (string, error) {
	t.Helper()
	out, err := ns.Exec(nil, nil, append([]string{bins.Path(t, pkgShunt)}, args...)...)
	return string(out), err
}

// everything is all that any backend of shunt may change in ns: the whole
// nftables ruleset, the rules of both iptables variants in both families,
// policy routing, routes of every table and every address.
func everything(t *testing.T, ns *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "$ nft -s list ruleset\n%s", foreignTables(ns.Run(t, "nft", "-s", "list", "ruleset")))
	for _, v := range []string{"nft", "legacy"} {
		for _, v6 := range []bool{false, true} {
			fmt.Fprintf(&b, "$ %s\n%s", saveCommand(v, v6), normalizeSave(ns.Run(t, saveCommand(v, v6))))
		}
	}
	for _, argv := range append(routingCommands[:4:4], []string{"ip", "addr"}) {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), ns.Run(t, argv...))
	}
	return b.String()
}

// removals are the lines `shunt cleanup` prints for what fullArgs(mode)
// installs with variant v.
func removals(v variant, mode string) []string {
	var want []string
	if v == native {
		want = append(want, "removed nftables table inet istio-proxy-nat", "removed nftables table inet istio-proxy-raw")
		if mode == "TPROXY" {
			want = append(want, "removed nftables table inet istio-proxy-mangle")
		}
	} else {
		want = append(want, "removed iptables-"+string(v)+" IPv4: chains ISTIO_", "removed iptables-"+string(v)+" IPv6: chains ISTIO_")
	}
	if mode == "TPROXY" {
		for _, f := range []string{"IPv4", "IPv6"} {
			want = append(want, "removed ip rule fwmark 0x539 lookup 133 ("+f+")",
				"removed route local default dev lo table 133 ("+f+")")
		}
	}
	return append(want, "removed ::6/128 from lo")
}

// checkRemovals fails t unless out has a line starting with each of want,
// and no other line.
func checkRemovals(t *testing.T, out string, want []string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("cleanup output lacks %q:\n%s", w, out)
		}
	}
	if len(lines) != len(want) {
		t.Errorf("cleanup printed %d lines, want %d (%q):\n%s", len(lines), len(want), want, out)
	}
}

// TestCleanupWithoutFlags checks that `shunt cleanup` without any flag
// removes what every backend installed, says what it removed, and leaves
// the pod as it was; a second run finds nothing.
func TestCleanupWithoutFlags(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		before := everything(t, p.ns)
		p.capture(t, nil, fullArgs(mode)...)
		out, err := shuntPlain(t, p.ns, "cleanup")
		if err != nil {
			t.Fatalf("shunt cleanup: %v\n%s", err, out)
		}
		checkRemovals(t, out, removals(p.variant, mode))
		if diff := cmp.Diff(before, everything(t, p.ns)); diff != "" {
			t.Errorf("cleanup left the pod changed (-before +after):\n%s", diff)
		}
		out, err = shuntPlain(t, p.ns, "cleanup")
		if err != nil || out != "nothing of shunt's found\n" {
			t.Errorf("second cleanup: %v, output %q; want \"nothing of shunt's found\"", err, out)
		}
		// istio-iptables' spelling, without flags, the same way.
		p.capture(t, nil, fullArgs(mode)...)
		out, err = shuntPlain(t, p.ns, "iptables", "--cleanup-only")
		if err != nil {
			t.Fatalf("shunt iptables --cleanup-only: %v\n%s", err, out)
		}
		checkRemovals(t, out, removals(p.variant, mode))
		if diff := cmp.Diff(before, everything(t, p.ns)); diff != "" {
			t.Errorf("--cleanup-only left the pod changed (-before +after):\n%s", diff)
		}
	})
}

// twoBackendArgs is a TPROXY capture of both families without DNS: small,
// and with policy routing to remove.
var twoBackendArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY",
	"-i", "*", "-b", "*", "-d", "15090,15021,15020", "--ipv6=true"}

// TestCleanupTwoBackends installs shunt's rules with native nftables and
// with iptables-legacy in one namespace (and iptables-nft's in a second
// case). A cleanup narrowed to one backend removes that backend's rules and
// fails naming what remains in the other, leaving the policy routing the
// remaining rules use; a cleanup without flags removes everything.
func TestCleanupTwoBackends(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name     string
		backends [][]string // flags of each backend installed
		narrow   []string   // the flag of the narrowed cleanup
		remain   []string   // what it must name as remaining
	}{
		{"native+legacy", [][]string{{"--native-nftables"}, {"--force-iptables-binary", "legacy"}},
			[]string{"--native-nftables"}, []string{"iptables-legacy IPv4: chains ISTIO_", "iptables-legacy IPv6: chains ISTIO_"}},
		{"nft+legacy", [][]string{{"--force-iptables-binary", "nft"}, {"--force-iptables-binary", "legacy"}},
			[]string{"--force-iptables-binary", "legacy"}, []string{"iptables-nft IPv4: chains ISTIO_", "iptables-nft IPv6: chains ISTIO_"}},
		{"native+nft", [][]string{{"--native-nftables"}, {"--force-iptables-binary", "nft"}},
			[]string{"--force-iptables-binary", "nft"}, []string{"nftables table inet istio-proxy-nat", "nftables table inet istio-proxy-mangle"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := testutil.NewNetNS(t)
			before := everything(t, ns)
			for _, flags := range tc.backends {
				if out, err := shuntPlain(t, ns, append(append([]string{"iptables"}, flags...), twoBackendArgs...)...); err != nil {
					t.Fatalf("install with %v: %v\n%s", flags, err, out)
				}
			}
			installed := everything(t, ns)

			out, err := shuntPlain(t, ns, append([]string{"cleanup"}, tc.narrow...)...)
			flag := strings.Join(tc.narrow, " ")
			if err == nil {
				t.Fatalf("cleanup %s with rules in another backend succeeded:\n%s", flag, out)
			}
			for _, r := range tc.remain {
				if !strings.Contains(err.Error(), r) {
					t.Errorf("cleanup %s error does not name %q: %v", flag, r, err)
				}
			}
			if !strings.Contains(err.Error(), "run shunt cleanup without "+flag) {
				t.Errorf("cleanup %s error does not say to run without %s: %v", flag, flag, err)
			}
			if !strings.HasPrefix(out, "removed ") || strings.Contains(out, "ip rule") || strings.Contains(out, "::6") {
				t.Errorf("cleanup %s: want its backend's removals and no routing removed, got:\n%s", flag, out)
			}
			after := everything(t, ns)
			if after == installed {
				t.Errorf("cleanup %s removed nothing", flag)
			}
			for _, kept := range []string{"fwmark 0x539 lookup 133 proto 83", "::6/128"} {
				if !strings.Contains(after, kept) {
					t.Errorf("cleanup %s removed %q, which the remaining rules use", flag, kept)
				}
			}
			// The narrowed backend holds nothing of ours any more: a second
			// narrowed run removes nothing and still fails.
			out, err = shuntPlain(t, ns, append([]string{"cleanup"}, tc.narrow...)...)
			if err == nil || out != "" {
				t.Errorf("second cleanup %s: %v, output %q; want a failure removing nothing", flag, err, out)
			}

			out, err = shuntPlain(t, ns, "cleanup")
			if err != nil {
				t.Fatalf("cleanup: %v\n%s", err, out)
			}
			for _, r := range append(tc.remain, "removed ip rule fwmark 0x539 lookup 133 (IPv4)", "removed ::6/128 from lo") {
				if !strings.Contains(out, r) {
					t.Errorf("cleanup output lacks %q:\n%s", r, out)
				}
			}
			if diff := cmp.Diff(before, everything(t, ns)); diff != "" {
				t.Errorf("cleanup left the namespace changed (-before +after):\n%s", diff)
			}
		})
	}
}

// TestCleanupLeavesForeignRouting checks, for every backend and mode, that
// what was in the pod before shunt — ::6 on lo (Istio leaves it
// behind), a foreign fwmark rule whose table holds only a local default
// route via lo, foreign routes and addresses — is neither taken over by an
// apply nor removed by a cleanup, with or without flags; and that shunt's
// own TPROXY rule and route, marked proto 83, are removed.
func TestCleanupLeavesForeignRouting(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		ours := 0 // REDIRECT adds no policy routing
		if mode == "TPROXY" {
			ours = 4 // the fwmark rule and local route of each family
		}
		p.ns.Run(t, "ip", "-6", "addr", "add", "::6/128", "dev", "lo")
		p.ns.Run(t, "ip", "addr", "add", "::7/128", "dev", "lo")
		p.ns.Run(t, "ip", "addr", "add", "127.0.0.6/32", "dev", "lo")
		for _, f := range families {
			p.ns.Run(t, "ip", familyFlag(f), "rule", "add", "fwmark", "0x77", "lookup", "177")
			p.ns.Run(t, "ip", familyFlag(f), "route", "add", "local", "default", "dev", "lo", "table", "177")
			p.ns.Run(t, "ip", familyFlag(f), "route", "add", docPrefix(f), "dev", "eth1", "table", "178")
		}
		before := everything(t, p.ns)
		for _, cleanup := range [][]string{{"cleanup"}, append([]string{"cleanup"}, p.variant.args()...)} {
			p.capture(t, nil, fullArgs(mode)...)
			if s := everything(t, p.ns); strings.Count(s, "proto 83") != ours {
				t.Errorf("apply: want %d rules and routes marked proto 83:\n%s", ours, s)
			}
			out, err := shuntPlain(t, p.ns, cleanup...)
			if err != nil {
				t.Fatalf("%v: %v\n%s", cleanup, err, out)
			}
			if strings.Contains(out, "::6") || strings.Contains(out, "177") {
				t.Errorf("%v removed what was there before:\n%s", cleanup, out)
			}
			if diff := cmp.Diff(before, everything(t, p.ns)); diff != "" {
				t.Errorf("%v left the pod changed (-before +after):\n%s", cleanup, diff)
			}
		}
	})
}

// TestCleanupLeavesIdenticalRouting checks that a TPROXY rule and route
// identical to shunt's, there before shunt, stay shunt-free: the apply
// adds none of its own and the cleanup removes none.
func TestCleanupLeavesIdenticalRouting(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			ns := testutil.NewNetNS(t)
			for _, fam := range []string{"-4", "-6"} {
				ns.Run(t, "ip", fam, "rule", "add", "fwmark", "0x539", "lookup", "133")
				ns.Run(t, "ip", fam, "route", "add", "local", "default", "dev", "lo", "table", "133")
			}
			ns.Run(t, "ip", "-6", "addr", "add", "::6/128", "dev", "lo")
			before := everything(t, ns)
			if out, err := shuntPlain(t, ns, append(append([]string{"iptables"}, v.args()...), twoBackendArgs...)...); err != nil {
				t.Fatalf("install: %v\n%s", err, out)
			}
			if s := everything(t, ns); strings.Contains(s, "proto 83") {
				t.Errorf("apply added routing although identical routing was there:\n%s", s)
			}
			out, err := shuntPlain(t, ns, "cleanup")
			if err != nil {
				t.Fatalf("cleanup: %v\n%s", err, out)
			}
			if strings.Contains(out, "ip rule") || strings.Contains(out, "route") || strings.Contains(out, "::6") {
				t.Errorf("cleanup removed routing it did not add:\n%s", out)
			}
			if diff := cmp.Diff(before, everything(t, ns)); diff != "" {
				t.Errorf("cleanup left the namespace changed (-before +after):\n%s", diff)
			}
		})
	}
}

// TestCleanupCreatesNothing checks that a cleanup of every backend, and of
// each backend alone, in a namespace without tables reads without creating
// any: no legacy table (listing one instantiates it), no nftables table.
func TestCleanupCreatesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	for _, args := range [][]string{{"cleanup"}, {"cleanup", "--native-nftables"},
		{"cleanup", "--force-iptables-binary", "nft"}, {"cleanup", "--force-iptables-binary", "legacy"}} {
		out, err := shuntPlain(t, ns, args...)
		if err != nil || out != "nothing of shunt's found\n" {
			t.Errorf("%v: %v, output %q; want \"nothing of shunt's found\"", args, err, out)
		}
		tables := ns.Run(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names") + ns.Run(t, "nft", "list", "tables")
		if tables != "" {
			t.Fatalf("%v created tables:\n%s", args, tables)
		}
	}
}
