package capture

import (
	"bytes"
	"context"
	"encoding/xml"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/golden"
	"github.com/shuntmesh/shunt/redirect"
)

// clearSettingsEnv unsets, for the test, every variable the settings flags of `shunt graph` read.
func clearSettingsEnv(t *testing.T) {
	t.Helper()
	names := []string{"REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE", "DROP_INVALID", "INVALID_DROP", "DUAL_STACK", "ISTIO_DUAL_STACK",
		"ISTIO_AGENT_DUAL_STACK", "ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
		"NETWORK_NAMESPACE", "FORMAT", "OUTPUT", "HIGHLIGHT"}
	for _, group := range [][]string{ruleFlags, backendFlags} {
		for _, f := range group {
			names = append(names, EnvName(f))
		}
	}
	for _, n := range names {
		t.Setenv(n, "")
	}
}

// graphTest runs `shunt graph args...` as the operator's binary would (with --pod), IPv6 detected as
// absent, and returns its standard output and error output.
type graphTest struct {
	env       map[string]string
	installed func(context.Context, string) ([]backend.Found, error)
	podConfig func([]byte, func(string)) (redirect.Config, error)
}

func (gt graphTest) run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	clearSettingsEnv(t)
	for k, v := range gt.env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, PodConfig: gt.podConfig}
	if env.PodConfig == nil {
		env.PodConfig = func([]byte, func(string)) (redirect.Config, error) { return redirect.DefaultConfig(), nil }
	}
	g := &graphCmd{env: env, installed: gt.installed,
		detectIPv6: func(string, bool) (bool, error) { return false, nil }}
	if g.installed == nil {
		g.installed = func(context.Context, string) ([]backend.Found, error) { return nil, nil }
	}
	root := &cobra.Command{Use: "shunt", SilenceErrors: true, SilenceUsage: true}
	root.AddCommand(graphCommand(g))
	err := Execute(context.Background(), root, append([]string{"graph"}, args...), env)
	return stdout.String(), stderr.String(), err
}

// TestGraphGolden: the drawings of a few settings, as flags, environment and --pod give them.
func TestGraphGolden(t *testing.T) {
	pod := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(pod, []byte("a pod"), 0o644); err != nil {
		t.Fatal(err)
	}
	tproxyDNS := func([]byte, func(string)) (redirect.Config, error) {
		cfg := redirect.DefaultConfig()
		cfg.Mode, cfg.RedirectDNS, cfg.DNSServers = redirect.ModeTProxy, true, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
		return cfg, nil
	}
	for _, tc := range []struct {
		name string
		gt   graphTest
		args []string
	}{
		{"graph-default-mermaid", graphTest{}, []string{"--format", "mermaid"}},
		{"graph-env-dot", graphTest{env: map[string]string{"ENVOY_PORT": "16001", "ISTIO_META_DNS_CAPTURE": "true"}},
			[]string{"--format=dot", "--dns-servers", "10.96.0.10", "-o", "5432"}},
		{"graph-native-ipv6-mermaid", graphTest{}, []string{"--native-nftables", "--ipv6=true", "--format", "mermaid",
			"--highlight", "inet/nat/OUTPUT#0, inet/nat/ISTIO_OUTPUT#12,inet/nat/ISTIO_REDIRECT#0"}},
		{"graph-pod-tproxy-dns-dot", graphTest{podConfig: tproxyDNS}, []string{"--pod", pod, "--format", "dot"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := tc.gt.run(t, tc.args...)
			if err != nil || stderr != "" {
				t.Fatalf("%v; stderr %q", err, stderr)
			}
			golden.Check(t, filepath.Join("testdata", tc.name+".golden"), out)
		})
	}
}

// TestDocsPictures: the pictures in docs/ are what `shunt graph` draws, in a namespace without IPv6,
// with no settings and in TPROXY mode with DNS capture. go test ./command/capture -run DocsPictures
// -update redraws them.
func TestDocsPictures(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
	}{
		{"graph-default.svg", nil},
		{"graph-tproxy-dns.svg", []string{"-m", "TPROXY", "--redirect-dns", "--dns-servers", "10.96.0.10"}},
	} {
		out, _, err := graphTest{}.run(t, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		if err := xml.Unmarshal([]byte(out), new(struct{})); err != nil {
			t.Errorf("%s: not XML: %v", tc.file, err)
		}
		golden.Check(t, filepath.Join("..", "..", "docs", tc.file), out)
	}
}

// TestGraphOutputFile: --output writes the file, and nothing to standard output.
func TestGraphOutputFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.svg")
	out, _, err := graphTest{}.run(t, "--output", path)
	if err != nil || out != "" {
		t.Fatalf("%v; stdout %q", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(data, []byte("<?xml")) || !bytes.Contains(data, []byte("ISTIO_OUTPUT")) {
		t.Errorf("%s: %v, %.80q", path, err, data)
	}
	if _, _, err := (graphTest{}).run(t, "--output", filepath.Join(path, "no", "dir")); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("unwritable --output: %v, want an error naming --output", err)
	}
}

// TestGraphRefused: bad values and combinations that would ignore a flag are refused, naming the flag
// and the value.
func TestGraphRefused(t *testing.T) {
	for _, tc := range []struct {
		gt   graphTest
		args []string
		want []string
	}{
		{graphTest{}, []string{"--format", "png"}, []string{"--format", `"png"`, "svg, dot, mermaid"}},
		{graphTest{}, []string{"--highlight", "IPv4/nat/ISTIO_OUTPUT"}, []string{"--highlight", `"IPv4/nat/ISTIO_OUTPUT"`, "#INDEX"}},
		{graphTest{}, []string{"--highlight", "IPv4/nat/OUTPUT#0,IPv7/nat/OUTPUT#1,IPv4/nat/OUTPUT#x"},
			[]string{"--highlight", `"IPv7/nat/OUTPUT#1"`, `"IPv4/nat/OUTPUT#x"`}},
		{graphTest{}, []string{"--highlight", "IPv4/nat/ISTIO_OUTPUT#42"}, []string{"--highlight IPv4/nat/ISTIO_OUTPUT#42", "no such rule"}},
		{graphTest{}, []string{"--native-nftables", "--highlight", "IPv4/nat/OUTPUT#0"}, []string{"--highlight IPv4/nat/OUTPUT#0"}},
		{graphTest{}, []string{"--force-iptables-binary", "nft"}, []string{"--force-iptables-binary", "only with --network-namespace"}},
		{graphTest{}, []string{"--force-iptables-binary", "legacy", "--native-nftables", "--network-namespace", "/x"},
			[]string{"--native-nftables", "--force-iptables-binary"}},
		{graphTest{}, []string{"--force-iptables-binary", "xtables", "--network-namespace", "/x"}, []string{"--force-iptables-binary", `"xtables"`}},
		{graphTest{}, []string{"--pod", "x.yaml", "-p", "15001"}, []string{"--pod", "--envoy-port"}},
		{graphTest{}, []string{"-o", "out.svg"}, []string{"--istio-local-outbound-ports-exclude", "out.svg"}},
		{graphTest{}, []string{"--explain"}, []string{"unknown flag", "--explain"}},
		{graphTest{}, []string{"--dry-run"}, []string{"unknown flag", "--dry-run"}},
		{graphTest{env: map[string]string{"ENVOY_PORT": "0"}}, nil, []string{"--envoy-port ($ENVOY_PORT)", `"0"`}},
		// A namespace holding none of shunt's rules, or two backends' rules.
		{graphTest{}, []string{"--network-namespace", "/run/netns/empty"}, []string{"--network-namespace /run/netns/empty", "no backend holds rules"}},
		{graphTest{installed: func(context.Context, string) ([]backend.Found, error) {
			return []backend.Found{{Backend: "nftables"}, {Backend: "iptables-nft"}}, nil
		}}, []string{"--network-namespace", "/run/netns/x"}, []string{"nftables, iptables-nft", "--native-nftables or --force-iptables-binary"}},
	} {
		_, _, err := tc.gt.run(t, tc.args...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v %q: %v, want an error with %q", tc.gt.env, tc.args, err, w)
			}
		}
	}
}

// TestGraphIgnoresOwnFlagsInEnvironment: $FORMAT, $OUTPUT and $HIGHLIGHT are not read (only the
// settings are, as for shunt iptables).
func TestGraphIgnoresOwnFlagsInEnvironment(t *testing.T) {
	out, _, err := graphTest{env: map[string]string{"FORMAT": "dot", "OUTPUT": "/nonexistent/x", "HIGHLIGHT": "bad"}}.run(t)
	if err != nil || !strings.HasPrefix(out, "<?xml") {
		t.Errorf("%v, %.40q: want the SVG on standard output", err, out)
	}
}

// TestGraphLive draws the rules a namespace holds with their counters: each backend's, found without
// naming it, and the plan's rules the namespace lacks named in a warning.
func TestGraphLive(t *testing.T) {
	testutil.RequireRoot(t)
	for _, s := range []backend.Settings{{IptablesVariant: "legacy"}, {NativeNFTables: true}} {
		n := testutil.NewNetNS(t)
		s.NetNS = n.Path()
		b, _, err := backend.Select(s)
		if err != nil {
			t.Fatal(err)
		}
		cfg := redirect.DefaultConfig()
		cfg.Mode = redirect.ModeTProxy
		plan, err := b.Plan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := (graphTest{installed: backend.Installed}).run(t, "--network-namespace", n.Path()); err == nil ||
			!strings.Contains(err.Error(), "no backend holds rules") {
			t.Errorf("%s, before apply: %v, want an error", b.Name(), err)
		}
		if err := b.Apply(context.Background(), &plan, backend.Mode{}); err != nil {
			t.Fatal(err)
		}
		gt := graphTest{installed: backend.Installed}
		out, stderr, err := gt.run(t, "--network-namespace", n.Path(), "-m", "TPROXY", "--format", "dot")
		if err != nil || stderr != "" {
			t.Fatalf("%s: %v; stderr %q", b.Name(), err, stderr)
		}
		if got, want := strings.Count(out, " pkt, "), ruleCount(&plan); got != want {
			t.Errorf("%s: %d rules with counters drawn, want %d", b.Name(), got, want)
		}
		if !strings.Contains(out, "as "+b.Name()+" holds them in "+n.Path()) {
			t.Errorf("%s: title does not name the backend and namespace:\n%.300s", b.Name(), out)
		}
		// Other settings: drawn, the missing rules named.
		out, stderr, err = gt.run(t, "--network-namespace", n.Path(), "--format", "mermaid")
		if err != nil || out == "" || !strings.Contains(stderr, "warning") || !strings.Contains(stderr, "PREROUTING") {
			t.Errorf("%s, REDIRECT settings on TPROXY rules: %v; stderr %q", b.Name(), err, stderr)
		}
		if s.NativeNFTables {
			continue
		}
		if _, _, err := gt.run(t, "--network-namespace", n.Path(), "--native-nftables"); err == nil || !strings.Contains(err.Error(), "no rules of shunt's") {
			t.Errorf("--native-nftables where iptables holds the rules: %v", err)
		}
	}
}

func ruleCount(p *redirect.Plan) int {
	n := 0
	for _, fp := range p.Families {
		for _, t := range fp.Tables {
			for _, c := range t.Chains {
				n += len(c.Rules)
			}
		}
	}
	return n
}
