package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/testutil/golden"
	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/trace"
)

// traceTest runs `shunt trace args...` as the operator's binary would (with --pod and, when hook is
// set, --ebpf), IPv6 detected as absent.
type traceTest struct {
	env       map[string]string
	podConfig func([]byte, func(string)) (redirect.Config, error)
	podEBPF   func([]byte) (bool, error)
	hook      func(*redirect.Config, []netip.Addr, HookConnect) (HookDecision, error)
	ebpfState func(pinDir, netns string) (EBPFLive, error)
	installed func(context.Context, string) ([]backend.Found, error)
	podAddrs  func(string) ([]netip.Addr, error)
	watching  func()
}

func (tt traceTest) run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	clearSettingsEnv(t)
	for _, n := range []string{"DIRECTION", "PROTO", "SRC", "DST", "UID", "GID", "IFACE", "POD_IP", "JSON", "GRAPH", "WATCH", "EBPF", "EBPF_PIN_DIR", "MARK"} {
		t.Setenv(n, "")
	}
	for k, v := range tt.env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, PodConfig: tt.podConfig, PodEBPF: tt.podEBPF, ConnectHook: tt.hook,
		EBPFState: tt.ebpfState}
	if env.PodConfig == nil {
		env.PodConfig = func([]byte, func(string)) (redirect.Config, error) { return redirect.DefaultConfig(), nil }
	}
	tc := &traceCmd{env: env, installed: tt.installed, podAddrs: tt.podAddrs, watching: tt.watching,
		detectIPv6: func(string, bool) (bool, error) { return false, nil }}
	if tc.installed == nil {
		tc.installed = func(context.Context, string) ([]backend.Found, error) { return nil, nil }
	}
	if tc.podAddrs == nil {
		tc.podAddrs = func(string) ([]netip.Addr, error) { return nil, errors.New("no namespace in this test") }
	}
	root := &cobra.Command{Use: "shunt", SilenceErrors: true, SilenceUsage: true}
	root.AddCommand(traceCommand(tc))
	err := Execute(context.Background(), root, append([]string{"trace"}, args...), env)
	return stdout.String(), stderr.String(), err
}

// fakeHook decides as a connect hook that captures everything but uid 1337, and UDP to port 53
// only, for the output's shape.
func fakeHook(_ *redirect.Config, _ []netip.Addr, c HookConnect) (HookDecision, error) {
	if c.UID == 1337 {
		return HookDecision{Verdict: "pass", Reason: "uid 1337 is the proxy's"}, nil
	}
	if c.UDP && c.Dst.Port() != 53 {
		return HookDecision{Verdict: "pass", Reason: "UDP is only captured as DNS, to port 53"}, nil
	}
	if c.UDP {
		return HookDecision{Verdict: "dns", Port: 15053, Reason: "DNS over UDP goes to the DNS proxy"}, nil
	}
	return HookDecision{Verdict: "proxy", Port: 15001, Reason: "every destination nothing excludes is captured"}, nil
}

// TestTraceGolden: the traces of the README's questions and a few more, as flags, environment and
// --pod give the settings.
func TestTraceGolden(t *testing.T) {
	pod := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(pod, []byte("a pod"), 0o644); err != nil {
		t.Fatal(err)
	}
	tproxy := func([]byte, func(string)) (redirect.Config, error) {
		cfg := redirect.DefaultConfig()
		cfg.Mode = redirect.ModeTProxy
		return cfg, nil
	}
	onEBPF := func([]byte) (bool, error) { return true, nil }
	for _, tc := range []struct {
		name string
		tt   traceTest
		args []string
	}{
		{"trace-excluded-cidr", traceTest{}, []string{"-x", "10.0.0.0/8", "--dst", "10.1.2.3:443", "--pod-ip", "10.244.0.7"}},
		{"trace-proxy-uid", traceTest{}, []string{"--dst", "10.1.2.3:443", "--uid", "1337", "--gid", "1337", "--pod-ip", "10.244.0.7"}},
		{"trace-inbound-excluded-port", traceTest{}, []string{"--istio-local-exclude-ports", "15090,15021,15020,9090",
			"--direction", "in", "--src", "10.244.1.9:40000", "--dst", "10.244.0.7:9090", "--pod-ip", "10.244.0.7"}},
		{"trace-inbound-captured", traceTest{env: map[string]string{"INBOUND_CAPTURE_PORT": "15016"}},
			[]string{"--direction=in", "--src", "10.244.1.9:40000", "--dst", "10.244.0.7:8080"}},
		{"trace-dns-udp", traceTest{}, []string{"--redirect-dns", "--dns-servers", "10.96.0.10", "--proto", "udp", "--dst", "10.96.0.10:53", "--uid", "1000"}},
		{"trace-ipv6-native", traceTest{}, []string{"--native-nftables", "--ipv6=true", "--dst", "[2001:db8::1]:80", "--src", "fd00::7"}},
		{"trace-pod-tproxy-ebpf", traceTest{podConfig: tproxy, podEBPF: onEBPF, hook: fakeHook},
			[]string{"--pod", pod, "--dst", "10.1.2.3:443", "--pod-ip", "10.244.0.7"}},
		{"trace-ebpf-inbound", traceTest{hook: fakeHook}, []string{"--ebpf", "--direction", "in", "--src", "10.244.1.9:40000", "--dst", "10.244.0.7:8080"}},
		{"trace-ebpf-dns-udp", traceTest{hook: fakeHook}, []string{"--ebpf", "--redirect-dns", "--dns-servers", "10.96.0.10", "--proto", "udp", "--dst", "10.96.0.10:53", "--uid", "1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := tc.tt.run(t, tc.args...)
			if err != nil || stderr != "" {
				t.Fatalf("%v; stderr %q", err, stderr)
			}
			golden.Check(t, filepath.Join("testdata", tc.name+".golden"), out)
			again, _, _ := tc.tt.run(t, tc.args...)
			if again != out {
				t.Error("a second run prints otherwise")
			}
		})
	}
}

// TestTraceJSON: --json carries the steps, the path, the verdict and the eBPF decision.
func TestTraceJSON(t *testing.T) {
	out, _, err := traceTest{hook: fakeHook}.run(t, "--json", "--ebpf", "--dst", "1.2.3.4:443", "--pod-ip", "10.244.0.7")
	if err != nil {
		t.Fatal(err)
	}
	var rep traceReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if rep.Verdict.Kind != "captured" || rep.Verdict.Port != 15001 || rep.Verdict.OrigDst != "1.2.3.4:443" {
		t.Errorf("verdict %+v", rep.Verdict)
	}
	want := []string{"IPv4/nat/OUTPUT#0", "IPv4/nat/ISTIO_OUTPUT#8", "IPv4/nat/ISTIO_REDIRECT#0"}
	if strings.Join(rep.Path, " ") != strings.Join(want, " ") {
		t.Errorf("path %q, want %q", rep.Path, want)
	}
	if rep.EBPF == nil || rep.EBPF.Verdict != "proxy" || !strings.Contains(rep.EBPF.Then, "127.0.0.1:15001") {
		t.Errorf("ebpf %+v", rep.EBPF)
	}
	matched := 0
	for _, s := range rep.Steps {
		if s.Matched {
			matched++
			if s.Rule == "" || s.Flow == "" || s.Why == "" {
				t.Errorf("step %+v lacks its rule, flow or why", s)
			}
		}
	}
	if matched != len(want) {
		t.Errorf("%d matched steps, want %d", matched, len(want))
	}
}

// TestTraceGraph: --graph draws the plan with the path emphasised, the format by the extension.
func TestTraceGraph(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ file, want string }{
		{"path.svg", "<?xml"}, {"path.dot", "digraph"}, {"path.mmd", "flowchart"},
	} {
		file := filepath.Join(dir, tc.file)
		out, _, err := traceTest{}.run(t, "--dst", "10.1.2.3:443", "--graph", file)
		if err != nil || !strings.HasPrefix(out, "trace out tcp") {
			t.Fatalf("%s: %v, %.40q", tc.file, err, out)
		}
		data, err := os.ReadFile(file)
		if err != nil || !strings.Contains(string(data), tc.want) || !strings.Contains(string(data), "trace out tcp 10.1.2.3:443") {
			t.Errorf("%s: %v, %.200q", tc.file, err, data)
		}
		if tc.file == "path.svg" {
			if err := xml.Unmarshal(data, new(struct{})); err != nil {
				t.Errorf("%s: not XML: %v", tc.file, err)
			}
		}
	}
}

// TestDocsTracePicture: docs/trace-excluded-cidr.svg is what --graph draws for the README's first
// question. go test ./command/capture -run DocsTracePicture -update redraws it.
func TestDocsTracePicture(t *testing.T) {
	file := filepath.Join(t.TempDir(), "trace.svg")
	if _, _, err := (traceTest{}).run(t, "-x", "10.0.0.0/8", "--dst", "10.1.2.3:443", "--pod-ip", "10.244.0.7", "--graph", file); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, filepath.Join("..", "..", "docs", "trace-excluded-cidr.svg"), string(data))
}

// TestTraceRefused: bad values and combinations that would ignore a flag are refused, naming the flag
// and the value.
func TestTraceRefused(t *testing.T) {
	for _, tc := range []struct {
		tt   traceTest
		args []string
		want []string
	}{
		{traceTest{}, nil, []string{"--dst", "ADDR:PORT"}},
		{traceTest{}, []string{"--dst", "10.1.2.3"}, []string{"--dst", `"10.1.2.3"`, "ADDR:PORT"}},
		{traceTest{}, []string{"--dst", "10.1.2.3:0"}, []string{"--dst", "port 0"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--direction", "sideways"}, []string{"--direction", `"sideways"`}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--proto", "icmp"}, []string{"--proto", `"icmp"`, "tcp or udp"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--uid", "-1", "--gid", "x"}, []string{"--uid", `"-1"`, "--gid", `"x"`}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--src", "fd00::1"}, []string{"--src", `"fd00::1"`, "family"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--iface", "lo"}, []string{"--iface", `"lo"`}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--pod-ip", "127.0.0.1,bogus"}, []string{"--pod-ip", `"127.0.0.1"`, `"bogus"`}},
		{traceTest{}, []string{"--direction", "in", "--dst", "10.0.0.7:80"}, []string{"--src", "inbound connection needs"}},
		{traceTest{}, []string{"--direction", "in", "--dst", "10.0.0.7:80", "--src", "10.0.0.9"}, []string{"--src", `"10.0.0.9"`, "port"}},
		{traceTest{}, []string{"--direction", "in", "--dst", "10.0.0.7:80", "--src", "10.0.0.9:4000", "--uid", "1000"},
			[]string{"--uid", "only with --direction out"}},
		{traceTest{}, []string{"--direction", "in", "--dst", "127.0.0.1:80", "--src", "10.0.0.9:4000"}, []string{"--dst", "loopback"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--watch", "5s"}, []string{"--watch", "only with --network-namespace"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--network-namespace", "/x", "--watch", "0s"}, []string{"--watch", "above 0"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--graph", "path.png"}, []string{"--graph", `"path.png"`, ".svg"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--force-iptables-binary", "nft"}, []string{"--force-iptables-binary", "only with --network-namespace"}},
		{traceTest{hook: fakeHook}, []string{"--dst", "1.2.3.4:80", "--pod", "x.yaml", "--ebpf"}, []string{"--ebpf", "--pod"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--ebpf"}, []string{"unknown flag", "--ebpf"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--pod", "x.yaml", "-p", "15001"}, []string{"--pod", "--envoy-port"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "-d", "x"}, []string{"--istio-local-exclude-ports", `"x"`}},
		{traceTest{}, []string{"--dst", "[2001:db8::1]:80"}, []string{"not covered"}},
		{traceTest{}, []string{"--dst", "1.2.3.4:80", "--network-namespace", "/run/netns/empty"}, []string{"--network-namespace /run/netns/empty", "no backend holds rules"}},
	} {
		_, _, err := tc.tt.run(t, tc.args...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %v, want an error with %q", tc.args, err, w)
			}
		}
	}
}

// TestTraceIgnoresOwnFlagsInEnvironment: the connection's flags are not read from the environment
// (only the settings are, as for shunt iptables).
func TestTraceIgnoresOwnFlagsInEnvironment(t *testing.T) {
	out, _, err := traceTest{env: map[string]string{"DIRECTION": "in", "UID": "x", "GRAPH": "/nonexistent/x.svg", "JSON": "true"}}.
		run(t, "--dst", "1.2.3.4:80")
	if err != nil || !strings.HasPrefix(out, "trace out tcp") {
		t.Errorf("%v, %.40q", err, out)
	}
}

// TestWatched: the rules whose counters moved, against the path.
func TestWatched(t *testing.T) {
	plan, err := redirect.Build(redirect.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ref := func(chain string, i int) redirect.RuleRef {
		return redirect.RuleRef{Family: redirect.IPv4, Table: redirect.TableNAT, Chain: chain, Index: i}
	}
	path := []redirect.RuleRef{ref("OUTPUT", 0), ref("ISTIO_OUTPUT", 8), ref("ISTIO_REDIRECT", 0)}
	before := map[redirect.RuleRef]redirect.Counters{ref("OUTPUT", 0): {Packets: 5, Bytes: 300}}
	after := map[redirect.RuleRef]redirect.Counters{ref("OUTPUT", 0): {Packets: 6, Bytes: 360},
		ref("ISTIO_OUTPUT", 8): {Packets: 1, Bytes: 60}, ref("ISTIO_REDIRECT", 0): {Packets: 1, Bytes: 60}}
	if w := watched(&plan, path, before, after, 0); !w.Agrees || len(w.Moved) != 3 || w.Moved[0].Packets != 1 {
		t.Errorf("%+v", w)
	}
	after[ref("ISTIO_OUTPUT", 7)] = redirect.Counters{Packets: 1}
	delete(after, ref("ISTIO_REDIRECT", 0))
	w := watched(&plan, path, before, after, 0)
	if w.Agrees || strings.Join(w.OffPath, ",") != "IPv4/nat/ISTIO_OUTPUT#7" || strings.Join(w.NotMoved, ",") != "IPv4/nat/ISTIO_REDIRECT#0" {
		t.Errorf("%+v", w)
	}
}

// FuzzParseConn: no input of the connection flags panics, and whatever parseConn accepts trace.Walk
// accepts too (every refusal names a flag), on the plans of the default settings.
func FuzzParseConn(f *testing.F) {
	f.Add("out", "tcp", "", "10.1.2.3:443", "", "", "", "10.244.0.7")
	f.Add("in", "udp", "10.244.1.9:40000", "10.244.0.7:9090", "", "", "eth1", "")
	f.Add("out", "TCP", "[fd00::7]:5000", "[2001:db8::1]:80", "1337", "1337", "veth0", "fd00::7")
	f.Add("in", "tcp", "127.0.0.1:1", "[::ffff:10.0.0.1]:80", "0", "", "lo", "::1")
	f.Add("sideways", "icmp", "x", "y", "-1", "4294967296", "a/b", "bogus")
	plans := map[bool]redirect.Plan{}
	for _, native := range []bool{false, true} {
		cfg := redirect.DefaultConfig()
		cfg.IPv6, cfg.NativeNFTables = true, native
		plan, err := redirect.Build(cfg)
		if err != nil {
			f.Fatal(err)
		}
		plans[native] = plan
	}
	f.Fuzz(func(t *testing.T, dir, proto, src, dst, uid, gid, iface, podIPs string) {
		c, err := parseConn(connSpec{Direction: dir, Proto: proto, Src: src, Dst: dst, UID: uid, GID: gid, Iface: iface,
			PodIPs: strings.Split(podIPs, ",")})
		if err != nil {
			if !strings.Contains(err.Error(), "--") {
				t.Fatalf("error names no flag: %v", err)
			}
			return
		}
		_ = connText(c)
		for native, plan := range plans {
			res, err := trace.Walk(&plan, c)
			if err != nil {
				t.Fatalf("native %v: parseConn accepted %+v, Walk refused it: %v", native, c, err)
			}
			_ = (&traceReport{Steps: steps(res, nil)}).text()
		}
	})
}

// With a live namespace, an eBPF pod's trace shows the data path's state and, with --watch, the
// counters that moved.
func TestTraceEBPFLive(t *testing.T) {
	reads := []EBPFLive{
		{Loaded: true, Registered: true, Counters: map[string]uint64{"connects_redirected": 4, "sockets_paired": 8, "redirect_misses": 0}},
		{Loaded: true, Registered: true, Counters: map[string]uint64{"connects_redirected": 5, "sockets_paired": 10, "redirect_misses": 0}},
	}
	var asked []string
	tc := &traceCmd{f: &istioFlags{netns: "/run/netns/pod"}, pinDir: "/sys/fs/bpf/shunt", watch: time.Second,
		env: Env{EBPFState: func(pinDir, netns string) (EBPFLive, error) {
			asked = append(asked, pinDir+" "+netns)
			st := reads[0]
			reads = reads[1:]
			return st, nil
		}}}
	before, err := tc.env.EBPFState(tc.pinDir, tc.f.netns)
	if err != nil {
		t.Fatal(err)
	}
	live, err := tc.ebpfLive(before)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{"connects_redirected": 1, "sockets_paired": 2}; !maps.Equal(live.Moved, want) {
		t.Errorf("moved %v, want %v", live.Moved, want)
	}
	if got, want := live.text(), "  eBPF data path: loaded, this namespace registered\n"+
		"  eBPF counters moved (node-wide): connects_redirected +1 sockets_paired +2\n"; got != want {
		t.Errorf("text:\n%s\nwant:\n%s", got, want)
	}
	if len(asked) != 2 || asked[0] != "/sys/fs/bpf/shunt /run/netns/pod" {
		t.Errorf("state read %v", asked)
	}
	for _, tc := range []struct {
		live traceEBPFLive
		want string
	}{
		{traceEBPFLive{}, "not loaded on this node"},
		{traceEBPFLive{EBPFLive: EBPFLive{Loaded: true}}, "this namespace is not registered"},
		{traceEBPFLive{EBPFLive: EBPFLive{Loaded: true, Registered: true}, Moved: map[string]uint64{}}, "none moved"},
	} {
		if got := tc.live.text(); !strings.Contains(got, tc.want) {
			t.Errorf("%+v: %q, want %q in it", tc.live, got, tc.want)
		}
	}
}

func TestTraceEBPFPinDir(t *testing.T) {
	noState := func(string, string) (EBPFLive, error) { t.Error("eBPF state read"); return EBPFLive{}, nil }
	_, _, err := traceTest{hook: fakeHook, ebpfState: noState}.run(t, "--dst", "1.2.3.4:80", "--ebpf", "--ebpf-pin-dir", "/x")
	if err == nil || !strings.Contains(err.Error(), "--ebpf-pin-dir only with --network-namespace") {
		t.Errorf("--ebpf-pin-dir without a namespace: %v", err)
	}
	// Not offered without the eBPF state (the init container's binary).
	_, _, err = traceTest{hook: fakeHook}.run(t, "--dst", "1.2.3.4:80", "--ebpf", "--ebpf-pin-dir", "/x")
	if err == nil || !strings.Contains(err.Error(), "unknown flag") {
		t.Errorf("--ebpf-pin-dir without EBPFState: %v", err)
	}
}

// --mark: the proxy's transparent upstream in TPROXY mode carries the TPROXY mark; the trace shows the
// rules that match on it, and refuses a mark where none can be.
func TestTraceMark(t *testing.T) {
	out, _, err := traceTest{}.run(t, "-m", "TPROXY", "--dst", "10.244.0.7:8080", "--uid", "0", "--gid", "1337",
		"--mark", "0x539", "--pod-ip", "10.244.0.7", "--src", "10.244.1.9", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep traceReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.Connection, "mark 1337") {
		t.Errorf("connection %q does not show the mark", rep.Connection)
	}
	unmarked, _, err := traceTest{}.run(t, "-m", "TPROXY", "--dst", "10.244.0.7:8080", "--uid", "0", "--gid", "1337",
		"--pod-ip", "10.244.0.7", "--src", "10.244.1.9", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var urep traceReport
	if err := json.Unmarshal([]byte(unmarked), &urep); err != nil {
		t.Fatal(err)
	}
	if slices.Equal(rep.Path, urep.Path) && rep.Verdict == urep.Verdict {
		t.Errorf("the mark changed nothing: path %v, verdict %+v", rep.Path, rep.Verdict)
	}
	for _, args := range [][]string{
		{"--dst", "10.244.0.7:8080", "--mark", "lots"},
		{"--dst", "10.244.0.7:8080", "--mark", "4294967296"},
		{"--direction", "in", "--src", "10.244.1.9:4000", "--dst", "10.244.0.7:8080", "--mark", "1"},
	} {
		if _, _, err := (traceTest{}).run(t, args...); err == nil || !strings.Contains(err.Error(), "--mark") {
			t.Errorf("%v: %v, want an error naming --mark", args, err)
		}
	}
}
