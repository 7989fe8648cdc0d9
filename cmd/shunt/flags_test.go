package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// commandFlags declares, for every command, the flags it honours (inherited ones included) and which
// of them are required. A flag a command registers but does not honour is silently ignored: add a
// flag here only together with the code that uses it.
var commandFlags = map[string]struct{ flags, required []string }{
	"shunt": {},
	"shunt iptables": {flags: []string{
		// rules
		"envoy-port", "inbound-capture-port", "inbound-tunnel-port", "proxy-uid", "proxy-gid",
		"istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "kube-virt-interfaces", "istio-inbound-tproxy-mark",
		"istio-inbound-tproxy-route-table", "redirect-dns", "capture-all-dns", "drop-invalid", "dns-servers", "ipv6",
		"dual-stack", "pod",
		// what it does, where and how
		"dry-run", "explain", "cleanup-only", "reconcile", "force-apply", "run-validation", "skip-rule-apply",
		"iptables-probe-port", "probe-timeout", "network-namespace", "native-nftables", "force-iptables-binary",
		"log_output_level", "log_as_json",
	}},
	"shunt migrate": {flags: []string{
		"envoy-port", "inbound-capture-port", "inbound-tunnel-port", "proxy-uid", "proxy-gid",
		"istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "kube-virt-interfaces", "istio-inbound-tproxy-mark",
		"istio-inbound-tproxy-route-table", "redirect-dns", "capture-all-dns", "drop-invalid", "dns-servers", "ipv6",
		"dual-stack", "pod", "to", "stage", "network-namespace", "force-iptables-binary", "log_output_level", "log_as_json",
	}, required: []string{"to"}},
	// The settings of shunt iptables (--dry-run draws the same rules), where to read the rules and
	// counters, and the drawing's own flags; -o stays --istio-local-outbound-ports-exclude.
	"shunt graph": {flags: []string{
		"envoy-port", "inbound-capture-port", "inbound-tunnel-port", "proxy-uid", "proxy-gid",
		"istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "kube-virt-interfaces", "istio-inbound-tproxy-mark",
		"istio-inbound-tproxy-route-table", "redirect-dns", "capture-all-dns", "drop-invalid", "dns-servers", "ipv6",
		"dual-stack", "pod", "network-namespace", "native-nftables", "force-iptables-binary", "format", "output", "highlight",
	}},
	// shunt graph's settings and where to read rules and counters, the connection to follow (no short
	// flags: istio-iptables' -o -i -u -g -d ... are settings), and what to show.
	"shunt trace": {flags: []string{
		"envoy-port", "inbound-capture-port", "inbound-tunnel-port", "proxy-uid", "proxy-gid",
		"istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "kube-virt-interfaces", "istio-inbound-tproxy-mark",
		"istio-inbound-tproxy-route-table", "redirect-dns", "capture-all-dns", "drop-invalid", "dns-servers", "ipv6",
		"dual-stack", "pod", "network-namespace", "native-nftables", "force-iptables-binary",
		"direction", "proto", "src", "dst", "uid", "gid", "mark", "iface", "pod-ip", "ebpf", "ebpf-pin-dir", "json", "graph", "watch",
	}, required: []string{"dst"}},
	"shunt cleanup": {flags: []string{"network-namespace", "native-nftables", "force-iptables-binary",
		"log_output_level", "log_as_json"}},
	// iptables/validate_linux.go listens on -p and -z, connects as -u/-g, probes IPv6 when the namespace has it.
	"shunt validate": {flags: []string{"envoy-port", "inbound-capture-port", "proxy-uid", "proxy-gid", "ipv6", "dual-stack",
		"iptables-probe-port", "probe-timeout", "network-namespace", "log_output_level", "log_as_json"}},
	"shunt __validate-client": {},
	"shunt install-cni": {flags: []string{"cni-bin-dir", "cni-net-dir", "binary", "shim", "serve-cni", "kubeconfig-file", "host-kubeconfig-path",
		"token-file", "ca-file", "api-server", "kubeconfig", "node-name", "taint-key", "cni-log-level", "cni-log-file",
		"exclude-namespaces", "cni-api-timeout", "backend", "iptables-variant", "report-socket", "host-report-socket",
		"ebpf-pin-dir", "pod-name", "pod-namespace", "health-addr", "monitoring-port", "repair-mode", "repair-label-key", "repair-init-container",
		"repair-exit-code", "repair-grace", "fight-threshold", "fight-window", "fight-backoff", "fight-backoff-max", "resync-interval",
		"log-format", "log-level", "state-dir", "migrate-pods", "audit-interval", "drift-repair", "agent-socket"},
		required: []string{"node-name"}},
	"shunt ebpf":        {flags: []string{"pin-dir"}},
	"shunt ebpf load":   {flags: []string{"pin-dir", "cgroup"}},
	"shunt ebpf run":    {flags: []string{"pin-dir", "cgroup", "health-addr", "gc-interval", "unload-on-stop", "log-level", "log-format"}},
	"shunt ebpf status": {flags: []string{"pin-dir", "json"}},
	"shunt ebpf unload": {flags: []string{"pin-dir"}},
	// ebpf.PodFromConfig reads the outbound settings only; inbound capture is the iptables rules' job.
	"shunt ebpf join": {flags: []string{"pin-dir", "network-namespace", "no-sk-msg", "pod-ip", "pod",
		"envoy-port", "inbound-capture-port", "proxy-uid", "proxy-gid", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "redirect-dns", "capture-all-dns", "dns-servers", "ipv6",
		"dual-stack", "log_output_level", "log_as_json"}, required: []string{"network-namespace"}},
	"shunt ebpf leave":   {flags: []string{"pin-dir", "netns"}, required: []string{"netns"}},
	"shunt doctor":       {flags: []string{"network-namespace", "json", "istio-inbound-interception-mode"}},
	"shunt migrate-pods": {flags: []string{"to", "iptables-variant", "state-dir", "json"}, required: []string{"to"}},
	"shunt status":       {flags: []string{"state-dir", "json", "cluster", "kubeconfig", "since"}},
}

// TestCommandFlags: every command registers exactly the flags it honours, and marks the required ones.
func TestCommandFlags(t *testing.T) {
	root := newRootCmd(capture.Env{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	seen := map[string]bool{}
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		path := cmd.CommandPath()
		seen[path] = true
		want, ok := commandFlags[path]
		if !ok {
			t.Errorf("%s: not in commandFlags; declare the flags it honours", path)
		}
		var got, required []string
		visit := func(fl *pflag.Flag) {
			if fl.Name == "help" || slices.Contains(got, fl.Name) {
				return
			}
			got = append(got, fl.Name)
			if fl.Annotations[cobra.BashCompOneRequiredFlag] != nil {
				required = append(required, fl.Name)
			}
		}
		cmd.LocalFlags().VisitAll(visit)
		cmd.InheritedFlags().VisitAll(visit)
		sort.Strings(got)
		sort.Strings(required)
		wantFlags, wantRequired := slices.Sorted(slices.Values(want.flags)), slices.Sorted(slices.Values(want.required))
		if diff := cmp.Diff(wantFlags, got); diff != "" {
			t.Errorf("%s: flags (-honoured +registered):\n%s", path, diff)
		}
		if diff := cmp.Diff(wantRequired, required); diff != "" {
			t.Errorf("%s: required flags (-want +marked):\n%s", path, diff)
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
	for path := range commandFlags {
		if !seen[path] {
			t.Errorf("%s: in commandFlags but no such command", path)
		}
	}
}

// parse runs a command line as cobra's Execute does up to, not including, RunE: flag parsing,
// PreRunE (environment and the combination checks), required flags and flag groups. Nothing is
// changed, so accepted combinations need no privileges.
func parse(t *testing.T, env map[string]string, args ...string) error {
	t.Helper()
	setEnv(t, env)
	root := newRootCmd(capture.Env{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	return testutil.ParseCommand(cmd, rest)
}

// envVars are the variables the tests set; each test sees them unset unless it sets them.
var envVars = []string{"CLEANUP_ONLY", "DRY_RUN", "FORCE_APPLY", "RECONCILE", "RUN_VALIDATION", "SKIP_RULE_APPLY",
	"FORCE_IPTABLES_BINARY", "NATIVE_NFTABLES", "ENVOY_PORT", "ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "DUAL_STACK",
	"ISTIO_DUAL_STACK", "IPTABLES_PROBE_PORT", "PROBE_TIMEOUT", "NETWORK_NAMESPACE", "NODE_NAME", "REPAIR_MODE",
	"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "ISTIO_OUTBOUND_OWNER_GROUPS",
	"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"}

func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, k := range envVars {
		t.Setenv(k, "")
	}
	for k, v := range env {
		if !slices.Contains(envVars, k) {
			t.Fatalf("add %s to envVars", k)
		}
		t.Setenv(k, v)
	}
}

// flagArgs are command-line words that set flag name: a value where it takes one.
func flagArgs(t *testing.T, name string) []string {
	switch name {
	case "force-iptables-binary":
		return []string{"--" + name, "nft"}
	case "pod":
		return []string{"--" + name, writePod(t)}
	}
	return []string{"--" + name}
}

// flagEnv is the environment that sets flag name.
func flagEnv(name string) map[string]string {
	v := "true"
	if name == "force-iptables-binary" {
		v = "nft"
	}
	return map[string]string{capture.EnvName(name): v}
}

// needs are the flags a flag is accepted only with.
var needs = map[string][]string{"skip-rule-apply": {"--run-validation"}}

func writePod(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pod.json")
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","annotations":{"sidecar.istio.io/status":"{}"}},
"spec":{"containers":[{"name":"app","image":"a"},{"name":"istio-proxy","image":"p"}]},"status":{"podIPs":[{"ip":"10.1.0.5"}]}}`
	if err := os.WriteFile(path, []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExclusiveFlags: of every pair in capture.ExclusiveFlags, each flag alone is accepted and both are
// refused, given on the command line or one of them by its environment variable, by every command
// that has both.
func TestExclusiveFlags(t *testing.T) {
	for _, command := range []string{"iptables", "cleanup", "validate", "ebpf join"} {
		words := strings.Fields(command)
		has := func(name string) bool { return slices.Contains(commandFlags["shunt "+command].flags, name) }
		for _, pair := range capture.ExclusiveFlags {
			a, b := pair.A, pair.B
			if !has(a) || !has(b) {
				continue
			}
			t.Run(command+"/"+a+"+"+b, func(t *testing.T) {
				base := words
				if command == "ebpf join" {
					base = append(words, "--netns", "/run/netns/x")
				}
				with := func(names ...string) []string {
					args := slices.Clone(base)
					for _, n := range names {
						args = append(args, flagArgs(t, n)...)
						args = append(args, needs[n]...)
					}
					return args
				}
				for _, alone := range []string{a, b} {
					if err := parse(t, nil, with(alone)...); err != nil {
						t.Errorf("%q refused: %v", with(alone), err)
					}
				}
				err := parse(t, nil, with(a, b)...)
				for _, w := range []string{"--" + a, "--" + b, pair.Why} {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Errorf("%q: %v, want an error with %q", with(a, b), err, w)
					}
				}
				for _, c := range [][2]string{{a, b}, {b, a}} {
					err := parse(t, flagEnv(c[0]), with(c[1])...)
					for _, w := range []string{"--" + c[0] + " ($" + capture.EnvName(c[0]) + ")", "--" + c[1]} {
						if err == nil || !strings.Contains(err.Error(), w) {
							t.Errorf("$%s with %q: %v, want an error naming %s", capture.EnvName(c[0]), with(c[1]), err, w)
						}
					}
				}
			})
		}
	}
}

// TestConditionalFlags: every rule "flag X only with (or not with) Y" refuses the combination that
// would ignore X, naming it, and accepts the one that honours it.
func TestConditionalFlags(t *testing.T) {
	pod := writePod(t)
	const ns = "/run/netns/x"
	type line struct {
		env  map[string]string
		args []string
	}
	l := func(args ...string) line { return line{args: args} }
	le := func(env map[string]string, args ...string) line { return line{env: env, args: args} }
	for _, tc := range []struct {
		rule     string
		accepted []line
		refused  line
		want     []string
	}{
		{rule: "--explain only with --dry-run",
			accepted: []line{l("iptables", "--dry-run", "--explain"), le(map[string]string{"DRY_RUN": "true"}, "iptables", "--explain")},
			refused:  l("iptables", "--explain"), want: []string{"--explain", "--dry-run"}},
		{rule: "--iptables-probe-port only with --run-validation",
			accepted: []line{l("iptables", "--run-validation", "--iptables-probe-port", "15003"),
				le(map[string]string{"IPTABLES_PROBE_PORT": "15003"}, "iptables"),
				l("validate", "--iptables-probe-port", "15003")},
			refused: l("iptables", "--iptables-probe-port", "15003"), want: []string{"--iptables-probe-port", "--run-validation"}},
		{rule: "--probe-timeout only with --run-validation",
			accepted: []line{l("iptables", "--run-validation", "--skip-rule-apply", "--probe-timeout", "2s"),
				le(map[string]string{"RUN_VALIDATION": "true"}, "iptables", "--probe-timeout", "2s"),
				le(map[string]string{"PROBE_TIMEOUT": "2s"}, "iptables"),
				l("validate", "--probe-timeout", "2s")},
			refused: l("iptables", "--probe-timeout", "2s"), want: []string{"--probe-timeout", "--run-validation"}},
		{rule: "--skip-rule-apply only with --run-validation",
			accepted: []line{l("iptables", "--run-validation", "--skip-rule-apply")},
			refused:  l("iptables", "--skip-rule-apply"), want: []string{"--skip-rule-apply", "--run-validation"}},
		{rule: "--skip-rule-apply from the environment only with --run-validation",
			accepted: []line{le(map[string]string{"SKIP_RULE_APPLY": "true"}, "iptables", "--run-validation")},
			refused:  le(map[string]string{"SKIP_RULE_APPLY": "true"}, "iptables"), want: []string{"--skip-rule-apply ($SKIP_RULE_APPLY)"}},
		{rule: "--cleanup-only with no rule flag given",
			accepted: []line{l("iptables", "--cleanup-only"), l("iptables", "--cleanup-only", "--network-namespace", ns, "--native-nftables"),
				l("iptables", "--cleanup-only", "--force-iptables-binary", "legacy", "--log_output_level=default:debug", "--log_as_json"),
				// The injector's environment fills rule flags; it must not make a cleanup fail.
				le(map[string]string{"ENVOY_PORT": "16001", "ISTIO_META_DNS_CAPTURE": "true", "INVALID_DROP": "true", "ISTIO_DUAL_STACK": "true"},
					"iptables", "--cleanup-only")},
			refused: l("iptables", "--cleanup-only", "-p", "15001", "-m", "TPROXY"), want: []string{"--cleanup-only", "--envoy-port", "--istio-inbound-interception-mode"}},
		{rule: "--cleanup-only from the environment with no rule flag given",
			accepted: []line{le(map[string]string{"CLEANUP_ONLY": "true"}, "iptables")},
			refused:  le(map[string]string{"CLEANUP_ONLY": "true"}, "iptables", "--redirect-dns"), want: []string{"--cleanup-only ($CLEANUP_ONLY)", "--redirect-dns"}},
		{rule: "--cleanup-only without --pod",
			accepted: []line{l("iptables", "--dry-run", "--pod", pod)},
			refused:  l("iptables", "--cleanup-only", "--pod", pod), want: []string{"--cleanup-only", "--pod"}},
		{rule: "--pod with no rule flag given",
			accepted: []line{l("iptables", "--pod", pod), le(map[string]string{"ENVOY_PORT": "16001", "DUAL_STACK": "true"}, "iptables", "--pod", pod),
				l("ebpf", "join", "--netns", ns, "--pod", pod)},
			refused: l("iptables", "--pod", pod, "-p", "15001", "--dual-stack"), want: []string{"--pod", "--envoy-port", "--dual-stack"}},
		{rule: "--pod with no rule flag given (join)",
			accepted: []line{l("ebpf", "join", "--netns", ns, "--pod", pod, "--pod-ip", "10.1.0.5", "--no-sk-msg")},
			refused:  l("ebpf", "join", "--netns", ns, "--pod", pod, "-i", "10.0.0.0/8"), want: []string{"--pod", "--istio-service-cidr"}},
		{rule: "--dual-stack not with --ipv6",
			accepted: []line{l("iptables", "--dual-stack"), l("iptables", "--ipv6=true"),
				le(map[string]string{"DUAL_STACK": "true"}, "iptables", "--ipv6=false")},
			refused: l("iptables", "--dual-stack", "--ipv6=true"), want: []string{"--dual-stack", "--ipv6"}},
		{rule: "--dual-stack not with --ipv6 (validate)",
			accepted: []line{l("validate", "--dual-stack"), l("validate", "--ipv6=false")},
			refused:  l("validate", "--dual-stack", "--ipv6=false"), want: []string{"--dual-stack", "--ipv6"}},
		{rule: "--dual-stack not with --ipv6 (join)",
			accepted: []line{l("ebpf", "join", "--netns", ns, "--dual-stack")},
			refused:  l("ebpf", "join", "--netns", ns, "--dual-stack", "--ipv6=true"), want: []string{"--dual-stack", "--ipv6"}},
		{rule: "--network-namespace with --dry-run only to detect IPv6",
			accepted: []line{l("iptables", "--dry-run", "--network-namespace", ns), l("iptables", "--network-namespace", ns, "--ipv6=true"),
				le(map[string]string{"NETWORK_NAMESPACE": ns}, "iptables", "--dry-run", "--ipv6=true")},
			refused: l("iptables", "--dry-run", "--network-namespace", ns, "--ipv6=true"), want: []string{"--network-namespace", "--ipv6"}},
		{rule: "--network-namespace with --dry-run --pod",
			accepted: []line{l("iptables", "--pod", pod, "--network-namespace", ns)},
			refused:  l("iptables", "--dry-run", "--pod", pod, "--network-namespace", ns), want: []string{"--network-namespace", "--pod"}},
		{rule: "--force-iptables-binary nft or legacy",
			accepted: []line{l("iptables", "--force-iptables-binary", "legacy"), l("cleanup", "--force-iptables-binary", "nft")},
			refused:  l("iptables", "--force-iptables-binary", "iptables"), want: []string{"--force-iptables-binary", `"iptables"`}},
		{rule: "--force-iptables-binary nft or legacy (cleanup, environment)",
			accepted: []line{le(map[string]string{"FORCE_IPTABLES_BINARY": "legacy"}, "cleanup")},
			refused:  le(map[string]string{"FORCE_IPTABLES_BINARY": "xtables"}, "cleanup"), want: []string{"--force-iptables-binary ($FORCE_IPTABLES_BINARY)", `"xtables"`}},
		{rule: "ebpf join requires --netns",
			accepted: []line{l("ebpf", "join", "--netns", ns), l("ebpf", "join", "--network-namespace", ns)},
			refused:  l("ebpf", "join", "-p", "15001"), want: []string{"--netns", "required"}},
		{rule: "ebpf join --pod-ip is an address",
			accepted: []line{l("ebpf", "join", "--netns", ns, "--pod-ip", "10.0.0.3,fd00::3")},
			refused:  l("ebpf", "join", "--netns", ns, "--pod-ip", "10.0.0.300"), want: []string{"--pod-ip", `"10.0.0.300"`}},
		{rule: "ebpf leave requires --netns",
			accepted: []line{l("ebpf", "leave", "--netns", ns)},
			refused:  l("ebpf", "leave"), want: []string{"--netns", "required"}},
		{rule: "install-cni requires --node-name",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "https://k"),
				le(map[string]string{"NODE_NAME": "n", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "install-cni")},
			refused: l("install-cni", "--api-server", "https://k"), want: []string{"--node-name", "required"}},
		{rule: "install-cni --health-addr not with --monitoring-port",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--health-addr", ":1"),
				l("install-cni", "--node-name", "n", "--api-server", "k", "--monitoring-port", "2")},
			refused: l("install-cni", "--node-name", "n", "--api-server", "k", "--health-addr", ":1", "--monitoring-port", "2"),
			want:    []string{"health-addr", "monitoring-port"}},
		{rule: "install-cni --repair-label-key only with --repair-mode=label",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-mode=label", "--repair-label-key", "x/y"),
				le(map[string]string{"REPAIR_MODE": "label"}, "install-cni", "--node-name", "n", "--api-server", "k", "--repair-label-key", "x/y")},
			refused: l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-label-key", "x/y"),
			want:    []string{"--repair-label-key", "--repair-mode=label"}},
		{rule: "install-cni --repair-exit-code not with --repair-mode=off",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-exit-code", "3")},
			refused:  l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-mode=off", "--repair-exit-code", "3"),
			want:     []string{"--repair-exit-code", "--repair-mode=off"}},
		{rule: "install-cni --repair-init-container not with --repair-mode=off",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-init-container", "init")},
			refused:  l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-mode=off", "--repair-init-container", "init"),
			want:     []string{"--repair-init-container", "--repair-mode=off"}},
		{rule: "install-cni --repair-grace not with --repair-mode=off",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-grace", "1s")},
			refused:  l("install-cni", "--node-name", "n", "--api-server", "k", "--repair-mode=off", "--repair-grace", "1s"),
			want:     []string{"--repair-grace", "--repair-mode=off"}},
		{rule: "status --kubeconfig and --since only with --cluster",
			accepted: []line{l("status", "--cluster", "--kubeconfig", "/k", "--since", "5m")},
			refused:  l("status", "--kubeconfig", "/k"), want: []string{"--kubeconfig", "only with --cluster"}},
		{rule: "status --state-dir not with --cluster",
			accepted: []line{l("status", "--state-dir", "/run/pods")},
			refused:  l("status", "--cluster", "--state-dir", "/run/pods"), want: []string{"--state-dir", "not with --cluster"}},
		{rule: "install-cni --host-report-socket only with --report-socket",
			accepted: []line{l("install-cni", "--node-name", "n", "--api-server", "k", "--host-report-socket", "/run/x.sock")},
			refused:  l("install-cni", "--node-name", "n", "--api-server", "k", "--report-socket=", "--host-report-socket", "/run/x.sock"),
			want:     []string{"--host-report-socket", "--report-socket"}},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			for _, a := range tc.accepted {
				if err := parse(t, a.env, a.args...); err != nil {
					t.Errorf("%v %q refused: %v", a.env, a.args, err)
				}
			}
			err := parse(t, tc.refused.env, tc.refused.args...)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%v %q: %v, want an error naming %s", tc.refused.env, tc.refused.args, err, w)
				}
			}
		})
	}
}

// TestIgnoredFlagsUnknown: the flags of `shunt iptables` a command does not honour are unknown to it,
// whatever the other flags: validate never cleans up or applies, join always registers.
func TestIgnoredFlagsUnknown(t *testing.T) {
	for _, tc := range []struct {
		command []string
		flags   []string
	}{
		{[]string{"validate"}, []string{"--cleanup-only", "--dry-run", "--reconcile", "--force-apply", "--skip-rule-apply",
			"--run-validation", "--explain", "--force-iptables-binary=nft", "--native-nftables", "--pod=x", "-m=TPROXY", "-i=*",
			"--redirect-dns"}},
		{[]string{"ebpf", "join", "--netns", "/run/netns/x"}, []string{"--dry-run", "--cleanup-only", "--force-apply",
			"--iptables-probe-port=15002", "--probe-timeout=1s", "--run-validation", "--skip-rule-apply", "--reconcile",
			"--explain", "--native-nftables", "--force-iptables-binary=nft"}},
		{[]string{"cleanup"}, []string{"--dry-run", "-p=15001", "--pod=x", "--reconcile", "--ipv6=true", "--run-validation"}},
		{[]string{"ebpf", "leave", "--netns", "/run/netns/x"}, []string{"-p=15001", "--network-namespace=/x"}},
	} {
		for _, flag := range tc.flags {
			args := append(slices.Clone(tc.command), flag)
			err := parse(t, nil, args...)
			name, _, _ := strings.Cut(flag, "=")
			if err == nil || !strings.Contains(err.Error(), "unknown") || !strings.Contains(err.Error(), strings.TrimLeft(name, "-")) {
				t.Errorf("%q: %v, want unknown flag %s", args, err, name)
			}
		}
	}
}
