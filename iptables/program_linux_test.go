package iptables

import (
	"regexp"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

var nftHandles = regexp.MustCompile(` # handle \d+|counter packets \d+ bytes \d+`)

// TestProgramMatchesRestore: rules programmed through the kernel API — an nftables netlink batch, or
// IPT_SO_SET_REPLACE for legacy — are, as iptables-save (and nft) read them, exactly those the
// variant's iptables-restore installs from Render's text.
func TestProgramMatchesRestore(t *testing.T) {
	testutil.RequireRoot(t)
	programs := map[Variant]func(*redirect.FamilyPlan, []string) error{VariantNFT: programNFT, VariantLegacy: programLegacy}
	for name, cfg := range programCases(t) {
		plan := mustBuild(t, cfg)
		for i := range plan.Families {
			fp := &plan.Families[i]
			for v, program := range programs {
				t.Run(name+"/"+fp.Family.String()+"/"+string(v), func(t *testing.T) {
					direct, viaRestore := testutil.NewNetNS(t), testutil.NewNetNS(t)
					if err := netns.Do(direct.Path(), func() error { return program(fp, nil) }); err != nil {
						t.Fatalf("program: %v", err)
					}
					tool := "iptables"
					if fp.Family == redirect.IPv6 {
						tool = "ip6tables"
					}
					cmd := viaRestore.Command(nil, tool+"-"+string(v)+"-restore", "--noflush")
					cmd.Stdin = strings.NewReader(string(Render(fp, RenderOptions{})))
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("restore: %v: %s", err, out)
					}
					views := [][]string{{tool + "-" + string(v) + "-save"}}
					if v == VariantNFT {
						views = append(views, []string{"nft", "list", "ruleset"})
					}
					for _, argv := range views {
						got, err1 := direct.Command(nil, argv...).CombinedOutput()
						want, err2 := viaRestore.Command(nil, argv...).CombinedOutput()
						if err1 != nil || err2 != nil {
							t.Fatalf("%v: %v %v: %s %s", argv, err1, err2, got, want)
						}
						g := nftHandles.ReplaceAllString(saveNoise.ReplaceAllString(string(got), ""), "")
						w := nftHandles.ReplaceAllString(saveNoise.ReplaceAllString(string(want), ""), "")
						if g != w {
							t.Errorf("%v differs:\nkernel API:\n%s\nrestore:\n%s", argv, g, w)
						}
					}
				})
			}
		}
	}
}

// TestProgramNFTAtomic: a batch the kernel refuses reports the error and leaves nothing behind.
func TestProgramNFTAtomic(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	fp := mustBuild(t, redirect.DefaultConfig()).Family(redirect.IPv4)
	bad := *fp
	bad.Tables = append([]redirect.Table{}, fp.Tables...)
	nat := bad.Tables[0]
	nat.Chains = append(append([]redirect.Chain{}, nat.Chains...), redirect.Chain{Name: "OUTPUT", Builtin: true,
		Rules: []redirect.Rule{{Target: redirect.Target{Kind: redirect.TargetJump, Chain: "NO_SUCH_CHAIN"}}}})
	bad.Tables[0] = nat
	err := netns.Do(ns.Path(), func() error { return programNFT(&bad, nil) })
	if err == nil {
		t.Fatal("programNFT with a jump to a missing chain = nil error")
	}
	out, err := ns.Command(nil, "nft", "list", "ruleset").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("a refused batch left rules behind (%v):\n%s", err, out)
	}
	if err := netns.Do(ns.Path(), func() error { return programNFT(fp, nil) }); err != nil {
		t.Fatalf("programNFT after a refused batch: %v", err)
	}
}

// programCases are the golden configurations plus odd prefixes and a wildcard interface.
func programCases(t *testing.T) map[string]redirect.Config {
	cases := renderCases(t)
	c := redirect.DefaultConfig()
	c.OutboundIPRanges = redirect.PrefixList{Prefixes: mustPrefixes(t, "10.1.2.0/23,0.0.0.0/0,fd00:1::/63,2001:db8::/32")}
	c.ExcludeInterfaces, c.IPv6 = []string{"veth+"}, true
	c.OutboundPortsExclude = []uint16{53}
	cases["odd-prefixes-wildcard-iface"] = c
	return cases
}
