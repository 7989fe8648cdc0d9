//go:build linux

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// The tests in this file hold the native nftables backend (--native-nftables)
// to byte-for-byte standards: re-runs, drift, reconcile and cleanup read the
// whole ruleset with `nft -a list ruleset`, handles and counters included.
// They run in bare namespaces (lo only), where no packet moves a counter;
// the variant's flows and the lifecycle with traffic are in the
// variant-parameterised tests (forEachPod). nft only reads here, except to
// load the tables of other software in TestNativeCleanupKeepsForeignTables.

// nativeTables are the tables shunt owns in native mode, all inet.
var nativeTables = []string{"istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"}

// driftError is what a refused apply over different tables of ours says.
const driftError = "installed nftables rules differ from this configuration"

// nativeShunt runs `shunt SUBCOMMAND --native-nftables ARGS...` in ns with
// env added to its environment, and fails t on error.
func nativeShunt(t *testing.T, ns *testutil.NetNS, env []string, args ...string) string {
	t.Helper()
	out, err := shuntIn(t, ns, native, env, args...)
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s", err, out)
	}
	return out
}

// nftState returns everything shunt may change in ns, exactly: the whole
// nftables ruleset with handles and counters, policy routing, the routes of
// every table and lo's addresses.
func nftState(t *testing.T, ns *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	for _, argv := range append([][]string{{"nft", "-a", "list", "ruleset"}}, routingCommands...) {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), ns.Run(t, argv...))
	}
	return b.String()
}

// nftRules returns ns's ruleset without handles and counters, and with
// routing its policy routing, routes and lo's addresses too: what two
// namespaces programmed alike share.
func nftRules(t *testing.T, ns *testutil.NetNS, routing bool) string {
	t.Helper()
	argvs := [][]string{{"nft", "-s", "list", "ruleset"}}
	if routing {
		argvs = append(argvs, routingCommands...)
	}
	var b strings.Builder
	for _, argv := range argvs {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), ns.Run(t, argv...))
	}
	return b.String()
}

// withoutNativeTables returns an `nft list ruleset` listing without shunt's
// tables.
func withoutNativeTables(ruleset string) string {
	var b strings.Builder
	skip := false
	for line := range strings.Lines(ruleset) {
		if f := strings.Fields(line); strings.HasPrefix(line, "table ") && len(f) >= 3 {
			skip = f[1] == "inet" && slices.Contains(nativeTables, f[2])
		}
		if !skip {
			b.WriteString(line)
		}
		if line == "}\n" {
			skip = false
		}
	}
	return b.String()
}

// requireNativeTables fails t unless the ruleset holds shunt's nat table and,
// in TPROXY mode, its mangle table.
func requireNativeTables(t *testing.T, ruleset, mode string) {
	t.Helper()
	want := []string{"istio-proxy-nat"}
	if mode == "TPROXY" {
		want = append(want, "istio-proxy-mangle")
	}
	for _, table := range want {
		if !strings.Contains(ruleset, "table inet "+table+" {") {
			t.Fatalf("no table inet %s:\n%s", table, ruleset)
		}
	}
}

// TestNativeApplyTwice checks that applying the same configuration again
// succeeds and changes nothing at all: the ruleset, handles and counters
// included, the routing and lo stay byte for byte what one apply left.
func TestNativeApplyTwice(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ns := testutil.NewNetNS(t)
			apply := append([]string{"iptables"}, fullArgs(mode)...)
			nativeShunt(t, ns, nil, apply...)
			once := nftState(t, ns)
			requireNativeTables(t, once, mode)
			nativeShunt(t, ns, nil, apply...)
			if diff := cmp.Diff(once, nftState(t, ns)); diff != "" {
				t.Errorf("second apply changed the namespace (-once +twice):\n%s", diff)
			}
		})
	}
}

// TestNativeDrift applies one configuration, then another: without
// --reconcile it fails with the drift error and changes nothing, byte for
// byte; with --reconcile it succeeds and leaves the rules a fresh apply of
// the new configuration leaves in a fresh namespace, after which the new
// configuration applies again as a no-op.
func TestNativeDrift(t *testing.T) {
	testutil.RequireRoot(t)
	noDNS := func(mode string) []string { return append(injectorArgs(mode), "--ipv6=true") }
	cases := []struct {
		name     string
		old, new []string
		// routing: the reconciled policy routing, routes and lo addresses
		// equal a fresh apply's too. Not when the new configuration needs
		// less of them: reconcile adds TPROXY routing and ::6 but removes
		// neither (internal/podroute, as with the iptables variants).
		routing bool
	}{
		{"ports", fullArgs("REDIRECT"), append(fullArgs("REDIRECT"), "-o", "9090", "-d", "15090,15021,15020,8081"), true},
		{"redirect_to_tproxy", fullArgs("REDIRECT"), fullArgs("TPROXY"), true},
		{"tproxy_to_redirect", fullArgs("TPROXY"), fullArgs("REDIRECT"), false},
		{"dns_off", fullArgs("TPROXY"), noDNS("TPROXY"), true},    // the raw table goes
		{"dns_on", noDNS("REDIRECT"), fullArgs("REDIRECT"), true}, // the raw table comes
		{"ipv6_off", fullArgs("REDIRECT"), append(fullArgs("REDIRECT"), "--ipv6=false"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := testutil.NewNetNS(t)
			nativeShunt(t, ns, nil, append([]string{"iptables"}, tc.old...)...)
			before := nftState(t, ns)

			apply := append([]string{"iptables"}, tc.new...)
			out, err := shuntIn(t, ns, native, nil, apply...)
			if err == nil || !strings.Contains(err.Error(), driftError) {
				t.Errorf("apply of another configuration: got %v, want an error saying %q\nstdout:\n%s", err, driftError, out)
			}
			if diff := cmp.Diff(before, nftState(t, ns)); diff != "" {
				t.Errorf("refused apply changed the namespace (-before +after):\n%s", diff)
			}

			nativeShunt(t, ns, nil, append(apply, "--reconcile")...)
			reconciled := nftState(t, ns)
			fresh := testutil.NewNetNS(t)
			nativeShunt(t, fresh, nil, apply...)
			if diff := cmp.Diff(nftRules(t, fresh, tc.routing), nftRules(t, ns, tc.routing)); diff != "" {
				t.Errorf("reconciled namespace differs from a fresh apply (-fresh +reconciled):\n%s", diff)
			}
			nativeShunt(t, ns, nil, apply...)
			if diff := cmp.Diff(reconciled, nftState(t, ns)); diff != "" {
				t.Errorf("apply after reconcile changed the namespace (-reconciled +again):\n%s", diff)
			}
		})
	}
}

// foreignNFTRuleset is what other software keeps in native nftables next to
// shunt: an inet filter table with a set, base chains and a regular chain,
// an ip6 nat table, and tables named like shunt's: one in another family,
// one with shunt's prefix.
const foreignNFTRuleset = `table inet filter {
	set blocked {
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2 }
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @blocked counter drop
		tcp dport 7777 jump foreign
	}
	chain foreign {
		ip6 saddr 2001:db8::/64 counter drop
		counter accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
		udp dport 7778 counter accept
	}
}
table ip6 nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 7777 redirect to :7778
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth1" masquerade
	}
}
table ip istio-proxy-nat {
	chain output {
		type nat hook output priority -100; policy accept;
		tcp dport 7777 counter return
	}
}
table inet istio-proxy-filter {
	chain output {
		type filter hook output priority 0; policy accept;
		counter
	}
}
`

// foreignIptablesNFT are rules other software adds with iptables-nft: the
// tables ip nat, ip mangle (with a user chain) and ip6 filter.
var foreignIptablesNFT = [][]string{
	{"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"},
	{"iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7777", "-j", "RETURN"},
	{"iptables-nft", "-t", "mangle", "-N", "FOREIGN_MANGLE"},
	{"iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "7777", "-j", "FOREIGN_MANGLE"},
	{"iptables-nft", "-t", "mangle", "-A", "FOREIGN_MANGLE", "-j", "MARK", "--set-mark", "0x77"},
	{"ip6tables-nft", "-A", "OUTPUT", "-p", "udp", "--dport", "7778", "-j", "ACCEPT"},
}

// TestNativeCleanupKeepsForeignTables loads the tables of other software
// (native nftables and iptables-nft), policy routing and an lo address,
// applies, checks that every foreign table is byte for byte what it was
// while shunt's tables are there, then cleans up twice and checks that the
// namespace is byte for byte what it was before the apply.
func TestNativeCleanupKeepsForeignTables(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ns := testutil.NewNetNS(t)
			load := ns.Command(nil, "nft", "-f", "-")
			load.Stdin = strings.NewReader(foreignNFTRuleset)
			if out, err := load.CombinedOutput(); err != nil {
				t.Fatalf("nft -f: %v: %s", err, out)
			}
			for _, argv := range foreignIptablesNFT {
				ns.Run(t, argv...)
			}
			ns.Run(t, "ip", "rule", "add", "fwmark", "0x77", "lookup", "177", "pref", "500")
			ns.Run(t, "ip", "route", "add", "192.0.2.0/24", "dev", "lo", "table", "177")
			ns.Run(t, "ip", "addr", "add", "::7/128", "dev", "lo")
			before := nftState(t, ns)
			foreign := ns.Run(t, "nft", "-a", "list", "ruleset")
			for _, table := range []string{"table inet filter {", "table ip6 nat {", "table ip nat {", "table ip mangle {",
				"table ip6 filter {", "table ip istio-proxy-nat {", "table inet istio-proxy-filter {"} {
				if !strings.Contains(foreign, table) {
					t.Fatalf("foreign state lacks %s:\n%s", table, foreign)
				}
			}

			nativeShunt(t, ns, nil, append([]string{"iptables"}, fullArgs(mode)...)...)
			during := ns.Run(t, "nft", "-a", "list", "ruleset")
			requireNativeTables(t, during, mode)
			if diff := cmp.Diff(foreign, withoutNativeTables(during)); diff != "" {
				t.Errorf("apply changed foreign tables (-before +after):\n%s", diff)
			}

			for _, round := range []string{"cleanup", "second cleanup"} {
				nativeShunt(t, ns, nil, "cleanup")
				if diff := cmp.Diff(before, nftState(t, ns)); diff != "" {
					t.Errorf("%s left the namespace changed (-before +after):\n%s", round, diff)
				}
			}
		})
	}
}

// TestNativeNoBinary runs `shunt iptables --native-nftables` and `shunt
// cleanup --native-nftables` with PATH an empty directory: they need no nft,
// iptables or other binary, and do what they do with the usual PATH.
func TestNativeNoBinary(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := []string{"PATH=" + t.TempDir()}
			ns := testutil.NewNetNS(t)
			// The environment reaches what ip netns exec runs: nft is
			// nowhere to be found.
			if out, err := ns.Exec(nil, env, "nft", "--version"); err == nil {
				t.Fatalf("nft found with %s: %s", env[0], out)
			}
			before := nftState(t, ns)
			nativeShunt(t, ns, env, append([]string{"iptables"}, fullArgs(mode)...)...)
			requireNativeTables(t, ns.Run(t, "nft", "list", "ruleset"), mode)
			withPath := testutil.NewNetNS(t)
			nativeShunt(t, withPath, nil, append([]string{"iptables"}, fullArgs(mode)...)...)
			if diff := cmp.Diff(nftRules(t, withPath, true), nftRules(t, ns, true)); diff != "" {
				t.Errorf("apply without binaries differs from one with PATH (-with +without):\n%s", diff)
			}
			nativeShunt(t, ns, env, "cleanup")
			if diff := cmp.Diff(before, nftState(t, ns)); diff != "" {
				t.Errorf("cleanup without binaries left the namespace changed (-before +after):\n%s", diff)
			}
		})
	}
}
