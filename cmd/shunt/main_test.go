package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/command/node"
)

// runShunt runs the command line with the given environment (replacing the process's for the test).
func runShunt(t *testing.T, env map[string]string, args ...string) (stdout string, err error) {
	t.Helper()
	for _, k := range []string{"ENVOY_PORT", "ISTIO_INBOUND_PORTS", "ISTIO_META_DNS_CAPTURE", "REDIRECT_DNS", "INVALID_DROP",
		"ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "PROXY_UID"} {
		t.Setenv(k, env[k])
	}
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), err
}

func TestDryRunDefault(t *testing.T) {
	out, err := runShunt(t, nil, "iptables", "--dry-run", "--ipv6=false")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# iptables-restore (IPv4)\n*nat\n", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
		"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ip6tables") {
		t.Error("IPv6 printed with --ipv6=false")
	}
	out, err = runShunt(t, nil, "iptables", "-n", "--ipv6=true", "--explain")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "# ip6tables-restore (IPv6)") || !strings.Contains(out, "# F2 outbound capture:") || !strings.Contains(out, "::6/128") {
		t.Errorf("IPv6 explained dry run incomplete:\n%s", out)
	}
}

func TestBadInputNamesFieldAndValue(t *testing.T) {
	tests := []struct {
		env  map[string]string
		args []string
		want []string
	}{
		{args: []string{"-p", "0"}, want: []string{"--envoy-port", `"0"`}},
		{args: []string{"-p", "70000"}, want: []string{"--envoy-port", `"70000"`}},
		{args: []string{"-z", "abc"}, want: []string{"--inbound-capture-port", `"abc"`}},
		{args: []string{"-i", "10.0.0.0/33"}, want: []string{"--istio-service-cidr", "10.0.0.0/33"}},
		{args: []string{"-x", "*"}, want: []string{"--istio-service-exclude-cidr", "'*'"}},
		{args: []string{"-d", "*"}, want: []string{"--istio-local-exclude-ports", "'*'"}},
		{args: []string{"-m", "FOO"}, want: []string{"--istio-inbound-interception-mode", `"FOO"`}},
		{args: []string{"-u", "-5"}, want: []string{"--proxy-uid", `"-5"`}},
		{args: []string{"-g", "x"}, want: []string{"--proxy-gid", `"x"`}},
		{args: []string{"-c", "averyveryverylongname"}, want: []string{"--istio-exclude-interfaces", "averyveryverylongname"}},
		{args: []string{"-k", "eth0;reboot"}, want: []string{"--kube-virt-interfaces", "eth0;reboot"}},
		{args: []string{"-b", "80,$(id)"}, want: []string{"--istio-inbound-ports", "$(id)"}},
		{args: []string{"--dns-servers", "1.2.3.4|x"}, want: []string{"--dns-servers", "1.2.3.4|x"}},
		{args: []string{"--force-iptables-binary", "iptables"}, want: []string{"--force-iptables-binary", `"iptables"`}},
		{env: map[string]string{"ENVOY_PORT": "99999"}, want: []string{"--envoy-port ($ENVOY_PORT)", `"99999"`}},
		{env: map[string]string{"ISTIO_META_DNS_CAPTURE": "maybe"}, want: []string{"ISTIO_META_DNS_CAPTURE", `"maybe"`}},
		{env: map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "no-such-group-xyz"}, want: []string{"ISTIO_OUTBOUND_OWNER_GROUPS", "no-such-group-xyz"}},
		{env: map[string]string{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}, want: []string{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8"}},
	}
	for _, tt := range tests {
		// Without --dry-run: bad input must be refused before anything is applied.
		_, err := runShunt(t, tt.env, append([]string{"iptables", "--ipv6=false"}, tt.args...)...)
		if err == nil {
			t.Errorf("%v %v: no error", tt.env, tt.args)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v %v: error %q lacks %q", tt.env, tt.args, err, w)
			}
		}
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	_, err := runShunt(t, nil, "iptables", "-n", "-p", "0", "-z", "70000", "-m", "X", "-i", "bad")
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"--envoy-port", "--inbound-capture-port", "--istio-inbound-interception-mode", "--istio-service-cidr"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %s: %v", w, err)
		}
	}
}

func TestEnvironment(t *testing.T) {
	// Environment variables apply when the flag is not given; flags win.
	out, err := runShunt(t, map[string]string{"ENVOY_PORT": "16001", "ISTIO_META_DNS_CAPTURE": "true"}, "iptables", "-n", "--ipv6=false", "--dns-servers=10.0.0.10")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "--to-ports 16001") || !strings.Contains(out, "-d 10.0.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053") {
		t.Errorf("environment not applied:\n%s", out)
	}
	out, err = runShunt(t, map[string]string{"ENVOY_PORT": "16001"}, "iptables", "-n", "--ipv6=false", "-p", "17001")
	if err != nil || !strings.Contains(out, "--to-ports 17001") || strings.Contains(out, "16001") {
		t.Errorf("flag did not win over environment: %v\n%s", err, out)
	}
	// An explicitly empty --dns-servers captures no DNS even with --redirect-dns.
	out, err = runShunt(t, nil, "iptables", "-n", "--ipv6=false", "--redirect-dns", "--dns-servers=")
	if err != nil || strings.Contains(out, "ISTIO_OUTPUT_DNS") {
		t.Errorf("--dns-servers= still captured DNS: %v\n%s", err, out)
	}
}

func TestPod(t *testing.T) {
	dir := t.TempDir()
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","annotations":{
"sidecar.istio.io/status":"{}","traffic.sidecar.istio.io/excludeOutboundPorts":"5555"}},
"spec":{"containers":[{"name":"app","image":"a"},{"name":"istio-proxy","image":"p","env":[{"name":"ISTIO_DUAL_STACK","value":"true"}],"securityContext":{"runAsUser":1000,"runAsGroup":1001}}]},
"status":{"podIPs":[{"ip":"10.1.0.5"},{"ip":"fd00::5"}]}}`
	path := filepath.Join(dir, "pod.json")
	if err := os.WriteFile(path, []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runShunt(t, nil, "iptables", "-n", "--pod", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"--uid-owner 1000", "--gid-owner 1001", "--dport 5555 -j RETURN", "--dport 15090 -j RETURN", "# ip6tables-restore (IPv6)"} {
		if !strings.Contains(out, w) {
			t.Errorf("--pod output lacks %q:\n%s", w, out)
		}
	}
	if _, err := runShunt(t, nil, "iptables", "-n", "--pod", path, "-p", "1"); err == nil || !strings.Contains(err.Error(), "--envoy-port") {
		t.Errorf("--pod with -p: %v, want a conflict naming --envoy-port", err)
	}
	bad := strings.Replace(pod, `"5555"`, `"5555,abc"`, 1)
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runShunt(t, nil, "iptables", "-n", "--pod", path); err == nil || !strings.Contains(err.Error(), "traffic.sidecar.istio.io/excludeOutboundPorts") {
		t.Errorf("bad annotation: %v, want the annotation named", err)
	}
}

// TestPodWarnings: a value istio-cni ignores is ignored by --pod too, and said on stderr.
func TestPodWarnings(t *testing.T) {
	pod := `{"kind":"Pod","metadata":{"name":"p","namespace":"ns","annotations":{"sidecar.istio.io/status":"{}"}},
"spec":{"initContainers":[{"name":"istio-proxy","restartPolicy":"Always","env":[{"name":"ISTIO_META_DNS_CAPTURE","value":"yes"}]}],
"containers":[{"name":"app"}]}}`
	path := filepath.Join(t.TempDir(), "pod.json")
	if err := os.WriteFile(path, []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"iptables", "-n", "--pod", path}, strings.NewReader(""), &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if want := `ISTIO_META_DNS_CAPTURE="yes" is not a boolean: taken as false`; !strings.Contains(errOut.String(), want) {
		t.Errorf("stderr %q lacks %q", errOut.String(), want)
	}
	if strings.Contains(out.String(), "15053") || !strings.Contains(out.String(), "ISTIO_REDIRECT") {
		t.Errorf("want the native sidecar's capture without DNS:\n%s", out.String())
	}
}

func FuzzIptablesFlags(f *testing.F) {
	f.Add("15001", "*", "10.0.0.0/8", "1337", "eth0", "TPROXY", "127.0.0.53")
	f.Add("0", "", "*", "1,2", "", "REDIRECT", "")
	f.Fuzz(func(t *testing.T, port, inbound, cidr, uid, iface, mode, dns string) {
		args := []string{"iptables", "-n", "--ipv6=true", "-p", port, "-b", inbound, "-i", cidr, "-u", uid, "-c", iface, "-m", mode, "--redirect-dns", "--dns-servers", dns}
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, strings.NewReader(""), &out, &errOut)
		if err == nil && !strings.Contains(out.String(), "COMMIT") {
			t.Fatalf("accepted %q but printed no rules", args)
		}
		if err == nil && strings.ContainsAny(out.String(), "`$;|&") {
			t.Fatalf("shell metacharacters reached the rules: %q", args)
		}
	})
}

// TestEBPFBadInput: the eBPF commands name the flag and value they refuse, and say "not loaded"
// with exit code 4 where nothing is pinned.
func TestEBPFBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"ebpf", "join"}, []string{"--netns", "required"}},
		{[]string{"ebpf", "join", "--netns", "/run/netns/x", "--pod-ip", "10.0.0.300"}, []string{"--pod-ip", `"10.0.0.300"`}},
		{[]string{"ebpf", "join", "--netns", "/run/netns/x", "--pod-ip", "10.0.0.3", "-p", "http"}, []string{"--envoy-port", `"http"`}},
		{[]string{"ebpf", "leave"}, []string{"--netns", "required"}},
		{[]string{"ebpf", "run", "--log-format", "xml"}, []string{"--log-format", `"xml"`}},
		{[]string{"ebpf", "run", "--gc-interval", "0s"}, []string{"--gc-interval", "above 0"}},
	} {
		_, err := runShunt(t, nil, tc.args...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("shunt %s: %v, want an error with %q", strings.Join(tc.args, " "), err, w)
			}
		}
	}
	_, err := runShunt(t, nil, "ebpf", "status", "--pin-dir", filepath.Join(t.TempDir(), "none"))
	var ee *capture.ExitError
	if !errors.As(err, &ee) || ee.Code != node.ExitEBPFNotLoaded {
		t.Errorf("status with nothing loaded: %v, want exit code %d", err, node.ExitEBPFNotLoaded)
	}
}

// TestTraceEBPFPod: shunt trace prints the eBPF connect hook's decision for a pod annotated
// shunt.io/mode: ebpf (or with --ebpf), from the values the agent writes for it, and nothing of the
// hook for an iptables pod.
func TestTraceEBPFPod(t *testing.T) {
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","annotations":{"shunt.io/mode":"ebpf",
"sidecar.istio.io/status":"{}","traffic.sidecar.istio.io/excludeOutboundPorts":"5555"}},
"spec":{"containers":[{"name":"app","image":"a"},{"name":"istio-proxy","image":"p"}]},
"status":{"podIPs":[{"ip":"10.1.0.5"}]}}`
	dir := t.TempDir()
	ebpfPod, iptablesPod := filepath.Join(dir, "ebpf.json"), filepath.Join(dir, "iptables.json")
	if err := os.WriteFile(ebpfPod, []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(iptablesPod, []byte(strings.Replace(pod, `"shunt.io/mode":"ebpf",`, "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--pod", ebpfPod, "--dst", "1.2.3.4:443"}, []string{"eBPF connect hook: proxy to loopback :15001", "then see a connection to 127.0.0.1:15001"}},
		{[]string{"--pod", ebpfPod, "--dst", "1.2.3.4:5555"}, []string{"eBPF connect hook: pass", "port 5555 is excluded"}},
		{[]string{"--pod", ebpfPod, "--dst", "10.1.0.5:8080", "--pod-ip", "10.1.0.5"}, []string{"eBPF connect hook: pass", "10.1.0.5 is local"}},
		{[]string{"--ebpf", "--ipv6=false", "--dst", "1.2.3.4:443", "--uid", "1337"}, []string{"eBPF connect hook: pass", "uid 1337 is the proxy's"}},
	} {
		out, err := runShunt(t, nil, append([]string{"trace"}, tc.args...)...)
		for _, w := range tc.want {
			if err != nil || !strings.Contains(out, w) {
				t.Errorf("%q: %v, want %q in:\n%s", tc.args, err, w, out)
			}
		}
	}
	out, err := runShunt(t, nil, "trace", "--pod", iptablesPod, "--dst", "1.2.3.4:443")
	if err != nil || strings.Contains(out, "eBPF") || !strings.Contains(out, "captured by outbound :15001") {
		t.Errorf("iptables pod: %v:\n%s", err, out)
	}
}
