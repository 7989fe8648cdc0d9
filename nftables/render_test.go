package nftables

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil/golden"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

// istioBase is the base of Istio's own tests: nothing captured until a case says so.
func istioBase() redirect.Config {
	c := redirect.DefaultConfig()
	c.InboundPorts = redirect.PortList{}
	c.InboundPortsExclude = nil
	c.OutboundIPRanges = redirect.PrefixList{}
	c.NativeNFTables = true
	return c
}

func injector() redirect.Config {
	c := redirect.DefaultConfig()
	c.NativeNFTables = true
	return c
}

func renderCases() map[string]redirect.Config {
	cases := map[string]redirect.Config{}
	add := func(name string, base redirect.Config, edit func(*redirect.Config)) {
		edit(&base)
		cases[name] = base
	}
	add("default", injector(), func(*redirect.Config) {})
	add("default-ipv6", injector(), func(c *redirect.Config) { c.IPv6 = true })
	add("default-tproxy-ipv6", injector(), func(c *redirect.Config) { c.Mode = redirect.ModeTProxy; c.IPv6 = true })
	add("empty", istioBase(), func(*redirect.Config) {})
	add("dns-uid-gid", istioBase(), func(c *redirect.Config) {
		c.RedirectDNS, c.IPv6 = true, true
		c.DNSServers = []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("::127.0.0.53")}
		c.ProxyGIDs, c.ProxyUIDs = []uint32{1, 2}, []uint32{3, 4}
	})
	add("capture-all-dns", injector(), func(c *redirect.Config) { c.RedirectDNS, c.CaptureAllDNS, c.IPv6 = true, true, true })
	add("exclusions", injector(), func(c *redirect.Config) {
		c.IPv6 = true
		c.OutboundPorts = []uint16{32000}
		c.OutboundPortsExclude = []uint16{5555, 6666}
		c.OutboundIPRangesExclude = []netip.Prefix{netip.MustParsePrefix("10.16.0.0/12"), netip.MustParsePrefix("fd00::/33")}
		c.ExcludeInterfaces = []string{"eth9", "veth+"}
		c.KubeVirtInterfaces = []string{"kv0"}
		c.OwnerGroups = redirect.GroupFilter{Include: []uint32{4242, 202}}
		c.DropInvalid = true
	})
	return cases
}

func render(t *testing.T, cfg redirect.Config) string {
	t.Helper()
	plan, err := redirect.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	script, err := Render(&plan, RenderOptions{Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	return string(script)
}

func TestRenderGolden(t *testing.T) {
	for name, cfg := range renderCases() {
		t.Run(name, func(t *testing.T) {
			got := render(t, cfg)
			golden.Check(t, filepath.Join("testdata", name+".nft"), got)
		})
	}
}

func TestRenderRejectsIptablesPlan(t *testing.T) {
	plan, err := redirect.Build(redirect.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Render(&plan, RenderOptions{}); !errors.Is(err, ErrNotInet) {
		t.Errorf("Render of an iptables plan: %v, want ErrNotInet", err)
	}
}

func TestNames(t *testing.T) {
	for in, want := range map[string]string{
		redirect.ChainInRedirect: "istio-in-redirect", redirect.ChainOutputDNS: "istio-output-dns", "PREROUTING": "prerouting",
	} {
		if got := ChainName(in); got != want {
			t.Errorf("ChainName(%s) = %s, want %s", in, got, want)
		}
	}
	if got := TableName(redirect.TableMangle); got != TableMangle {
		t.Errorf("TableName(mangle) = %s", got)
	}
}

// TestRandomConfigsRender: every random configuration renders, and each rule is one line.
func TestRandomConfigsRender(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		cfg := randconfig.Config(r, injector())
		plan, err := redirect.Build(cfg)
		if err != nil {
			t.Fatalf("config %d: %v\n%+v", i, err, cfg)
		}
		script, err := Render(&plan, RenderOptions{})
		if err != nil {
			t.Fatalf("config %d: %v", i, err)
		}
		if strings.Contains(string(script), "ISTIO_") {
			t.Fatalf("config %d: iptables chain name in the script:\n%s", i, script)
		}
		// A rule matching no address twice in a chain is one the two families of the inet table both
		// added (the same address may be given twice, by the user).
		seen := map[string]bool{}
		for _, line := range strings.Split(string(script), "\n") {
			if strings.HasPrefix(line, "add rule ") && !strings.Contains(line, "addr ") && seen[line] {
				t.Fatalf("config %d: duplicate %q\n%+v", i, line, cfg)
			}
			seen[line] = true
		}
	}
}
