//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// injectedDir holds pods exactly as Istio's sidecar injector writes them; the CNI plugin's unit
// tests decide on the same files.
var injectedDir = filepath.Join("..", "cni", "meshpod", "testdata", "injected")

// injectedPod reads a pod of injectedDir and names it after its file, in namespace.
func injectedPod(t *testing.T, file, namespace string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(injectedDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	pod.Namespace, pod.Name = namespace, strings.TrimSuffix(file, ".yaml")
	return &pod
}

// testCNIInjected runs ADD for every injector-written pod shape through the API server and checks
// what istio-cni would do: native and classic sidecars get Istio's rules for their settings and
// their traffic goes through the sidecar (TPROXY too), the exclusion annotations let real
// connections bypass it, and gateways, istio-init pods and interception mode NONE get no rule.
func testCNIInjected(t *testing.T, n *cniNode) {
	compat := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "shared", "compat", "istio-cni", name))
		if err != nil {
			t.Fatal(err)
		}
		return canonical(t, string(b))
	}
	files, err := filepath.Glob(filepath.Join(injectedDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pods in %s: %v", injectedDir, err)
	}
	cases := map[string]func(t *testing.T, p *cniPod){
		// The injector's defaults are istio-cni's basic scenario, whichever way the proxy runs.
		"native-sidecar.yaml": func(t *testing.T, p *cniPod) {
			if got, want := ourRules(save(t, p.ns, false)), compat("basic.v4"); got != want {
				t.Errorf("rules differ from Istio's:\n got:\n%s\nwant:\n%s", got, want)
			}
			remote := n.sandbox(t, "bookinfo", "native-remote", map[string]string{})
			if err := n.add(t, n.list, remote); err != nil {
				t.Fatalf("ADD remote: %v", err)
			}
			runCNIFlows(t, p, remote)
		},
		"classic-sidecar.yaml": func(t *testing.T, p *cniPod) {
			if got, want := ourRules(save(t, p.ns, false)), compat("basic.v4"); got != want {
				t.Errorf("rules differ from Istio's:\n got:\n%s\nwant:\n%s", got, want)
			}
		},
		"native-sidecar-tproxy.yaml": func(t *testing.T, p *cniPod) {
			if got, want := ourRules(save(t, p.ns, false)), compat("tproxy.v4"); got != want {
				t.Errorf("rules differ from Istio's:\n got:\n%s\nwant:\n%s", got, want)
			}
			testInjectedTProxyFlows(t, n, p)
		},
		"native-sidecar-excludes.yaml": func(t *testing.T, p *cniPod) { testInjectedExcludes(t, n, p) },
		"gateway.yaml":                 nil,
		"istio-init.yaml":              nil,
		"interception-none.yaml":       nil,
	}
	if len(cases) != len(files) {
		t.Errorf("%s holds %d pods, the test %d: give each a case", injectedDir, len(files), len(cases))
	}
	for _, file := range files {
		base := filepath.Base(file)
		check, known := cases[base]
		if !known {
			continue
		}
		t.Run(strings.TrimSuffix(base, ".yaml"), func(t *testing.T) {
			pod := injectedPod(t, base, "injected")
			p := n.podSandbox(t, pod)
			if err := n.add(t, n.list, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			rules := ourRules(save(t, p.ns, false)) + ourRules(save(t, p.ns, true))
			if check == nil {
				if rules != "" {
					t.Errorf("a pod istio-cni leaves alone got rules:\n%s", rules)
				}
				return
			}
			if rules == "" {
				t.Fatal("a pod istio-cni captures got no rules")
			}
			check(t, p)
			if err := n.del(t, n.list, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if left := ourRules(save(t, p.ns, false)); left != "" {
				t.Errorf("after DEL the pod still holds:\n%s", left)
			}
		})
	}
}

// testInjectedTProxyFlows sends F1 and F2 through a TPROXY sidecar running as the injector runs it
// (uid 0, gid 1337): inbound, the app sees the real client.
func testInjectedTProxyFlows(t *testing.T, n *cniNode, p *cniPod) {
	remote := n.sandbox(t, "injected", "tproxy-remote", map[string]string{})
	if err := n.add(t, n.list, remote); err != nil {
		t.Fatalf("ADD remote: %v", err)
	}
	runCNIFlowsMode(t, p, remote, "TPROXY")
}

// testInjectedExcludes proves the exclusion annotations of native-sidecar-excludes.yaml with real
// connections: outbound to an excluded port and to an excluded CIDR, and inbound to an excluded port
// reach the peer directly; other ports go through the sidecar.
func testInjectedExcludes(t *testing.T, n *cniNode, p *cniPod) {
	remote := n.sandbox(t, "injected", "excludes-remote", map[string]string{})
	if err := n.add(t, n.list, remote); err != nil {
		t.Fatalf("ADD remote: %v", err)
	}
	echo := bins.Path(t, pkgEchoserver)
	p.ns.Start(t, &appUser, echo, "serve", "-name", "pod", "-tcp", fmt.Sprintf("%d,8081", appPort))
	remote.ns.Start(t, &root, echo, "serve", "-name", "remote", "-tcp", fmt.Sprintf("%d,5432", appPort))
	p.ns.Start(t, &proxyUser, bins.Path(t, pkgRefproxy), "-mode", "REDIRECT")
	podIP, remoteIP := netip.MustParseAddr(p.ip), netip.MustParseAddr(remote.ip)
	runProbes(t, []probe{
		{"F2_captured", p.ns, appUser, "tcp", addr(remoteIP, appPort),
			viaOutbound(addr(remoteIP, appPort)) + app("remote", podIP, addr(remoteIP, appPort))},
		{"F7_excluded_outbound_port", p.ns, appUser, "tcp", addr(remoteIP, 5432),
			app("remote", podIP, addr(remoteIP, 5432))},
		{"F1_captured", remote.ns, root, "tcp", addr(podIP, appPort),
			viaInbound(addr(podIP, appPort)) + app("pod", netip.MustParseAddr("127.0.0.6"), addr(podIP, appPort))},
		{"F7_excluded_inbound_port", remote.ns, root, "tcp", addr(podIP, 8081),
			app("pod", remoteIP, addr(podIP, 8081))},
	})
	// The excluded CIDRs and interface (RETURNs in the built-in chains), and DNS capture, are in the
	// rules.
	rules := save(t, p.ns, false)
	for _, want := range []string{"-d 169.254.169.254/32 -j RETURN", "-d 10.96.0.10/32 -j RETURN",
		"-A PREROUTING -i net1 -j RETURN", "-A OUTPUT -o net1 -j RETURN", "--dport 53 -j REDIRECT --to-ports 15053"} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in the rules:\n%s", want, rules)
		}
	}
}

// TestPodDryRunInjected: `shunt iptables --dry-run --pod` decides on the injector's pod shapes as the
// CNI plugin does — rules for sidecars, native ones included, and the reason for the others.
func TestPodDryRunInjected(t *testing.T) {
	shunt := bins.Path(t, pkgShunt)
	for file, want := range map[string]string{
		"native-sidecar.yaml":          "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"native-sidecar-tproxy.yaml":   "-j TPROXY --on-port 15006",
		"native-sidecar-excludes.yaml": "-d 169.254.169.254/32 -j RETURN",
		"classic-sidecar.yaml":         "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"gateway.yaml":                 "not captured by the CNI plugin: istio-proxy runs as router",
		"istio-init.yaml":              "not captured by the CNI plugin: it has an istio-init container",
		"interception-none.yaml":       "not captured by the CNI plugin: interception mode NONE",
	} {
		t.Run(strings.TrimSuffix(file, ".yaml"), func(t *testing.T) {
			out, err := exec.Command(shunt, "iptables", "--dry-run", "--pod", filepath.Join(injectedDir, file)).CombinedOutput()
			captured := !strings.Contains(want, "not captured")
			if (err == nil) != captured || !strings.Contains(string(out), want) {
				t.Errorf("shunt iptables --dry-run --pod %s: %v\n%s\nwant %q", file, err, out, want)
			}
		})
	}
}

// testCNIInjectedBackends runs the native sidecars, REDIRECT and TPROXY, through the plugin's other
// backends — iptables-legacy and native nftables — and sends F1 and F2 through each.
func testCNIInjectedBackends(t *testing.T, n *cniNode) {
	for _, backend := range []struct{ name, entry string }{
		{"legacy", `"iptables_variant":"legacy"`},
		{"nftables", `"backend":"nftables"`},
	} {
		list := n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`",`+backend.entry)
		for _, c := range []struct{ file, mode string }{
			{"native-sidecar.yaml", "REDIRECT"},
			{"native-sidecar-tproxy.yaml", "TPROXY"},
		} {
			name := backend.name + "-" + strings.TrimSuffix(c.file, ".yaml")
			t.Run(name, func(t *testing.T) {
				pod := injectedPod(t, c.file, "injected")
				pod.Name = name
				p := n.podSandbox(t, pod)
				if err := n.add(t, list, p); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				if backend.name == "nftables" {
					if got, want := ourTables(listRuleset(t, p.ns)), referenceRuleset(t, pod); got != want {
						t.Errorf("tables differ from shunt iptables --native-nftables --pod:\n got:\n%s\nwant:\n%s", got, want)
					}
				} else if r := ourRules(p.ns.Run(t, saveCommand("legacy", false))); !strings.Contains(r, "ISTIO_INBOUND") {
					t.Errorf("no iptables-legacy rules:\n%s", r)
				}
				remote := n.sandbox(t, "injected", name+"-remote", map[string]string{})
				if err := n.add(t, n.list, remote); err != nil {
					t.Fatalf("ADD remote: %v", err)
				}
				runCNIFlowsMode(t, p, remote, c.mode)
				if err := n.del(t, list, p); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			})
		}
	}
}
