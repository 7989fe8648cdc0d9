package doctor

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// snapshot is what a namespace holds, read with the tools, and the legacy tables /proc lists.
func snapshot(t *testing.T, ns *testutil.NetNS) string {
	t.Helper()
	var b strings.Builder
	if err := ns.Do(func() error {
		for _, name := range []string{"ip_tables_names", "ip6_tables_names"} {
			data, err := os.ReadFile("/proc/thread-self/net/" + name)
			if err != nil {
				return err
			}
			b.WriteString(name + ":\n" + string(data))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// iptables-legacy-save of a family would create its tables: only those /proc lists are saved.
	for _, argv := range [][]string{{"nft", "list", "ruleset"}, {"iptables-nft-save"}, {"ip6tables-nft-save"}, {"ip", "rule"}, {"ip", "-6", "rule"}} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			continue
		}
		out, err := ns.Exec(nil, nil, argv...)
		if err != nil {
			t.Fatalf("%s: %v", argv, err)
		}
		b.WriteString(strings.Join(argv, " ") + ":\n" + dropComments(string(out)))
	}
	return b.String()
}

// dropComments drops the save tools' "# Generated ... on DATE" lines.
func dropComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// collect runs Collect in ns and checks that it changed nothing there.
func collect(t *testing.T, ns *testutil.NetNS) *Report {
	t.Helper()
	before := snapshot(t, ns)
	r, err := Collect(context.Background(), Options{NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("doctor changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	return r
}

func install(t *testing.T, ns *testutil.NetNS, s backend.Settings) {
	t.Helper()
	s.NetNS = ns.Path()
	b, _, err := backend.Select(s)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := b.Plan(redirect.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(context.Background(), &plan, backend.Mode{}); err != nil {
		t.Fatalf("%s: %v", b.Name(), err)
	}
}

// foreignRule returns a new namespace in which another program, tool, added a rule to nat OUTPUT.
func foreignRule(t *testing.T, tool string) *testutil.NetNS {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath(tool); err != nil {
		t.Skip("no " + tool + " here")
	}
	ns := testutil.NewNetNS(t)
	ns.Run(t, tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
	return ns
}

func hasWarning(r *Report, s string) bool {
	return slices.ContainsFunc(r.Warnings, func(w string) bool { return strings.Contains(w, s) })
}

// TestCollectFresh: a fresh namespace holds nothing, nft is the default, nothing is wrong, and doctor
// creates no legacy table (the snapshot compares /proc's lists).
func TestCollectFresh(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	r := collect(t, ns)
	if r.Decision.Backend != "iptables-nft" {
		t.Errorf("decision %+v, want iptables-nft", r.Decision)
	}
	for _, f := range r.Families {
		if !f.ProcListed || len(f.LegacyTables)+len(f.NFTTables) > 0 {
			t.Errorf("%s: %+v, want listed and empty", f.Family, f)
		}
	}
	if len(r.Installed)+len(r.TProxyRouting)+len(r.OtherNFTTables)+len(r.Warnings) > 0 {
		t.Errorf("report %+v, want nothing installed and no warning", r)
	}
	if r.Kernel == "" || len(r.Features) != 8 {
		t.Errorf("kernel %q, features %+v", r.Kernel, r.Features)
	}
}

// TestCollectLegacyByAnotherProgram: another program's legacy rules make shunt choose legacy, which
// doctor warns about, and their count shows.
func TestCollectLegacyByAnotherProgram(t *testing.T) {
	ns := foreignRule(t, "iptables-legacy")
	r := collect(t, ns)
	if r.Decision.Backend != "iptables-legacy" || !strings.Contains(r.Decision.Reason, "legacy tables") {
		t.Errorf("decision %+v, want iptables-legacy for the legacy tables", r.Decision)
	}
	want := []Table{{Family: "ip", Name: "nat", Chains: 4, Rules: 1, OtherRules: 1}}
	if diff := cmp.Diff(want, r.Families[0].LegacyTables); diff != "" || len(r.Families[1].LegacyTables) > 0 {
		t.Errorf("legacy tables (-want +got):\n%s\nIPv6: %+v", diff, r.Families[1].LegacyTables)
	}
	if !hasWarning(r, "legacy iptables tables exist (IPv4 nat)") || len(r.Installed) > 0 {
		t.Errorf("warnings %q, installed %+v; want the legacy tables named, nothing of shunt's", r.Warnings, r.Installed)
	}
}

// TestCollectMixedBackends: shunt's native nftables tables beside shunt's legacy rules are two
// backends capturing the same packets.
func TestCollectMixedBackends(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	install(t, ns, backend.Settings{NativeNFTables: true})
	install(t, ns, backend.Settings{IptablesVariant: "legacy"})
	r := collect(t, ns)
	var backends []string
	for _, in := range r.Installed {
		backends = append(backends, in.Backend)
	}
	if !slices.Contains(backends, "nftables") || !slices.Contains(backends, "iptables-legacy") {
		t.Errorf("installed %+v, want nftables and iptables-legacy", r.Installed)
	}
	if !hasWarning(r, "more than one backend (nftables, iptables-legacy)") {
		t.Errorf("warnings %q, want mixed backends", r.Warnings)
	}
	if lt := r.Families[0].LegacyTables; len(lt) != 1 || !lt[0].Shunt || lt[0].OtherRules != 0 || lt[0].ShuntRules != lt[0].Rules || lt[0].Chains != 8 {
		t.Errorf("legacy tables %+v, want nat with shunt's rules only, in 4 built-in and 4 ISTIO_* chains", lt)
	}
	i := slices.IndexFunc(r.OtherNFTTables, func(tb Table) bool { return tb.Name == "istio-proxy-nat" })
	if i < 0 || !r.OtherNFTTables[i].Shunt || r.OtherNFTTables[i].OtherRules != 0 || r.OtherNFTTables[i].ShuntRules == 0 {
		t.Errorf("other nft tables %+v, want istio-proxy-nat as shunt's whole", r.OtherNFTTables)
	}
}

// TestCollectNFTShared: shunt's iptables-nft rules and another program's in the same nat table are
// counted apart.
func TestCollectNFTShared(t *testing.T) {
	ns := foreignRule(t, "iptables-nft")
	install(t, ns, backend.Settings{IptablesVariant: "nft"})
	r := collect(t, ns)
	i := slices.IndexFunc(r.Families[0].NFTTables, func(tb Table) bool { return tb.Name == "nat" })
	if i < 0 {
		t.Fatalf("IPv4 nft tables %+v, want nat", r.Families[0].NFTTables)
	}
	if tb := r.Families[0].NFTTables[i]; !tb.Shunt || tb.OtherRules != 1 || tb.ShuntRules != tb.Rules-1 {
		t.Errorf("nat %+v, want shunt's with 1 other rule", tb)
	}
	if len(r.Warnings) > 0 {
		t.Errorf("warnings %q, want none", r.Warnings)
	}
}
