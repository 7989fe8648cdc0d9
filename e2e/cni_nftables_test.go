//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// testCNINFTables runs the plugin with "backend": "nftables": a meshed pod gets Istio's native
// nftables tables (the ones `shunt iptables --native-nftables --pod` programs for the same pod) and no
// iptables rules, F1 and F2 go through the reference sidecar, CHECK names a removed rule, and DEL
// deletes exactly shunt's tables, leaving a foreign table in the pod as it was.
func testCNINFTables(t *testing.T, n *cniNode) {
	list := n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`","backend":"nftables"`)
	pod := meshedPod("shop", "nft", map[string]string{"traffic.sidecar.istio.io/excludeOutboundPorts": "9000"})
	meshed := n.podSandbox(t, pod)
	// Another program's table in the pod, before the plugin runs.
	meshed.ns.Run(t, "nft", "add table inet foreign")
	meshed.ns.Run(t, "nft", "add chain inet foreign input { type filter hook input priority 0 ; }")
	meshed.ns.Run(t, "nft", "add rule inet foreign input tcp dport 7 counter accept")
	before := listRuleset(t, meshed.ns)

	if err := n.add(t, list, meshed); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	got := listRuleset(t, meshed.ns)
	if r := ourRules(save(t, meshed.ns, false)); r != "" {
		t.Errorf("the nftables backend left iptables rules:\n%s", r)
	}
	if !strings.Contains(got, before) {
		t.Errorf("the foreign table changed:\nbefore:\n%s\nafter ADD:\n%s", before, got)
	}
	if want := referenceRuleset(t, pod); ourTables(got) != want {
		t.Errorf("pod tables differ from shunt iptables --native-nftables --pod:\n got:\n%s\nwant:\n%s", ourTables(got), want)
	}

	remote := n.sandbox(t, "shop", "nft-remote", map[string]string{})
	if err := n.add(t, n.list, remote); err != nil {
		t.Fatalf("ADD remote: %v", err)
	}
	runCNIFlows(t, meshed, remote)

	if err := n.check(t, list, meshed); err != nil {
		t.Fatalf("CHECK of an untouched pod: %v", err)
	}
	// Another program removes one of shunt's rules: CHECK names it.
	handle := ruleHandle(t, meshed.ns, "istio-proxy-nat", "istio-output", "ip daddr 127.0.0.1 counter")
	meshed.ns.Run(t, "nft", "delete rule inet istio-proxy-nat istio-output handle "+handle)
	err := n.check(t, list, meshed)
	if err == nil || !strings.Contains(err.Error(), "shop/nft") ||
		!strings.Contains(err.Error(), "istio-proxy-nat istio-output: missing rule ip daddr 127.0.0.1/32 counter return") {
		t.Errorf("CHECK after deleting a rule: %v, want the pod and the rule named", err)
	}

	for i := range 2 {
		if err := n.del(t, list, meshed); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if after := listRuleset(t, meshed.ns); after != before {
		t.Errorf("after DEL the pod holds:\n%s\nwant only what was there before ADD:\n%s", after, before)
	}
}

// listRuleset is `nft list ruleset` of ns (nft only reads here).
func listRuleset(t testing.TB, ns *testutil.NetNS) string {
	t.Helper()
	return ns.Run(t, "nft", "list", "ruleset")
}

var nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// ourTables is the part of an nft listing that holds shunt's tables, counters zeroed.
func ourTables(listing string) string {
	var b strings.Builder
	in := false
	for _, l := range strings.SplitAfter(listing, "\n") {
		if strings.HasPrefix(l, "table ") {
			in = strings.HasPrefix(l, "table inet istio-proxy-")
		}
		if in {
			b.WriteString(nftCounters.ReplaceAllString(l, "counter packets 0 bytes 0"))
		}
	}
	return b.String()
}

// referenceRuleset returns the tables `shunt iptables --native-nftables --pod` programs for pod in a
// fresh namespace.
func referenceRuleset(t *testing.T, pod any) string {
	t.Helper()
	data, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := testutil.NewNetNS(t)
	ns.Run(t, bins.Path(t, pkgShunt), "iptables", "--native-nftables", "--pod", file)
	return ourTables(listRuleset(t, ns))
}

// ruleHandle returns the handle of the rule of table/chain whose listing contains text.
func ruleHandle(t testing.TB, ns *testutil.NetNS, table, chain, text string) string {
	t.Helper()
	out := ns.Run(t, "nft", "-a", "list", "chain", "inet", table, chain)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, text) {
			if i := strings.LastIndex(l, "# handle "); i >= 0 {
				return strings.TrimSpace(l[i+len("# handle "):])
			}
		}
	}
	t.Fatalf("no rule %q in %s %s:\n%s", text, table, chain, out)
	return ""
}
