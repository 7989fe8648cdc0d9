package meshpod

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/redirect"
)

func readInjected(t *testing.T, name string) *Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "injected", name))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// TestInjectedPods decides on each pod shape Istio's injector writes (testdata/injected) as istio-cni
// does: native and classic sidecars are captured with the settings of their annotations and proxy,
// gateways, istio-init pods and interception mode NONE are left alone.
func TestInjectedPods(t *testing.T) {
	defaults := redirect.DefaultConfig()
	tests := []struct {
		file  string
		skip  string // substring of the reason; "" when captured
		check func(t *testing.T, cfg redirect.Config)
	}{
		{file: "native-sidecar.yaml", check: func(t *testing.T, cfg redirect.Config) {
			if cfg.Mode != redirect.ModeRedirect || !slices.Equal(cfg.ProxyUIDs, []uint32{1337}) || !slices.Equal(cfg.ProxyGIDs, []uint32{1337}) {
				t.Errorf("mode %s, uids %v, gids %v; want REDIRECT for 1337/1337", cfg.Mode, cfg.ProxyUIDs, cfg.ProxyGIDs)
			}
			if !slices.Equal(cfg.InboundPortsExclude, []uint16{15020, 15021, 15090}) || !slices.Equal(cfg.OutboundPortsExclude, []uint16{15020}) {
				t.Errorf("excluded ports in %v out %v", cfg.InboundPortsExclude, cfg.OutboundPortsExclude)
			}
			if cfg.RedirectDNS || cfg.IPv6 {
				t.Errorf("DNS %v IPv6 %v, want neither", cfg.RedirectDNS, cfg.IPv6)
			}
		}},
		{file: "classic-sidecar.yaml", check: func(t *testing.T, cfg redirect.Config) {
			native, _, err := ConfigForPod(readInjected(t, "native-sidecar.yaml"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(cfg) != fmt.Sprint(native) {
				t.Errorf("classic sidecar %+v\nnative sidecar %+v\nwant the same settings", cfg, native)
			}
		}},
		{file: "native-sidecar-excludes.yaml", check: func(t *testing.T, cfg redirect.Config) {
			if !slices.Equal(cfg.InboundPortsExclude, []uint16{8081, 15020, 15021, 15090}) ||
				!slices.Equal(cfg.OutboundPortsExclude, []uint16{5432, 6379}) {
				t.Errorf("excluded ports in %v out %v", cfg.InboundPortsExclude, cfg.OutboundPortsExclude)
			}
			if fmt.Sprint(cfg.OutboundIPRangesExclude) != "[169.254.169.254/32 10.96.0.10/32]" || !slices.Equal(cfg.ExcludeInterfaces, []string{"net1"}) {
				t.Errorf("excluded CIDRs %v interfaces %v", cfg.OutboundIPRangesExclude, cfg.ExcludeInterfaces)
			}
			if !cfg.RedirectDNS || !cfg.CaptureAllDNS {
				t.Error("DNS capture off, want on (ISTIO_META_DNS_CAPTURE)")
			}
		}},
		{file: "native-sidecar-tproxy.yaml", check: func(t *testing.T, cfg redirect.Config) {
			// The proxy runs as uid 0: istio-cni then uses 1337, and the group 1337 from runAsGroup.
			if cfg.Mode != redirect.ModeTProxy || !slices.Equal(cfg.ProxyUIDs, defaults.ProxyUIDs) || !slices.Equal(cfg.ProxyGIDs, []uint32{1337}) {
				t.Errorf("mode %s, uids %v, gids %v; want TPROXY for 1337/1337", cfg.Mode, cfg.ProxyUIDs, cfg.ProxyGIDs)
			}
		}},
		{file: "gateway.yaml", skip: "runs as router"},
		{file: "istio-init.yaml", skip: "istio-init"},
		{file: "interception-none.yaml", skip: "interception mode NONE"},
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "injected", "*.yaml"))
	if len(files) != len(tests) {
		t.Errorf("testdata/injected holds %d pods, the table %d: give each a case", len(files), len(tests))
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".yaml"), func(t *testing.T) {
			d, err := Decide(readInjected(t, tt.file), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Warnings) > 0 {
				t.Errorf("warnings on an injector-written pod: %q", d.Warnings)
			}
			if tt.skip != "" {
				if !strings.Contains(d.Skip, tt.skip) {
					t.Errorf("skip = %q, want the pod left alone because %q", d.Skip, tt.skip)
				}
				return
			}
			if d.Skip != "" {
				t.Fatalf("skipped (%s), want it captured", d.Skip)
			}
			if _, err := redirect.Build(d.Config); err != nil {
				t.Fatal(err)
			}
			tt.check(t, d.Config)
		})
	}
}

// podShape is one point of the space of pods the property test draws from: the facts istio-cni's
// ADD reads, each with values that do and do not parse.
type podShape struct {
	hostNetwork  bool
	proxy        string // "", "regular", "native" (init container), "both"
	istioInit    string // "", "init", "regular"
	proxyArgs    []string
	disableEnvoy *string
	injectLabel  *string
	injectAnn    *string
	status       bool
	mode         *string
	annKey       string // one traffic annotation, or ""
	annValue     string
	dnsCapture   *string
	runAsUser    *int64
	runAsGroup   *int64
	ips          []string
	dualStack    *string
}

var (
	shapeBools     = []string{"true", "1", "t", "T", "TRUE", "True", "false", "0", "f", "F", "FALSE", "False", "yes", "no", "tRuE", "", " true"}
	shapeModes     = []string{"REDIRECT", "TPROXY", "NONE", "redirect", "Tproxy", "none", "", "BOGUS", " REDIRECT"}
	shapeProxyArgs = [][]string{nil, {"proxy", "sidecar", "--domain", "x"}, {"proxy", "router"}, {"proxy"}, {"proxy", "waypoint"}, {"router", "proxy"}, {"proxy", ""}}
	shapeIDs       = []int64{0, 1337, 2000, -1, 4294967295}
	// shapeAnnotations holds, per traffic annotation, values and what istio-cni makes of each:
	// "ok", "error" (ADD fails), or "ok0" (accepted; port 0 is dropped with a warning).
	shapeAnnotations = map[string]map[string]string{
		AnnotationExcludeOutboundPorts: {"5432": "ok", "5432, 6379": "ok", " 5432 ": "ok", "": "ok", "5432,": "error", "5432,,6379": "error", "http": "error", "70000": "error", "*": "error", "0": "ok0"},
		AnnotationIncludeInboundPorts:  {"*": "ok", "9080,9090": "ok", "": "ok", " * ": "error", "*,80": "error", "-1": "error", "0,80": "ok0"},
		AnnotationExcludeInboundPorts:  {"8081": "ok", "8081,15020": "ok", "": "ok", "a": "error", "*": "error"},
		AnnotationIncludeOutboundPorts: {"443": "ok", "": "ok", "443,": "error", "*": "error"},
		AnnotationIncludeOutboundCIDRs: {"*": "ok", "10.0.0.0/8": "ok", "10.0.0.0/8,fd00::/8": "ok", "": "ok", "10.0.0.0/8, 192.168.0.0/16": "error", "10.0.0.0/8,": "error", "10.0.0.1": "error", "*,10.0.0.0/8": "error", " *": "error"},
		AnnotationExcludeOutboundCIDRs: {"169.254.169.254/32": "ok", "": "ok", "*": "error", "10.0.0.0/33": "error"},
		AnnotationExcludeInterfaces:    {"net1": "ok", "net1, eth1": "ok", "": "ok", "net1,": "error", "1net": "error", "eth+": "error", "averyveryverylongname": "error", "a b": "error"},
		AnnotationRerouteVirtualIfaces: {"tap0": "ok", "": "ok", "tap0,,tap1": "error", "tap*": "error"},
		AnnotationKubevirtInterfaces:   {"tap0": "ok", "-tap": "error"},
	}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func maybe[T any](r *rand.Rand, xs []T) *T {
	if r.IntN(3) == 0 {
		return nil
	}
	v := pick(r, xs)
	return &v
}

func rarely[T any](r *rand.Rand, xs []T) *T {
	if r.IntN(4) != 0 {
		return nil
	}
	v := pick(r, xs)
	return &v
}

func randomShape(r *rand.Rand) podShape {
	s := podShape{
		hostNetwork:  r.IntN(20) == 0,
		proxy:        pick(r, []string{"", "regular", "native", "native", "both"}),
		istioInit:    pick(r, []string{"", "", "", "", "", "init", "regular"}),
		proxyArgs:    pick(r, append(shapeProxyArgs, shapeProxyArgs[1], shapeProxyArgs[1], shapeProxyArgs[1])),
		disableEnvoy: rarely(r, shapeBools),
		injectLabel:  rarely(r, shapeBools),
		injectAnn:    rarely(r, shapeBools),
		status:       r.IntN(8) != 0,
		mode:         rarely(r, shapeModes),
		dnsCapture:   maybe(r, shapeBools),
		runAsUser:    maybe(r, shapeIDs),
		runAsGroup:   maybe(r, shapeIDs),
		dualStack:    maybe(r, shapeBools),
		ips:          pick(r, [][]string{{"10.1.0.5"}, {"fd00::5"}, {"10.1.0.5", "fd00::5"}, {"fd00::5", "10.1.0.5"}, {"fe80::1", "fd00::5"}}),
	}
	if r.IntN(2) == 0 {
		keys := make([]string, 0, len(shapeAnnotations))
		for k := range shapeAnnotations {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		s.annKey = pick(r, keys)
		values := make([]string, 0)
		for v := range shapeAnnotations[s.annKey] {
			values = append(values, v)
		}
		slices.Sort(values)
		s.annValue = pick(r, values)
	}
	return s
}

// pod builds the Pod of a shape, laid out as the injector lays it out.
func (s podShape) pod() *Pod {
	p := &Pod{}
	p.Metadata.Name, p.Metadata.Namespace = "p", "ns"
	p.Metadata.Annotations = map[string]string{}
	p.Metadata.Labels = map[string]string{}
	p.Spec.HostNetwork = s.hostNetwork
	proxy := Container{Name: ProxyContainerName, Args: s.proxyArgs}
	if s.runAsUser != nil || s.runAsGroup != nil {
		proxy.SecurityContext = &SecurityContext{RunAsUser: s.runAsUser, RunAsGroup: s.runAsGroup}
	}
	env := func(name string, v *string) {
		if v != nil {
			proxy.Env = append(proxy.Env, EnvVar{Name: name, Value: *v})
		}
	}
	env("DISABLE_ENVOY", s.disableEnvoy)
	env("ISTIO_META_DNS_CAPTURE", s.dnsCapture)
	env("ISTIO_DUAL_STACK", s.dualStack)
	init := []Container{{Name: "istio-validation"}}
	regular := []Container{{Name: "app"}}
	switch s.proxy {
	case "regular":
		regular = append(regular, proxy)
	case "native":
		init = append(init, proxy)
	case "both":
		init = append(init, proxy)
		regular = append(regular, proxy)
	}
	switch s.istioInit {
	case "init":
		init = append([]Container{{Name: InitContainerName}}, init...)
	case "regular":
		regular = append(regular, Container{Name: InitContainerName})
	}
	p.Spec.InitContainers, p.Spec.Containers = init, regular
	if s.injectLabel != nil {
		p.Metadata.Labels[LabelInject] = *s.injectLabel
	}
	if s.injectAnn != nil {
		p.Metadata.Annotations[AnnotationInject] = *s.injectAnn
	}
	if s.status {
		p.Metadata.Annotations[AnnotationStatus] = `{"initContainers":["istio-validation","istio-proxy"]}`
	}
	if s.mode != nil {
		p.Metadata.Annotations[AnnotationInterceptionMode] = *s.mode
	}
	if s.annKey != "" {
		p.Metadata.Annotations[s.annKey] = s.annValue
	}
	return p
}

// istioBool is strconv.ParseBool's table, written out: istio-cni parses every boolean with it.
func istioBool(v string) (value, ok bool) {
	switch v {
	case "1", "t", "T", "TRUE", "true", "True":
		return true, true
	case "0", "f", "F", "FALSE", "false", "False":
		return false, true
	}
	return false, false
}

// istioCNIVerdict is the decision table derived from istio-cni's ADD (cni/pkg/plugin: CmdAdd →
// doAddRun → getK8sPodInfo/ExtractPodInfo → NewRedirect), row by row, plus shunt's two documented
// rows (hostNetwork, interception mode NONE). It returns "skip", "error" or "capture".
func istioCNIVerdict(s podShape) string {
	hasProxy := s.proxy != ""
	switch {
	case s.hostNetwork: // shunt: the runtime never runs CNI plugins for such a pod
		return "skip"
	case s.istioInit != "": // istio-init, init or regular container
		return "skip"
	}
	if s.disableEnvoy != nil && hasProxy { // read from istio-proxy's environment only
		if v, ok := istioBool(*s.disableEnvoy); ok && v {
			return "skip"
		}
	}
	if !hasProxy {
		return "skip"
	}
	if len(s.proxyArgs) >= 2 && s.proxyArgs[0] == "proxy" && s.proxyArgs[1] != "" && s.proxyArgs[1] != "sidecar" {
		return "skip"
	}
	inject := ""
	if s.injectAnn != nil {
		inject = *s.injectAnn
	}
	if s.injectLabel != nil { // the label wins, even when empty
		inject = *s.injectLabel
	}
	if v, ok := istioBool(inject); inject != "" && ok && !v {
		return "skip"
	}
	if !s.status {
		return "skip"
	}
	if s.mode != nil && *s.mode == "NONE" { // shunt: istio-cni fails such a pod
		return "skip"
	}
	if s.mode != nil && *s.mode != "REDIRECT" && *s.mode != "TPROXY" {
		return "error"
	}
	if s.annKey != "" && strings.HasPrefix(shapeAnnotations[s.annKey][s.annValue], "error") {
		return "error"
	}
	if s.runAsUser != nil && (*s.runAsUser < 0 || *s.runAsUser >= 4294967295) ||
		s.runAsGroup != nil && (*s.runAsGroup < 0 || *s.runAsGroup >= 4294967295) {
		return "error" // istio-iptables refuses the uid or gid
	}
	return "capture"
}

// checkShape compares Decide with the decision table for one shape, and for a captured pod the
// settings istio-cni derives from the proxy container.
func checkShape(t *testing.T, s podShape) {
	t.Helper()
	var ips []netip.Addr
	for _, ip := range s.ips {
		ips = append(ips, netip.MustParseAddr(ip))
	}
	d, err := Decide(s.pod(), ips)
	got := "capture"
	switch {
	case err != nil:
		got = "error"
	case d.Skip != "":
		got = "skip"
	}
	want := istioCNIVerdict(s)
	if got != want {
		t.Fatalf("shape %+v: got %s (skip %q, err %v), want %s", s, got, d.Skip, err, want)
	}
	if got != "capture" {
		return
	}
	if _, err := redirect.Build(d.Config); err != nil {
		t.Fatalf("shape %+v: the Config does not build: %v", s, err)
	}
	dns := false
	if s.dnsCapture != nil {
		dns, _ = istioBool(*s.dnsCapture)
	}
	uid, gid := uint32(1337), uint32(1337)
	if s.runAsUser != nil && *s.runAsUser != 0 {
		uid = uint32(*s.runAsUser)
	}
	if s.runAsGroup != nil && *s.runAsGroup != 0 {
		gid = uint32(*s.runAsGroup)
	}
	mode := redirect.ModeRedirect
	if s.mode != nil {
		mode = redirect.Mode(*s.mode)
	}
	dual := false
	if s.dualStack != nil {
		dual, _ = istioBool(*s.dualStack)
	}
	// Istio reads the pod's addresses in the kernel's order, IPv4 first: without dual stack a pod
	// gets IPv6 rules only when it has no IPv4 address.
	has4 := slices.ContainsFunc(s.ips, func(ip string) bool { return !strings.Contains(ip, ":") })
	has6 := slices.ContainsFunc(s.ips, func(ip string) bool { return strings.Contains(ip, ":") && !strings.HasPrefix(ip, "fe80") })
	ipv6 := has6 && (dual || !has4)
	cfg := d.Config
	if cfg.RedirectDNS != dns || cfg.Mode != mode || !slices.Equal(cfg.ProxyUIDs, []uint32{uid}) ||
		!slices.Equal(cfg.ProxyGIDs, []uint32{gid}) || cfg.IPv6 != ipv6 {
		t.Fatalf("shape %+v: dns %v mode %s uids %v gids %v ipv6 %v; want dns %v mode %s uid %d gid %d ipv6 %v",
			s, cfg.RedirectDNS, cfg.Mode, cfg.ProxyUIDs, cfg.ProxyGIDs, cfg.IPv6, dns, mode, uid, gid, ipv6)
	}
	if s.annKey != "" && shapeAnnotations[s.annKey][s.annValue] == "ok0" && len(d.Warnings) == 0 {
		t.Fatalf("shape %+v: port 0 dropped without a warning", s)
	}
}

// TestDecisionTable draws pods from the shapes Istio's injector and users produce and checks that
// the plugin decides on each as the decision table derived from istio-cni does.
func TestDecisionTable(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 2026))
	verdicts := map[string]int{}
	for range 20000 {
		s := randomShape(r)
		checkShape(t, s)
		verdicts[istioCNIVerdict(s)]++
	}
	for _, v := range []string{"skip", "error", "capture"} {
		if verdicts[v] < 1500 {
			t.Errorf("only %d %s verdicts among %v: the generator misses a part of the table", verdicts[v], v, verdicts)
		}
	}
}

// FuzzDecisionTable lets the fuzzer choose the shapes.
func FuzzDecisionTable(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		checkShape(t, randomShape(rand.New(rand.NewPCG(a, b))))
	})
}
