//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// fullArgs is the configuration that touches everything: every table of
// both families, and in TPROXY mode the policy routing.
func fullArgs(mode string) []string {
	return append(injectorArgs(mode), "--redirect-dns",
		"--dns-servers="+ipv4.remote.String()+","+ipv6.remote.String(), "--ipv6=true")
}

// TestApplyTwice checks that applying the same configuration again, also
// with --force-apply, leaves the pod exactly as one apply does.
func TestApplyTwice(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		p.capture(t, nil, fullArgs(mode)...)
		once := p.state(t)
		if output := p.variant.chain("ISTIO_OUTPUT"); !strings.Contains(once, output) {
			t.Fatalf("no %s after apply:\n%s", output, once)
		}
		p.capture(t, nil, fullArgs(mode)...)
		if diff := cmp.Diff(once, p.state(t)); diff != "" {
			t.Errorf("second apply changed the pod (-once +twice):\n%s", diff)
		}
		p.capture(t, nil, append(fullArgs(mode), "--force-apply")...)
		if diff := cmp.Diff(once, p.state(t)); diff != "" {
			t.Errorf("apply with --force-apply changed the pod (-once +forced):\n%s", diff)
		}
	})
}

// TestReconcile checks that applying a different configuration over the
// rules fails and changes nothing, and that with --reconcile it leaves the
// pod as a fresh apply of the new configuration does.
func TestReconcile(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		p.capture(t, nil, fullArgs(mode)...)
		old := p.state(t)
		changed := append(fullArgs(mode), "-o", "9090", "-d", "15090,15021,15020,8081")
		if out, err := p.shuntErr(t, nil, append([]string{"iptables"}, changed...)...); err == nil {
			t.Errorf("apply of a different configuration succeeded without --reconcile:\n%s", out)
		}
		if diff := cmp.Diff(old, p.state(t)); diff != "" {
			t.Errorf("refused apply changed the pod (-before +after):\n%s", diff)
		}
		p.capture(t, nil, append(changed, "--reconcile")...)
		reconciled := p.state(t)
		p.uncapture(t)
		p.capture(t, nil, changed...)
		if diff := cmp.Diff(p.state(t), reconciled); diff != "" {
			t.Errorf("reconciled pod differs from a fresh apply (-fresh +reconciled):\n%s", diff)
		}
	})
}

// TestReconcileToLess checks that settings needing less than the installed
// ones are drift — refused without --reconcile, changing nothing — and that
// --reconcile removes what they no longer need: the IPv6 rules and shunt's
// ::6 after --ipv6=false, TPROXY's policy routing after -m REDIRECT. The pod
// is then as a fresh apply of the new settings leaves it, and a re-run of
// them changes nothing.
func TestReconcileToLess(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		type step struct {
			args []string
			errs []string // what the refusal must say
		}
		drift := "differ from this configuration"
		steps := []step{{append(fullArgs(mode), "--ipv6=false"), []string{drift}}}
		if p.variant != native {
			steps[0].errs = append(steps[0].errs, "IPv6: installed rules", "chain ISTIO_INBOUND is not part of this configuration")
		}
		if mode == "TPROXY" {
			steps = append(steps, step{append(fullArgs("REDIRECT"), "--ipv6=false"), []string{drift}})
		}
		p.capture(t, nil, fullArgs(mode)...)
		for _, s := range steps {
			old := p.state(t)
			out, err := p.shuntErr(t, nil, append([]string{"iptables"}, s.args...)...)
			for _, want := range s.errs {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("apply %v over the installed rules: %v, want an error saying %q\n%s", s.args, err, want, out)
				}
			}
			if diff := cmp.Diff(old, p.state(t)); diff != "" {
				t.Errorf("refused apply %v changed the pod (-before +after):\n%s", s.args, diff)
			}
			p.capture(t, nil, append(s.args, "--reconcile")...)
			reconciled := p.state(t)
			if strings.Contains(reconciled, "::6/128") {
				t.Errorf("reconcile to %v left ::6 on lo:\n%s", s.args, reconciled)
			}
			if !slices.Contains(s.args, "TPROXY") && strings.Contains(reconciled, "lookup 133") {
				t.Errorf("reconcile to %v left TPROXY's policy routing:\n%s", s.args, reconciled)
			}
			p.capture(t, nil, s.args...)
			if diff := cmp.Diff(reconciled, p.state(t)); diff != "" {
				t.Errorf("re-run of %v after reconcile changed the pod (-reconciled +again):\n%s", s.args, diff)
			}
			p.uncapture(t)
			p.capture(t, nil, s.args...)
			if diff := cmp.Diff(p.state(t), reconciled); diff != "" {
				t.Errorf("pod reconciled to %v differs from a fresh apply (-fresh +reconciled):\n%s", s.args, diff)
			}
		}
	})
}

// foreignRules are rules someone else installed in every table, including
// user chains, before shunt runs; %s is a documentation prefix of the family.
const foreignRules = `*filter
:FOREIGN_FILTER - [0:0]
-A INPUT -p tcp --dport 7777 -j FOREIGN_FILTER
-A FOREIGN_FILTER -s %s -j DROP
-A OUTPUT -p udp --dport 7778 -j ACCEPT
COMMIT
*nat
:FOREIGN_NAT - [0:0]
-A PREROUTING -p tcp --dport 7777 -j RETURN
-A OUTPUT -j FOREIGN_NAT
-A FOREIGN_NAT -p tcp --dport 7777 -j RETURN
-A POSTROUTING -o eth1 -p udp --dport 7777 -j MASQUERADE
COMMIT
*mangle
:FOREIGN_MANGLE - [0:0]
-A PREROUTING -p tcp --dport 7777 -j MARK --set-mark 0x77
-A OUTPUT -p tcp --dport 7777 -j FOREIGN_MANGLE
COMMIT
*raw
-A PREROUTING -p udp --dport 7777 -j CT --notrack
-A OUTPUT -p udp --dport 7777 -j RETURN
COMMIT
`

// foreignNFT is a native nftables table someone else installed.
const foreignNFT = "add table inet foreign; " +
	"add chain inet foreign out { type filter hook output priority 10; policy accept; }; " +
	"add rule inet foreign out tcp dport 7777 counter accept"

// TestCleanup checks that `shunt cleanup`, and istio-iptables' spelling
// `shunt iptables --cleanup-only`, after a full apply return the pod to
// exactly what it was, foreign rules, chains, policy routing and lo
// addresses included, and that traffic is no longer captured.
func TestCleanup(t *testing.T) {
	testutil.RequireRoot(t)
	cleanups := []struct {
		name string
		args []string
	}{{"cleanup", []string{"cleanup"}}, {"cleanup-only", []string{"iptables", "--cleanup-only"}}}
	for _, cleanup := range cleanups {
		t.Run(cleanup.name, func(t *testing.T) {
			forEachPod(t, func(t *testing.T, p *pod, mode string) {
				for _, f := range families {
					restore := strings.Replace(saveCommand(p.variant.iptables(), f == ipv6), "-save", "-restore", 1)
					cmd := p.ns.Command(nil, restore, "--noflush")
					cmd.Stdin = strings.NewReader(fmt.Sprintf(foreignRules, docPrefix(f)))
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("%s: %v: %s", restore, err, out)
					}
					p.ns.Run(t, "ip", familyFlag(f), "rule", "add", "fwmark", "0x77", "lookup", "177", "pref", "500")
					p.ns.Run(t, "ip", familyFlag(f), "route", "add", docPrefix(f), "dev", "eth1", "table", "177")
				}
				p.ns.Run(t, "nft", foreignNFT)
				p.ns.Run(t, "ip", "addr", "add", "::7/128", "dev", "lo")
				before := p.state(t)

				p.capture(t, nil, fullArgs(mode)...)
				p.startProxy(t, mode)
				for _, f := range families {
					runProbes(t, []probe{
						p.inboundProbe("captured/"+f.name+"/inbound", mode, addr(f.pod, appPort), f.remote, true),
						p.outboundProbe("captured/"+f.name+"/outbound", appUser, addr(f.remote, appPort), f.pod, true),
					})
				}

				p.shunt(t, nil, cleanup.args...)
				if diff := cmp.Diff(before, p.state(t)); diff != "" {
					t.Errorf("cleanup left the pod changed (-before +after):\n%s", diff)
				}
				for _, f := range families {
					runProbes(t, []probe{
						p.inboundProbe("uncaptured/"+f.name+"/inbound", mode, addr(f.pod, appPort), f.remote, false),
						p.outboundProbe("uncaptured/"+f.name+"/outbound", appUser, addr(f.remote, appPort), f.pod, false),
					})
				}
				p.shunt(t, nil, cleanup.args...)
				if diff := cmp.Diff(before, p.state(t)); diff != "" {
					t.Errorf("second cleanup changed the pod (-before +after):\n%s", diff)
				}
			})
		})
	}
}

func docPrefix(f family) string {
	if f == ipv6 {
		return "2001:db8::/64"
	}
	return "192.0.2.0/24"
}

// TestDryRun checks that --dry-run prints the rules and touches nothing:
// no nftables or legacy rule of either family, no route, no address.
func TestDryRun(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		untouched := func() string {
			return p.state(t) + p.ns.Run(t, "nft", "-s", "list", "ruleset") +
				p.ns.Run(t, "iptables-legacy-save") + p.ns.Run(t, "ip6tables-legacy-save")
		}
		before := untouched()
		// A dry run prints the same rules for either iptables variant and
		// refuses --force-iptables-binary: only native takes its flag.
		args := append([]string{"iptables", "--dry-run"}, fullArgs(mode)...)
		if p.variant == native {
			args = append(args, "--native-nftables")
		}
		out, err := shuntPlain(t, p.ns, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		wants := []string{"*nat", "-A ISTIO_OUTPUT", "ISTIO_OUTPUT_DNS", "COMMIT"}
		if p.variant == native {
			wants = []string{"add table inet istio-proxy-nat\n", "add rule inet istio-proxy-nat istio-output ",
				"add chain inet istio-proxy-raw istio-output-dns\n"}
		}
		for _, want := range wants {
			if !strings.Contains(out, want) {
				t.Errorf("dry run output lacks %q:\n%s", want, out)
			}
		}
		if diff := cmp.Diff(before, untouched()); diff != "" {
			t.Errorf("dry run changed the pod (-before +after):\n%s", diff)
		}
	})
}

// state returns what shunt may change in the pod: for an iptables variant
// its rules of both families (normalized by normalizeSave) and the native
// nftables tables (foreignTables); for native the whole nftables ruleset,
// iptables-nft's tables included, without counters; then policy routing,
// the routes of every table and lo's addresses.
func (p *pod) state(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	if p.variant == native {
		fmt.Fprintf(&b, "$ nft -s list ruleset\n%s", p.ns.Run(t, "nft", "-s", "list", "ruleset"))
	} else {
		fmt.Fprintf(&b, "$ nft -s list ruleset (native tables)\n%s", foreignTables(p.ns.Run(t, "nft", "-s", "list", "ruleset")))
		for _, l := range p.variant.listings(false) {
			fmt.Fprintf(&b, "$ %s\n%s", strings.Join(l.argv, " "), normalizeSave(p.ns.Run(t, l.argv...)))
		}
	}
	for _, argv := range routingCommands {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), p.ns.Run(t, argv...))
	}
	return b.String()
}

// routingCommands show the policy routing, routes and lo addresses.
var routingCommands = [][]string{
	{"ip", "-4", "rule"}, {"ip", "-6", "rule"},
	{"ip", "-4", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	{"ip", "-br", "addr", "show", "dev", "lo"},
}

// foreignTables returns the tables of an `nft list ruleset` listing that
// iptables-nft does not manage: not ip or ip6 filter, nat, mangle, raw or
// security (iptables-save shows those).
func foreignTables(ruleset string) string {
	var b strings.Builder
	keep := false
	for line := range strings.Lines(ruleset) {
		if f := strings.Fields(line); strings.HasPrefix(line, "table ") && len(f) >= 3 {
			keep = !(f[1] == "ip" || f[1] == "ip6") ||
				!slices.Contains([]string{"filter", "nat", "mangle", "raw", "security"}, f[2])
		}
		if keep {
			b.WriteString(line)
		}
	}
	return b.String()
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// normalizeSave drops iptables-save's comments, zeroes its counters, drops
// tables that hold nothing (no rule, no user chain, every policy ACCEPT: an
// iptables-nft table cannot be deleted, so cleanup may leave one behind) and
// sorts the tables by name.
func normalizeSave(save string) string {
	var tables []string
	var table strings.Builder
	keep := false
	for line := range strings.Lines(save) {
		switch {
		case strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			table.Reset()
			keep = false
		case strings.HasPrefix(line, ":"):
			line = counters.ReplaceAllString(line, "[0:0]")
			if fields := strings.Fields(line); len(fields) < 2 || fields[1] != "ACCEPT" {
				keep = true
			}
		case line != "COMMIT\n":
			keep = true
		}
		table.WriteString(line)
		if line == "COMMIT\n" && keep {
			tables = append(tables, table.String())
		}
	}
	slices.Sort(tables)
	return strings.Join(tables, "")
}

// TestOtherNamespace programs and cleans the pod from another namespace
// with --network-namespace, as the CNI plugin does from the node, and checks
// that the pod is captured while the namespace shunt ran in is untouched.
func TestOtherNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		node := testutil.NewNetNS(t)
		nodeState := func() string {
			return node.Run(t, "nft", "list", "ruleset") + node.Run(t, "iptables-legacy-save") +
				node.Run(t, "ip6tables-legacy-save") + node.Run(t, "ip", "rule") + node.Run(t, "ip", "-6", "rule") +
				node.Run(t, "ip", "addr")
		}
		before, podBefore := nodeState(), p.state(t)
		fromNode := func(args ...string) {
			t.Helper()
			args = append([]string{args[0], "--network-namespace", p.ns.Path()}, args[1:]...)
			if out, err := shuntIn(t, node, p.variant, nil, args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		fromNode(append([]string{"iptables"}, fullArgs(mode)...)...)
		p.startProxy(t, mode)
		for _, f := range families {
			runProbes(t, []probe{
				p.inboundProbe(f.name+"/inbound", mode, addr(f.pod, appPort), f.remote, true),
				p.outboundProbe(f.name+"/outbound", appUser, addr(f.remote, appPort), f.pod, true),
			})
		}
		if diff := cmp.Diff(before, nodeState()); diff != "" {
			t.Errorf("apply changed the namespace shunt ran in (-before +after):\n%s", diff)
		}
		fromNode("cleanup")
		if diff := cmp.Diff(podBefore, p.state(t)); diff != "" {
			t.Errorf("cleanup left the pod changed (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(before, nodeState()); diff != "" {
			t.Errorf("cleanup changed the namespace shunt ran in (-before +after):\n%s", diff)
		}
	})
}

// TestValidate checks `shunt validate` in both families: it fails with
// istio-iptables' exit code 126 in a pod without rules and in one with the
// IPv4 rules only, and passes in a captured pod.
func TestValidate(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		// validate takes only the flags validation uses, no backend's.
		validate := []string{"validate", "-p", "15001", "-z", "15006", "-u", "1337", "--ipv6=true"}
		notCaptured := func(state, target string) {
			t.Helper()
			out, err := shuntPlain(t, p.ns, validate...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 126 || !strings.Contains(err.Error(), target+" was not captured") {
				t.Errorf("validate %s: got %v, want exit status 126 for %s not captured\n%s", state, err, target, out)
			}
		}
		notCaptured("without rules", "127.0.0.6:15002")

		// ::6 on lo, as the IPv6 rules would add it, so that the IPv6 probe
		// fails for want of rules, not of a route.
		p.capture(t, nil, append(fullArgs(mode), "--ipv6=false")...)
		p.ns.Run(t, "ip", "addr", "add", "::6/128", "dev", "lo")
		notCaptured("with the IPv4 rules only", "[::6]:15002")
		p.ns.Run(t, "ip", "addr", "del", "::6/128", "dev", "lo")
		p.uncapture(t)

		p.capture(t, nil, fullArgs(mode)...)
		if out, err := shuntPlain(t, p.ns, validate...); err != nil {
			t.Errorf("validate with the rules: %v\n%s", err, out)
		}
	})
}
