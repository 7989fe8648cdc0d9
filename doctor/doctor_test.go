package doctor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/backend"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/redirect"
)

// baseFacts is a healthy namespace on a kernel with everything built in: nothing installed, nft chosen.
func baseFacts() *facts {
	return &facts{
		kernel:  "6.18.0",
		choice:  backend.Choice{Backend: "iptables-nft", Reason: "no tables yet; nft is the default"},
		procNet: true,
		legacy:  [2][]string{{}, {}},
		targets: [2][]string{{"CT", "REDIRECT", "TPROXY"}, {"CT", "REDIRECT", "TPROXY"}},
		config: map[string]string{"NF_TABLES": "y", "IP_NF_IPTABLES": "y", "NETFILTER_XT_TARGET_TPROXY": "y", "NFT_TPROXY": "y",
			"NETFILTER_XT_TARGET_CT": "y", "NF_CONNTRACK_ZONES": "y", "NFT_CT": "y"},
		mounts:  true,
		cgroup2: "/sys/fs/cgroup",
	}
}

// ours is shunt's REDIRECT install in one backend, as backend.Installed reads it.
func ours(name string, fam redirect.Family, rules ...string) backend.Found {
	if len(rules) == 0 {
		rules = []string{"-p tcp -j REDIRECT --to-ports 15001"}
	}
	return backend.Found{Backend: name, Chains: []backend.Chain{
		{Family: fam, Table: "nat", Chain: "OUTPUT", Builtin: true, Rules: []string{"-j ISTIO_OUTPUT"}},
		{Family: fam, Table: "nat", Chain: "ISTIO_OUTPUT", Rules: rules},
	}}
}

func TestBuildHealthy(t *testing.T) {
	r := build(baseFacts())
	if len(r.Warnings) > 0 {
		t.Errorf("warnings %q, want none", r.Warnings)
	}
	if r.Decision.Backend != "iptables-nft" || len(r.Families) != 2 || r.Families[1].Family != "IPv6" {
		t.Errorf("decision %+v, families %+v", r.Decision, r.Families)
	}
	for _, f := range r.Features {
		if f.State != Available {
			t.Errorf("feature %s: %s (%s), want available", f.Name, f.State, f.Detail)
		}
	}
}

// TestBuildWarnings: each state that breaks capture or surprises an operator gives its warning, and
// only it.
func TestBuildWarnings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(f *facts)
		want   []string // substrings, one a warning, in order
	}{
		{"no /proc", func(f *facts) { f.procNet, f.legacy = false, [2][]string{} }, []string{"/proc is not mounted"}},
		{"legacy tables while nft chosen", func(f *facts) {
			f.legacy[0] = []string{"filter", "nat"}
			f.choice.Reason = "the namespace holds both nft and legacy tables; nft preferred"
			f.nft = []nftTable{{family: "ip", name: "filter", chains: []string{"INPUT"}, rules: 1}}
		}, []string{"legacy iptables tables exist (IPv4 filter, nat) while iptables-nft is chosen"}},
		{"legacy chosen", func(f *facts) {
			f.legacy[1] = []string{"mangle"}
			f.choice = backend.Choice{Backend: "iptables-legacy", Reason: "the namespace already holds legacy tables"}
		}, []string{"legacy iptables tables exist (IPv6 mangle), so shunt follows them"}},
		{"nft tables while legacy chosen", func(f *facts) {
			f.legacy[0] = []string{"nat"}
			f.choice = backend.Choice{Backend: "iptables-legacy", Reason: "iptables variant set in the configuration"}
			f.nft = []nftTable{{family: "inet", name: "firewalld", chains: []string{"filter_INPUT"}, rules: 3}}
		}, []string{"nft tables exist (inet firewalld) while iptables-legacy is chosen"}},
		{"mixed backends", func(f *facts) {
			f.found = []backend.Found{ours("nftables", redirect.Inet), ours("iptables-legacy", redirect.IPv4)}
			f.legacy[0] = []string{"nat"}
			f.choice = backend.Choice{Backend: "iptables-legacy", Reason: "the namespace already holds legacy tables"}
			f.nft = []nftTable{{family: "inet", name: "istio-proxy-nat", chains: []string{"istio-output", "output"}, rules: 2}}
		}, []string{"more than one backend (nftables, iptables-legacy)", "nft tables exist (inet istio-proxy-nat)"}},
		{"routing without TPROXY rules", func(f *facts) {
			f.routing = []string{"ip rule fwmark 0x539 lookup 133 (IPv4)"}
			f.found = []backend.Found{ours("iptables-nft", redirect.IPv4)}
		}, []string{"TPROXY routing is in place without TPROXY rules"}},
		{"TPROXY rules without TPROXY", func(f *facts) {
			f.routing = []string{"ip rule fwmark 0x539 lookup 133 (IPv4)"}
			f.found = []backend.Found{ours("nftables", redirect.Inet, "meta l4proto tcp tproxy to :15006")}
			f.config["NFT_TPROXY"] = ""
		}, []string{"nftables rules use TPROXY, which this kernel lacks (CONFIG_NFT_TPROXY is not set)"}},
		{"no xt TPROXY", func(f *facts) {
			delete(f.config, "NETFILTER_XT_TARGET_TPROXY")
			f.targets = [2][]string{}
		}, []string{"TPROXY inbound interception cannot work with iptables-nft"}},
		{"no xt TPROXY, TPROXY asked for", func(f *facts) {
			delete(f.config, "NETFILTER_XT_TARGET_TPROXY")
			f.targets = [2][]string{}
			f.mode = redirect.ModeTProxy
		}, []string{"the TPROXY mode asked for cannot work with iptables-nft"}},
		{"no xt TPROXY, REDIRECT asked for", func(f *facts) {
			delete(f.config, "NETFILTER_XT_TARGET_TPROXY")
			f.targets = [2][]string{}
			f.mode = redirect.ModeRedirect
		}, nil},
		{"no nf_tables", func(f *facts) {
			delete(f.config, "NF_TABLES")
			f.nftErr = errors.New("netlink socket: protocol not supported")
		}, []string{"nft tables could not be dumped", "iptables-nft is chosen but the kernel has no nf_tables"}},
		{"undecided", func(f *facts) { f.choiceErr = errors.New("enter namespace: gone") }, []string{"backend could not be decided"}},
		{"unreadable", func(f *facts) {
			f.legacyErr = errors.New("open ip_tables_names: permission denied")
			f.foundErr = errors.New("read nftables: denied\nread iptables-nft: denied")
		}, []string{"legacy tables could not all be read", "read nftables: denied; read iptables-nft: denied"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := baseFacts()
			tc.change(f)
			got := build(f).Warnings
			if len(got) != len(tc.want) {
				t.Fatalf("warnings %q, want %d: %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// TestTablesCountOthers: a table is shunt's when it holds ISTIO_* chains (ip, ip6) or is an
// istio-proxy-* inet table; the rules shunt's backends read are shunt's, the rest other programs'.
func TestTablesCountOthers(t *testing.T) {
	f := baseFacts()
	f.found = []backend.Found{ours("iptables-nft", redirect.IPv4), {Backend: "nftables", Chains: []backend.Chain{
		{Family: redirect.Inet, Table: "mangle", Chain: "ISTIO_PREROUTING", Rules: []string{"a", "b"}}}}}
	f.nft = []nftTable{
		{family: "inet", name: "istio-proxy-mangle", chains: []string{"istio-prerouting"}, rules: 2},
		{family: "ip", name: "filter", chains: []string{"FORWARD", "INPUT"}, rules: 4},
		{family: "ip", name: "nat", chains: []string{"ISTIO_OUTPUT", "KUBE-SERVICES", "OUTPUT"}, rules: 7},
		{family: "ip6", name: "nat", chains: []string{"OUTPUT"}, rules: 1},
	}
	r := build(f)
	want := []Table{
		{Family: "ip", Name: "filter", Chains: 2, Rules: 4, OtherRules: 4},
		{Family: "ip", Name: "nat", Chains: 3, Rules: 7, Shunt: true, ShuntRules: 2, OtherRules: 5},
	}
	if diff := cmp.Diff(want, r.Families[0].NFTTables); diff != "" {
		t.Errorf("IPv4 nft tables (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Table{{Family: "inet", Name: "istio-proxy-mangle", Chains: 1, Rules: 2, Shunt: true, ShuntRules: 2}}, r.OtherNFTTables); diff != "" {
		t.Errorf("other nft tables (-want +got):\n%s", diff)
	}
	wantIn := []Installed{
		{Backend: "iptables-nft", Family: "IPv4", Table: "nat", Chains: []string{"OUTPUT", "ISTIO_OUTPUT"}, Rules: 2},
		{Backend: "nftables", Family: "inet", Table: "mangle", Chains: []string{"ISTIO_PREROUTING"}, Rules: 2},
	}
	if diff := cmp.Diff(wantIn, r.Installed); diff != "" {
		t.Errorf("installed (-want +got):\n%s", diff)
	}
	if len(r.Warnings) == 0 || !strings.Contains(r.Warnings[0], "more than one backend") {
		t.Errorf("warnings %q, want the mixed backends first", r.Warnings)
	}
}

// TestFeatureStates: /proc's lists and loaded modules say available; the configuration says built in,
// loadable or missing; with neither, unknown.
func TestFeatureStates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(f *facts)
		want   map[string]State
	}{
		{"all built in", func(*facts) {}, map[string]State{FeatureTProxyNFT: Available, FeatureCTZoneIptables: Available}},
		{"modules not loaded", func(f *facts) {
			f.modules = map[string]bool{"nf_tables": true}
			f.targets = [2][]string{}
			for _, o := range []string{"NETFILTER_XT_TARGET_TPROXY", "NFT_TPROXY", "NFT_CT", "NETFILTER_XT_TARGET_CT", "NF_TABLES"} {
				f.config[o] = "m"
			}
		}, map[string]State{FeatureNFTables: Available, FeatureTProxyIptables: Loadable, FeatureTProxyNFT: Loadable, FeatureCTZoneNFT: Loadable}},
		{"module loaded", func(f *facts) {
			f.modules = map[string]bool{"nft_tproxy": true}
			f.config = nil
		}, map[string]State{FeatureTProxyNFT: Available, FeatureCTZoneNFT: Unknown, FeatureTProxyIptables: Available}},
		{"zones off", func(f *facts) { delete(f.config, "NF_CONNTRACK_ZONES") },
			map[string]State{FeatureCTZoneIptables: Missing, FeatureCTZoneNFT: Missing, FeatureTProxyIptables: Available}},
		{"no config, no modules", func(f *facts) { f.config, f.targets = nil, [2][]string{} },
			map[string]State{FeatureTProxyIptables: Unknown, FeatureNFTables: Unknown}},
		{"no cgroup2", func(f *facts) { f.cgroup2 = "" }, map[string]State{FeatureCgroup2: Missing}},
		{"mounts unread", func(f *facts) { f.mounts = false }, map[string]State{FeatureCgroup2: Unknown}},
		{"bpf missing", func(f *facts) { f.bpfErr = &shuntebpf.MissingError{Missing: []string{"map type sockhash"}} },
			map[string]State{FeatureBPF: Missing}},
		{"bpf unprivileged", func(f *facts) { f.bpfErr = fmt.Errorf("probe sk_msg: %w", syscall.EPERM) }, map[string]State{FeatureBPF: Unknown}},
		{"bpf probe failed", func(f *facts) { f.bpfErr = errors.New("probe a: bad\nprobe b: bad") }, map[string]State{FeatureBPF: Unknown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := baseFacts()
			tc.change(f)
			r := build(f)
			if len(r.Features) != 8 {
				t.Fatalf("%d features, want 8: %+v", len(r.Features), r.Features)
			}
			for name, want := range tc.want {
				if got, ok := r.Feature(name); !ok || got.State != want || got.Detail == "" || strings.Contains(got.Detail, "\n") {
					t.Errorf("%s = %+v, want %s with a detail", name, got, want)
				}
			}
		})
	}
}

// TestJSONShape: the JSON's lists are empty rather than null, and its field names are those documented.
func TestJSONShape(t *testing.T) {
	data, err := json.Marshal(build(baseFacts()))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k, v := range m {
		keys = append(keys, k)
		if v == nil {
			t.Errorf("%s is null", k)
		}
	}
	slices.Sort(keys)
	want := []string{"decision", "families", "features", "installed", "kernel", "modules", "network_namespace", "other_nft_tables", "tproxy_routing", "warnings"}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if !bytes.Contains(data, []byte(`"legacy_tables":[]`)) || !bytes.Contains(data, []byte(`"loaded":[]`)) {
		t.Errorf("empty lists are not [] in %s", data)
	}
}

func TestWriteText(t *testing.T) {
	f := baseFacts()
	f.netns = "/run/netns/pod"
	f.legacy = [2][]string{{"filter", "nat"}, {"raw"}}
	f.legacyRead[0] = map[string]legacyTable{"filter": {chains: []string{"INPUT", "FORWARD", "OUTPUT"}, rules: 1}}
	f.found = []backend.Found{ours("iptables-nft", redirect.IPv4)}
	f.nft = []nftTable{{family: "ip", name: "nat", chains: []string{"ISTIO_OUTPUT", "OUTPUT"}, rules: 2}}
	var b bytes.Buffer
	if err := build(f).WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"network namespace: /run/netns/pod\n",
		"  IPv4, IPv6: iptables-nft (no tables yet; nft is the default)\n",
		"  IPv4 legacy table ip filter: 3 chains, 1 rules\n",
		"  IPv4 legacy table ip nat: unread\n",
		"  IPv6 legacy table ip6 raw: unread\n",
		"  IPv4 nft table ip nat: 2 chains, 2 rules (shunt's: 2 rules; other programs': 0)\n",
		"  IPv6 nft tables: none\n",
		"  iptables-nft IPv4 nat: 2 rules in OUTPUT, ISTIO_OUTPUT\n",
		"  iptables_tproxy: available (TPROXY in /proc/net/ip_tables_targets)\n",
		"\nwarning: legacy iptables tables exist (IPv4 filter, nat; IPv6 raw) while iptables-nft is chosen",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParse(t *testing.T) {
	mods := parseModules([]byte("nf_tables 352256 3 nft_compat,nft_ct, Live 0x0\nxt_TPROXY 16384 0 - Live 0x0\n\n"))
	if diff := cmp.Diff(map[string]bool{"nf_tables": true, "xt_TPROXY": true}, mods); diff != "" {
		t.Errorf("parseModules (-want +got):\n%s", diff)
	}
	cfg := parseConfig([]byte("#\n# CONFIG_NFT_TPROXY is not set\nCONFIG_NF_TABLES=y\nCONFIG_NFT_CT=m\nCONFIG_X=n\nCONFIG_LOCALVERSION=\"\"\n"))
	if diff := cmp.Diff(map[string]string{"NF_TABLES": "y", "NFT_CT": "m", "LOCALVERSION": `""`}, cfg); diff != "" {
		t.Errorf("parseConfig (-want +got):\n%s", diff)
	}
	if got := parseList([]byte("nat\nfilter\nnat\n")); !slices.Equal(got, []string{"filter", "nat"}) {
		t.Errorf("parseList = %q", got)
	}
	mounts := "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/my\\040dir cgroup2 rw 0 0\n"
	if got := cgroup2Point([]byte(mounts)); got != "/sys/fs/cgroup/my dir" {
		t.Errorf("cgroup2Point = %q", got)
	}
}

func FuzzParseModules(f *testing.F) {
	f.Add([]byte("nf_tables 352256 3 nft_compat,nft_ct, Live 0x0\n"))
	f.Add([]byte("\n\n  \t"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for name := range parseModules(data) {
			if name == "" || strings.ContainsAny(name, " \t\n") {
				t.Errorf("module name %q", name)
			}
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("CONFIG_NF_TABLES=y\n# CONFIG_NFT_TPROXY is not set\n"))
	f.Add([]byte("CONFIG_=\nCONFIG_A==m"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for name, v := range parseConfig(data) {
			if strings.HasPrefix(name, "CONFIG_") && !strings.Contains(string(data), "CONFIG_CONFIG_") || v == "n" {
				t.Errorf("option %q = %q", name, v)
			}
		}
	})
}

// blob lays out legacy entries of layout lay, each a target name and, for ERROR, the chain it names.
func blob(lay legacyLayout, targets ...string) []byte {
	var b []byte
	for _, tg := range targets {
		name, data, _ := strings.Cut(tg, ":")
		e := make([]byte, lay.entrySize+64)
		binary.NativeEndian.PutUint16(e[lay.targetOffset:], uint16(lay.entrySize))
		binary.NativeEndian.PutUint16(e[lay.nextOffset:], uint16(len(e)))
		copy(e[lay.entrySize+2:], name)
		copy(e[lay.entrySize+32:], data)
		b = append(b, e...)
	}
	return b
}

// TestCountLegacy: rules are the entries that are no policy, no user chain's head or tail and not the
// final ERROR.
func TestCountLegacy(t *testing.T) {
	for _, lay := range []legacyLayout{legacyV4, legacyV6} {
		// nat (PREROUTING, INPUT, OUTPUT, POSTROUTING): 1 rule in OUTPUT, ISTIO_OUTPUT with 2 rules.
		b := blob(lay, "", "", "", "", "", "ERROR:ISTIO_OUTPUT", "REDIRECT", "REDIRECT", "", "ERROR:ERROR")
		chains, rules, err := countLegacy(lay, b, 0b11011)
		if err != nil || rules != 3 || !slices.Equal(chains, []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "ISTIO_OUTPUT"}) {
			t.Errorf("countLegacy = %q, %d, %v; want 5 chains, 3 rules", chains, rules, err)
		}
		for _, bad := range [][]byte{b[:len(b)-1], blob(lay, "ERROR:ERROR")[:lay.entrySize-1], blob(lay, "", "")} {
			if _, _, err := countLegacy(lay, bad, 0b11011); err == nil {
				t.Errorf("countLegacy of %d bytes: no error", len(bad))
			}
		}
	}
}

func FuzzCountLegacy(f *testing.F) {
	f.Add(blob(legacyV4, "", "ERROR:X", "", "ERROR:ERROR"), uint32(1), false)
	f.Add(blob(legacyV6, "", "", "ERROR:ERROR"), uint32(3), true)
	f.Fuzz(func(t *testing.T, data []byte, hooks uint32, v6 bool) {
		lay := legacyV4
		if v6 {
			lay = legacyV6
		}
		chains, rules, err := countLegacy(lay, data, hooks)
		if err == nil && (rules < 0 || rules*lay.entrySize > len(data) || len(chains) > 5+len(data)/lay.entrySize) {
			t.Errorf("%d rules, %d chains from %d bytes", rules, len(chains), len(data))
		}
	})
}
