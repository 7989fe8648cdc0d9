//go:build linux

package e2e

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/shuntmesh/shunt/internal/testutil"
)

var (
	demo        = flag.Bool("demo", false, "TestDemo: print the path every flow took as a table on standard output (make demo)")
	demoVariant = flag.String("demo-variant", "nft", "TestDemo with -demo: the variant, nft, legacy or native")
	demoMode    = flag.String("demo-mode", "REDIRECT", "TestDemo with -demo: the inbound interception mode, REDIRECT or TPROXY")
)

// TestDemo sends one connection along each flow of docs/flows.md through a pod
// captured as Istio's sidecar injector captures it (plus DNS capture, IPv6,
// an excluded outbound port and an excluded CIDR) and checks the path each
// took, then that `shunt cleanup` removes the rules. With -demo it does so
// for one variant and mode and prints each step and a table of the flows on
// standard output: `make demo`. Without, it runs every variant and mode.
func TestDemo(t *testing.T) {
	if *demo && os.Geteuid() != 0 {
		t.Fatal("the demo creates network namespaces: run it as root")
	}
	testutil.RequireRoot(t)
	if !*demo {
		forEachPod(t, func(t *testing.T, p *pod, mode string) { runDemo(t, p, mode, io.Discard) })
		return
	}
	v, mode := variant(*demoVariant), *demoMode
	if !slices.Contains(variants, v) || !slices.Contains(modes, mode) {
		t.Fatalf("-demo-variant %q -demo-mode %q: want one of %v and one of %v", v, mode, variants, modes)
	}
	w := os.Stdout
	fmt.Fprintf(w, "shunt demo: a meshed pod captured as Istio's sidecar injector captures it (%s mode, %s)\n\n", mode, v.title())
	var namespaces []*testutil.NetNS
	// Registered first, so it runs after every cleanup newPod registers.
	t.Cleanup(func() {
		var names []string
		for _, ns := range namespaces {
			names = append(names, ns.Name)
			if _, err := os.Stat(ns.Path()); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("namespace %s still there after the test: %v", ns.Name, err)
			}
		}
		fmt.Fprintf(w, "\nremoved the namespaces %s and every process in them\n", strings.Join(names, " and "))
	})
	p := newPod(t, v)
	namespaces = append(namespaces, p.ns, p.remote)
	runDemo(t, p, mode, w)
}

// demoFlow is one row of the demo: a probe and the path it must take, in
// words.
type demoFlow struct {
	id, name string
	from     string // who connects, in words
	probe    probe
	path     string
}

// demoArgs are the flags the demo adds to the injector's: DNS capture for
// the remote's DNS servers, IPv6, and outbound exclusions for F7, a port and
// the CIDRs of the remote's far address.
var demoArgs = []string{"--redirect-dns", "--dns-servers=" + ipv4.remote.String() + "," + ipv6.remote.String(),
	"--ipv6=true", "-o", fmt.Sprint(otherPort), "-x", ipv4.farNet.String() + "," + ipv6.farNet.String()}

// runDemo captures p with the injector's flags for mode and demoArgs, runs
// the demo's flows, writes the steps and the table to w and fails t for each
// flow that took another path than the expected one. When all took theirs,
// it cleans the rules up; otherwise it leaves them to the failure report.
func runDemo(t *testing.T, p *pod, mode string, w io.Writer) {
	t.Helper()
	f := ipv4
	fmt.Fprintf(w, "created two network namespaces joined by veth pairs:\n")
	fmt.Fprintf(w, "  pod     %-14s  %s  %s  the app (uid %d) on :%d, also playing the agent on :15021\n",
		p.ns.Name, ipv4.pod, ipv6.pod, appUser.UID, appPort)
	fmt.Fprintf(w, "  remote  %-14s  %s  %s  an app on :%d and :%d, DNS on :%d, and %s behind it\n",
		p.remote.Name, ipv4.remote, ipv6.remote, appPort, otherPort, dnsPort, ipv4.far)

	fmt.Fprintf(w, "\nthe sidecar injector's flags, then DNS capture, IPv6, and an excluded port and CIDR for F7:\n")
	fmt.Fprintf(w, "$ shunt iptables %s %s \\\n    %s\n",
		shellQuote(p.variant.args()), shellQuote(injectorArgs(mode)), shellQuote(demoArgs))
	p.capture(t, nil, append(injectorArgs(mode), demoArgs...)...)
	var rules []string
	for _, l := range p.variant.listings(false) {
		n := countRules(p.ns.Run(t, l.argv...))
		if n == 0 {
			t.Fatalf("%s shows no rule after shunt iptables", strings.Join(l.argv, " "))
		}
		rules = append(rules, fmt.Sprintf("%d %s", n, l.what))
	}
	fmt.Fprintf(w, "  installed %s rules; `shunt iptables --dry-run --explain` shows each with the flow it serves\n",
		strings.Join(rules, " and "))

	p.startProxy(t, mode)
	fmt.Fprintf(w, "\nstarted the reference sidecar (e2e/refproxy) in the pod as %v: outbound :15001, inbound :15006, DNS :15053\n",
		proxyCred(mode))
	fmt.Fprintf(w, "  its services: %s → %s (the pod's own), %s → %s\n",
		f.selfVIP, addr(f.pod, appPort), f.remoteVIP, addr(f.remote, appPort))

	flows := demoFlows(p, mode)
	fmt.Fprintf(w, "\nsent one connection per flow; each hop tags the reply (proxy=outbound|inbound orig=DESTINATION, dns=proxy, app=NAME peer=SOURCE):\n\n")
	rows := [][]string{{"", "FLOW", "SENT (from → to)", "EXPECTED PATH", "RESULT"}}
	var failed []string
	for _, fl := range flows {
		pr := fl.probe
		got := query(t, pr.from, pr.as, pr.network, pr.to)
		result := "OK"
		if got != pr.want {
			result = "FAIL"
			failed = append(failed, fl.id+" "+fl.name)
			t.Errorf("%s %s: %s %s -> %s as %v:\n got: %s\nwant: %s", fl.id, fl.name, pr.network, pr.from.Name, pr.to, pr.as, got, pr.want)
		}
		to := pr.to.String()
		if pr.network == "udp" || pr.to.Port() == dnsPort {
			to += "/" + pr.network
		}
		rows = append(rows, []string{fl.id, fl.name, fl.from + " → " + to, fl.path, result})
		rows = append(rows, []string{"", "observed: " + tagPath(got)})
		if result != "OK" {
			rows = append(rows, []string{"", "expected: " + tagPath(pr.want)})
		}
	}
	writeTable(w, rows)
	if len(failed) > 0 {
		fmt.Fprintf(w, "\n%d of %d connections took another path than expected: %s\n", len(failed), len(flows), strings.Join(failed, ", "))
		fmt.Fprintf(w, "kept the rules for the failure report below (with counters)\n")
		return
	}
	fmt.Fprintf(w, "\nall %d connections took the expected path\n", len(flows))

	fmt.Fprintf(w, "\n$ shunt cleanup %s\n", shellQuote(p.variant.args()))
	p.uncapture(t)
	prefix := p.variant.chain("ISTIO_")
	for _, l := range p.variant.listings(false) {
		if out := p.ns.Run(t, l.argv...); strings.Contains(out, prefix) {
			t.Errorf("%s after shunt cleanup:\n%s", strings.Join(l.argv, " "), out)
		}
	}
	fmt.Fprintf(w, "  nothing named %s… left\n", prefix)
}

// countRules counts the rules of an iptables-save or `nft list ruleset`
// listing.
func countRules(listing string) int {
	n := 0
	for line := range strings.Lines(listing) {
		if strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "\t\t") && !strings.HasPrefix(line, "\t\ttype ") {
			n++
		}
	}
	return n
}

// demoFlows are the demo's flows F1–F9 in the pod runDemo captures: in
// IPv4, and F8 some of them over IPv6.
func demoFlows(p *pod, mode string) []demoFlow {
	f, f6 := ipv4, ipv6
	podApp, podApp6 := addr(f.pod, appPort), addr(f6.pod, appPort)
	remoteApp, remoteApp6 := addr(f.remote, appPort), addr(f6.remote, appPort)
	remoteDNS := addr(f.remote, dnsPort)
	inboundPeer, inboundPeer6, hairpinPeer := f.passthrough, f6.passthrough, f.passthrough
	inboundPath := ":15006 inbound → app, from 127.0.0.6"
	inboundPath6 := ":15006 inbound → app, from ::6"
	hairpinPath := ":15001 outbound → :15006 inbound → app, from 127.0.0.6"
	if mode == "TPROXY" {
		inboundPeer, inboundPeer6, hairpinPeer = f.remote, f6.remote, f.pod
		inboundPath = "TPROXY :15006 inbound → app, from the client"
		inboundPath6 = inboundPath
		hairpinPath = ":15001 outbound → :15006 inbound → app, from the pod"
	}
	proxy := proxyCred(mode)
	theApp := fmt.Sprintf("app (uid %d)", appUser.UID)
	return []demoFlow{
		{"F1", "inbound", "remote", probe{"", p.remote, root, "tcp", podApp,
			viaInbound(podApp) + app("pod", inboundPeer, podApp)}, inboundPath},
		{"F2", "outbound", theApp, probe{"", p.ns, appUser, "tcp", remoteApp,
			viaOutbound(remoteApp) + app("remote", f.pod, remoteApp)}, ":15001 outbound → remote"},
		{"F3", "agent port", "remote", probe{"", p.remote, root, "tcp", addr(f.pod, 15021),
			app("pod", f.remote, addr(f.pod, 15021))}, "not captured (-d 15021) → agent directly"},
		{"F4", "own service VIP", theApp, probe{"", p.ns, appUser, "tcp", f.selfVIP,
			viaOutbound(f.selfVIP) + viaInbound(podApp) + app("pod", hairpinPeer, podApp)}, hairpinPath},
		{"F4b", "own pod IP", theApp, probe{"", p.ns, appUser, "tcp", podApp,
			app("pod", f.pod, podApp)}, "not captured (app over lo) → app directly"},
		{"F5", "localhost", theApp, probe{"", p.ns, appUser, "tcp", addr(f.localhost, appPort),
			app("pod", f.localhost, addr(f.localhost, appPort))}, "not captured (127.0.0.1) → app directly"},
		{"F6", "proxy's uid", "uid 1337", probe{"", p.ns, proxyUID, "tcp", remoteApp,
			app("remote", f.pod, remoteApp)}, "not captured (uid 1337) → remote directly"},
		{"F6", "proxy's gid", "gid 1337", probe{"", p.ns, proxyGID, "tcp", remoteApp,
			app("remote", f.pod, remoteApp)}, "not captured (gid 1337) → remote directly"},
		{"F7", "excluded port", theApp, probe{"", p.ns, appUser, "tcp", addr(f.remote, otherPort),
			app("remote", f.pod, addr(f.remote, otherPort))}, fmt.Sprintf("not captured (-o %d) → remote directly", otherPort)},
		{"F7", "excluded CIDR", theApp, probe{"", p.ns, appUser, "tcp", addr(f.far, appPort),
			app("remote", f.pod, addr(f.far, appPort))}, fmt.Sprintf("not captured (-x %s) → remote directly", f.farNet)},
		{"F8", "IPv6 inbound", "remote", probe{"", p.remote, root, "tcp", podApp6,
			viaInbound(podApp6) + app("pod", inboundPeer6, podApp6)}, inboundPath6},
		{"F8", "IPv6 outbound", theApp, probe{"", p.ns, appUser, "tcp", remoteApp6,
			viaOutbound(remoteApp6) + app("remote", f6.pod, remoteApp6)}, ":15001 outbound → remote"},
		{"F9", "DNS over UDP", theApp, probe{"", p.ns, appUser, "udp", remoteDNS,
			"dns=proxy;" + dnsAnswer("remote", f.pod)}, ":15053 DNS proxy → remote DNS"},
		{"F9", "DNS over TCP", theApp, probe{"", p.ns, appUser, "tcp", remoteDNS,
			fmt.Sprintf("dns=proxy orig=%s;", remoteDNS) + dnsAnswer("remote", f.pod)}, ":15053 DNS proxy → remote DNS"},
		{"F9", "proxy's own DNS", "proxy", probe{"", p.ns, proxy, "udp", remoteDNS,
			dnsAnswer("remote", f.pod)}, "not captured (the proxy's) → remote DNS"},
	}
}

// tagPath renders a reply's tags as a path: one hop per tag, without the
// app's local address (the SENT column shows it).
func tagPath(reply string) string {
	var hops []string
	for hop := range strings.SplitSeq(strings.TrimSuffix(reply, ";"), ";") {
		if i := strings.Index(hop, " local="); i >= 0 && strings.HasPrefix(hop, "app=") {
			hop = hop[:i]
		}
		hops = append(hops, hop)
	}
	return strings.Join(hops, " → ")
}

// writeTable writes rows with the columns aligned; a row's last cell may
// run past the columns after it.
func writeTable(w io.Writer, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, cell := range row[:len(row)-1] {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			b.WriteString(cell)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)+2))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// shellQuote joins args for a shell: the empty string and arguments with
// shell metacharacters are single-quoted.
func shellQuote(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, "*?[]$'\"\\ ;&|<>(){}~#") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}
