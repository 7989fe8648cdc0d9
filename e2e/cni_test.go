//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestCNI drives shunt-cni as containerd does — libcni running the conflist bridge + host-local +
// shunt-cni on fresh pod namespaces — against a real kube-apiserver, and checks the rules each pod
// gets, the traffic through the reference sidecar, the skip cases, failing closed, CHECK, DEL and
// concurrent ADDs. The API server goes down in the last subtest.
func TestCNI(t *testing.T) {
	n := newCNINode(t)

	t.Run("compat", func(t *testing.T) { testCNICompat(t, n) })
	t.Run("flows", func(t *testing.T) { testCNIFlows(t, n) })
	t.Run("skip", func(t *testing.T) { testCNISkip(t, n) })
	t.Run("injected", func(t *testing.T) { testCNIInjected(t, n) })
	t.Run("injected_backends", func(t *testing.T) { testCNIInjectedBackends(t, n) })
	t.Run("bad_annotation", func(t *testing.T) { testCNIBadAnnotation(t, n) })
	t.Run("check_del", func(t *testing.T) { testCNICheckDel(t, n) })
	t.Run("concurrent", func(t *testing.T) { testCNIConcurrent(t, n, 50) })
	t.Run("status", func(t *testing.T) { testCNIStatus(t, n) })
	t.Run("versions", func(t *testing.T) { testCNIVersions(t, n) })
	t.Run("ebpf", func(t *testing.T) { testCNIEBPF(t, n) })
	t.Run("nftables", func(t *testing.T) { testCNINFTables(t, n) })
	t.Run("api_down", func(t *testing.T) { testCNIAPIDown(t, n) }) // last: it stops the API server
}

// testCNICompat creates each of Istio's CNI scenarios as a pod and compares the rules its namespace
// gets with the rules Istio's CNI plugin programs for it.
func testCNICompat(t *testing.T, n *cniNode) {
	dir := filepath.Join("..", "..", "shared", "compat", "istio-cni")
	pods, err := filepath.Glob(filepath.Join(dir, "*.pod.yaml"))
	if err != nil || len(pods) == 0 {
		t.Fatalf("no scenarios in %s: %v", dir, err)
	}
	for _, file := range pods {
		name := strings.TrimSuffix(filepath.Base(file), ".pod.yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(file, ".pod.yaml") + ".v4")
			if err != nil {
				t.Fatal(err)
			}
			var pod corev1.Pod
			if err := yaml.Unmarshal(data, &pod); err != nil {
				t.Fatal(err)
			}
			pod.Namespace, pod.Name = "compat", name
			p := n.podSandbox(t, &pod)
			if err := n.add(t, n.list, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			got := ourRules(save(t, p.ns, false))
			if w := canonical(t, string(want)); got != w {
				t.Errorf("rules in the pod differ from Istio's:\n got:\n%s\nwant:\n%s", got, w)
			}
			if err := n.del(t, n.list, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if left := ourRules(save(t, p.ns, false)); left != "" {
				t.Errorf("after DEL the pod still holds:\n%s", left)
			}
		})
	}
}

// testCNIFlows sends F1 (inbound) and F2 (outbound) through the reference sidecar of a pod the
// plugin captured, to and from a second, unmeshed pod on the same bridge.
func testCNIFlows(t *testing.T, n *cniNode) {
	meshed := n.podSandbox(t, meshedPod("shop", "cart", nil))
	if err := n.add(t, n.list, meshed); err != nil {
		t.Fatalf("ADD meshed: %v", err)
	}
	remote := n.sandbox(t, "shop", "remote", map[string]string{}) // no status: passes through
	if err := n.add(t, n.list, remote); err != nil {
		t.Fatalf("ADD remote: %v", err)
	}
	if r := ourRules(save(t, remote.ns, false)); r != "" {
		t.Fatalf("the unmeshed pod got rules:\n%s", r)
	}
	runCNIFlows(t, meshed, remote)
}

// runCNIFlows starts the app, the reference sidecar and the remote server, and sends F2 and F1
// through the sidecar of meshed, from and to remote.
func runCNIFlows(t *testing.T, meshed, remote *cniPod) {
	runCNIFlowsMode(t, meshed, remote, "REDIRECT")
}

// runCNIFlowsMode is runCNIFlows with the sidecar in mode, running as the injector runs it: in TPROXY
// mode as uid 0 and gid 1337, and the app then sees the real client inbound.
func runCNIFlowsMode(t *testing.T, meshed, remote *cniPod, mode string) {
	t.Helper()
	echo := bins.Path(t, pkgEchoserver)
	meshed.ns.Start(t, &appUser, echo, "serve", "-name", "pod", "-tcp", fmt.Sprint(appPort))
	remote.ns.Start(t, &root, echo, "serve", "-name", "remote", "-tcp", fmt.Sprint(appPort))
	podIP, remoteIP := netip.MustParseAddr(meshed.ip), netip.MustParseAddr(remote.ip)
	sidecar, inboundPeer := proxyUser, netip.MustParseAddr("127.0.0.6")
	if mode == "TPROXY" {
		sidecar, inboundPeer = tproxyUser, remoteIP
	}
	meshed.ns.Start(t, &sidecar, bins.Path(t, pkgRefproxy), "-mode", mode)
	runProbes(t, []probe{
		{"F2_outbound", meshed.ns, appUser, "tcp", addr(remoteIP, appPort),
			viaOutbound(addr(remoteIP, appPort)) + app("remote", podIP, addr(remoteIP, appPort))},
		{"F1_inbound", remote.ns, root, "tcp", addr(podIP, appPort),
			viaInbound(addr(podIP, appPort)) + app("pod", inboundPeer, addr(podIP, appPort))},
	})
}

// testCNISkip checks that every pod istio-cni leaves alone gets no rules, and that a pod the runtime
// shows unmeshed through its annotations is passed through without asking the API server (it does
// not even exist there).
func testCNISkip(t *testing.T, n *cniNode) {
	withEnv := func(p *corev1.Pod, name, value string) *corev1.Pod {
		p.Spec.Containers[1].Env = append(p.Spec.Containers[1].Env, corev1.EnvVar{Name: name, Value: value})
		return p
	}
	hostNet := meshedPod("skip", "host-network", nil)
	hostNet.Spec.HostNetwork = true
	noProxy := meshedPod("skip", "no-proxy", nil)
	noProxy.Spec.Containers = noProxy.Spec.Containers[:1]
	noStatus := meshedPod("skip", "no-status", nil)
	delete(noStatus.Annotations, "sidecar.istio.io/status")
	injectOff := meshedPod("skip", "inject-label-false", map[string]string{"sidecar.istio.io/inject": "true"})
	injectOff.Labels = map[string]string{"sidecar.istio.io/inject": "false"}
	initC := meshedPod("skip", "istio-init", nil)
	initC.Spec.InitContainers = []corev1.Container{{Name: "istio-init"}}
	initRegular := meshedPod("skip", "istio-init-regular", nil)
	initRegular.Spec.Containers = append(initRegular.Spec.Containers, corev1.Container{Name: "istio-init"})
	gateway := meshedPod("skip", "gateway", nil)
	gateway.Spec.Containers[1].Args = []string{"proxy", "router", "--domain", "istio-ingress.svc.cluster.local"}
	// Native sidecars: istio-proxy is an init container; each skip rule holds for them too.
	nativeDisabled := nativeSidecar(meshedPod("skip", "native-disable-envoy-1", nil))
	nativeDisabled.Spec.InitContainers[0].Env = []corev1.EnvVar{{Name: "DISABLE_ENVOY", Value: "1"}}
	nativeNoStatus := nativeSidecar(meshedPod("skip", "native-no-status", nil))
	delete(nativeNoStatus.Annotations, "sidecar.istio.io/status")
	nativeGateway := nativeSidecar(meshedPod("skip", "native-router", nil))
	nativeGateway.Spec.InitContainers[0].Args = []string{"proxy", "router"}
	injectF := meshedPod("skip", "inject-label-f", nil)
	injectF.Labels = map[string]string{"sidecar.istio.io/inject": "f"}
	cases := []*corev1.Pod{
		hostNet, noProxy, noStatus, injectOff, initC, initRegular, gateway, nativeDisabled, nativeNoStatus, nativeGateway, injectF,
		meshedPod("skip", "inject-annotation-false", map[string]string{"sidecar.istio.io/inject": "false"}),
		withEnv(meshedPod("skip", "disable-envoy", nil), "DISABLE_ENVOY", "true"),
		meshedPod("skip", "mode-none", map[string]string{"sidecar.istio.io/interceptionMode": "NONE"}),
		meshedPod("kube-system", "excluded-namespace", nil),
	}
	for _, pod := range cases {
		t.Run(pod.Name, func(t *testing.T) {
			p := n.podSandbox(t, pod)
			if err := n.add(t, n.list, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if r := ourRules(save(t, p.ns, false)); r != "" {
				t.Errorf("a pod to skip got rules:\n%s", r)
			}
		})
	}
	// What istio-cni captures although it looks like a skip: a native sidecar; an empty inject label,
	// which wins over a false annotation; values of DISABLE_ENVOY and inject that are not booleans.
	emptyLabel := meshedPod("skip", "inject-label-empty", map[string]string{"sidecar.istio.io/inject": "false"})
	emptyLabel.Labels = map[string]string{"sidecar.istio.io/inject": ""}
	captured := []*corev1.Pod{
		nativeSidecar(meshedPod("skip", "native", nil)),
		emptyLabel,
		withEnv(meshedPod("skip", "disable-envoy-yes", nil), "DISABLE_ENVOY", "yes"),
		meshedPod("skip", "inject-annotation-no", map[string]string{"sidecar.istio.io/inject": "no"}),
	}
	for _, pod := range captured {
		t.Run(pod.Name, func(t *testing.T) {
			p := n.podSandbox(t, pod)
			if err := n.add(t, n.list, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if r := ourRules(save(t, p.ns, false)); !strings.Contains(r, "ISTIO_REDIRECT") {
				t.Errorf("a pod istio-cni captures got no capture rules:\n%s", r)
			}
		})
	}
	t.Run("unmeshed_without_api_call", func(t *testing.T) {
		p := n.sandbox(t, "skip", "not-in-the-api", map[string]string{"app": "x"})
		if err := n.add(t, n.list, p); err != nil {
			t.Fatalf("ADD of a pod the API does not know, annotated unmeshed: %v", err)
		}
		// The same pod shown as meshed must be read from the API, which does not have it.
		p = n.sandbox(t, "skip", "not-in-the-api", map[string]string{"sidecar.istio.io/status": "{}"})
		err := n.add(t, n.list, p)
		if e := cniError(t, err); !strings.Contains(e.Msg, "skip/not-in-the-api") || !strings.Contains(e.Details, "404") {
			t.Errorf("ADD of a meshed pod missing from the API: %v", err)
		}
	})
}

// testCNIBadAnnotation fails closed: a pod with a value istio-cni refuses does not start, and the
// error names the pod, the annotation and the value.
func testCNIBadAnnotation(t *testing.T, n *cniNode) {
	for i, bad := range []struct{ key, value string }{
		{"traffic.sidecar.istio.io/excludeOutboundPorts", "15020,http"},
		{"traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/8, 192.168.0.0/16"}, // istio-cni takes no spaces
		{"sidecar.istio.io/interceptionMode", "tproxy"},                                    // nor lower case
		{"traffic.sidecar.istio.io/excludeInterfaces", "eth+"},
	} {
		name := fmt.Sprintf("bad-annotation-%d", i)
		p := n.podSandbox(t, nativeSidecar(meshedPod("shop", name, map[string]string{bad.key: bad.value})))
		err := n.add(t, n.list, p)
		e := cniError(t, err)
		for _, want := range []string{"shop/" + name, bad.key, fmt.Sprintf("%q", bad.value)} {
			if !strings.Contains(e.Msg+" "+e.Details, want) {
				t.Errorf("ADD error %q does not name %s", err, want)
			}
		}
		if r := ourRules(save(t, p.ns, false)); r != "" {
			t.Errorf("rules left after a failed ADD:\n%s", r)
		}
	}
}

// nativeSidecar moves a pod's istio-proxy container to its init containers with restartPolicy
// Always, as the injector writes native sidecars.
func nativeSidecar(p *corev1.Pod) *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	var app []corev1.Container
	for _, c := range p.Spec.Containers {
		if c.Name == "istio-proxy" {
			c.RestartPolicy = &always
			p.Spec.InitContainers = append(p.Spec.InitContainers, c)
			continue
		}
		app = append(app, c)
	}
	p.Spec.Containers = app
	p.Annotations["sidecar.istio.io/status"] = `{"initContainers":["istio-proxy"],"containers":null}`
	return p
}

// testCNICheckDel: CHECK passes on a programmed pod and names a tampered rule; DEL removes every
// rule, and repeated DELs and a DEL after the namespace is gone succeed.
func testCNICheckDel(t *testing.T, n *cniNode) {
	p := n.podSandbox(t, meshedPod("shop", "checked", nil))
	if err := n.add(t, n.list, p); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := n.check(t, n.list, p); err != nil {
		t.Fatalf("CHECK of an untouched pod: %v", err)
	}
	rule := []string{"-t", "nat", "-D", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"}
	p.ns.Run(t, append([]string{"iptables-nft"}, rule...)...)
	err := n.check(t, n.list, p)
	if err == nil || !strings.Contains(err.Error(), "shop/checked") || !strings.Contains(err.Error(), "nat/ISTIO_OUTPUT") ||
		!strings.Contains(err.Error(), `"-d 127.0.0.1/32 -j RETURN"`) {
		t.Errorf("CHECK after deleting a rule: %v, want the pod and the rule named", err)
	}
	for i := range 2 {
		if err := n.del(t, n.list, p); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if r := ourRules(save(t, p.ns, false)); r != "" {
		t.Errorf("rules left after DEL:\n%s", r)
	}
	gone := *p
	gone.ns = &testutil.NetNS{Name: "shunt-never-existed"}
	if err := n.del(t, n.list, &gone); err != nil {
		t.Errorf("DEL of a namespace that is gone: %v", err)
	}
}

// testCNIConcurrent runs count ADDs at once, each on its own pod and namespace: none may fail, and
// each pod gets its rules.
func testCNIConcurrent(t *testing.T, n *cniNode, count int) {
	pods := make([]*cniPod, count)
	for i := range pods {
		pods[i] = n.podSandbox(t, meshedPod("load", fmt.Sprintf("pod-%02d", i), nil))
	}
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.add(t, n.list, p)
		}()
	}
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			t.Errorf("ADD %s: %v", pods[i].name, err)
		}
	}
	want := ourRules(save(t, pods[0].ns, false))
	if want == "" {
		t.Fatal("the first pod has no rules")
	}
	for _, p := range pods[1:] {
		if got := ourRules(save(t, p.ns, false)); got != want {
			t.Errorf("%s rules differ from %s's:\n%s", p.name, pods[0].name, got)
		}
	}
	t.Logf("%d concurrent ADDs, %d failed", count, failed)
}

// testCNIStatus: STATUS is not ready while the kubeconfig is missing.
func testCNIStatus(t *testing.T, n *cniNode) {
	if err := n.status(t, n.list); err != nil {
		t.Errorf("STATUS with a kubeconfig: %v", err)
	}
	missing := n.conflist(t, `"kubeconfig":"`+filepath.Join(t.TempDir(), "missing")+`"`)
	err := n.status(t, missing)
	if e := cniError(t, err); e.Code != 50 {
		t.Errorf("STATUS without a kubeconfig: %v, want code 50", err)
	}
}

// testCNIAPIDown stops the API server: a meshed pod's ADD fails within api_timeout, naming the pod,
// and leaves no rules; an unmeshed pod (annotations from the runtime) still starts.
func testCNIAPIDown(t *testing.T, n *cniNode) {
	p := n.podSandbox(t, meshedPod("shop", "api-down", nil))
	if _, err := n.cluster.Client.CoreV1().Pods("shop").Get(context.Background(), "api-down", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	n.cluster.Stop()
	err := n.add(t, n.list, p)
	if e := cniError(t, err); e.Code != 11 || !strings.Contains(e.Msg, "shop/api-down") {
		t.Errorf("ADD with the API server down: %v, want a try-again error naming the pod", err)
	}
	if r := ourRules(save(t, p.ns, false)); r != "" {
		t.Errorf("rules after a failed ADD:\n%s", r)
	}
	plain := n.sandbox(t, "shop", "plain", map[string]string{})
	if err := n.add(t, n.list, plain); err != nil {
		t.Errorf("ADD of an unmeshed pod with the API down: %v", err)
	}
	// The node agent's own pod, under a runtime that passes no annotations: it must start, or the
	// node never gets its plugin credentials back. Any other pod still fails.
	agentList := n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`","exclude_namespaces":[],"agent_namespace":"kube-system","agent_pod_prefix":"shunt-cni-"`)
	agent := n.sandbox(t, "kube-system", "shunt-cni-x7k2p", nil)
	if err := n.add(t, agentList, agent); err != nil {
		t.Errorf("ADD of the agent's own pod with the API down: %v", err)
	}
	if r := ourRules(save(t, agent.ns, false)); r != "" {
		t.Errorf("the agent's pod got rules:\n%s", r)
	}
	other := n.sandbox(t, "kube-system", "coredns-x7k2p", nil)
	if e := cniError(t, n.add(t, agentList, other)); e.Code != 11 {
		t.Errorf("ADD of another pod with the API down: %v, want try again later", e)
	}
}

// testCNIVersions: shunt-cni answers VERSION with every spec version it supports, and chained in a
// conflist of each, programs the pod and passes the bridge's result through.
func testCNIVersions(t *testing.T, n *cniNode) {
	versions := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	var info []string
	err := n.inNode(t, func() error {
		vi, err := n.cni.GetVersionInfo(context.Background(), "shunt-cni")
		if err == nil {
			info = vi.SupportedVersions()
		}
		return err
	})
	if err != nil || !slices.Equal(info, versions) {
		t.Errorf("VERSION: %v, %v; want %v", info, err, versions)
	}
	for i, v := range versions {
		t.Run(v, func(t *testing.T) {
			p := n.podSandbox(t, meshedPod("versions", fmt.Sprintf("pod-%d", i), nil))
			list := n.conflistVersion(t, v, `"kubeconfig":"`+n.cluster.Kubeconfig+`"`)
			if err := n.add(t, list, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if p.ip == "" {
				t.Error("no IPv4 address in the result passed through")
			}
			if ourRules(save(t, p.ns, false)) == "" {
				t.Error("no rules")
			}
			if v != "0.3.0" && v != "0.3.1" { // CHECK came with 0.4.0
				if err := n.check(t, list, p); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := n.del(t, list, p); err != nil {
				t.Errorf("DEL: %v", err)
			}
		})
	}
}

// cniEBPFStatus is what `shunt ebpf status --json` prints.
type cniEBPFStatus struct {
	Pods []struct {
		NetNSCookie uint64 `json:"netns_cookie"`
	} `json:"pods"`
	Counters map[string]uint64 `json:"counters"`
}

func readCNIEBPFStatus(t *testing.T, pinDir string) cniEBPFStatus {
	t.Helper()
	out, err := exec.Command(bins.Path(t, pkgShunt), "ebpf", "status", "--json", "--pin-dir", pinDir).Output()
	if err != nil {
		t.Fatalf("shunt ebpf status: %v", err)
	}
	var st cniEBPFStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st
}

// testCNIEBPF: a pod annotated shunt.io/mode: ebpf gets its iptables rules and joins the node's eBPF
// data path at ADD — its app's connections then go to the proxy through the connect hook, with the
// loopback legs spliced — and leaves it at DEL. Without a loaded data path the pod falls back to
// iptables and is captured all the same.
func testCNIEBPF(t *testing.T, n *cniNode) {
	shunt := bins.Path(t, pkgShunt)
	cg := testutil.NewCgroup(t)
	pinDir := testutil.NewPinDir(t)
	if out, err := exec.Command(shunt, "ebpf", "load", "--cgroup", cg.Path, "--pin-dir", pinDir).CombinedOutput(); err != nil {
		t.Fatalf("shunt ebpf load: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(shunt, "ebpf", "unload", "--pin-dir", pinDir).CombinedOutput(); err != nil {
			t.Errorf("shunt ebpf unload: %v\n%s", err, out)
		}
	})
	list := n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`","ebpf_pin_dir":"`+pinDir+`"`)

	fast := n.podSandbox(t, meshedPod("shop", "fast", map[string]string{"shunt.io/mode": "ebpf"}))
	if err := n.add(t, list, fast); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if r := ourRules(save(t, fast.ns, false)); !strings.Contains(r, "ISTIO_INBOUND") {
		t.Fatalf("no iptables rules for an eBPF pod (inbound capture stays with them):\n%s", r)
	}
	if st := readCNIEBPFStatus(t, pinDir); len(st.Pods) != 1 {
		t.Fatalf("pods registered after ADD: %d, want 1", len(st.Pods))
	}

	remote := n.sandbox(t, "shop", "fast-remote", map[string]string{})
	if err := n.add(t, list, remote); err != nil {
		t.Fatalf("ADD remote: %v", err)
	}
	echo := bins.Path(t, pkgEchoserver)
	remote.ns.Start(t, &root, echo, "serve", "-name", "remote", "-tcp", fmt.Sprint(appPort))
	cg.Start(t, fast.ns, &proxyUser, bins.Path(t, pkgRefproxy), "-mode", "REDIRECT")
	podIP, remoteIP := netip.MustParseAddr(fast.ip), netip.MustParseAddr(remote.ip)
	before := readCNIEBPFStatus(t, pinDir).Counters
	out, err := cg.Exec(fast.ns, &appUser, echo, "client", "-tcp", addr(remoteIP, appPort).String())
	got := peerPort.ReplaceAllString(strings.TrimSpace(string(out)), "peer=$1")
	// The app's socket is bound to loopback by the redirect, so the proxy dials from the pod's IP.
	if want := viaOutbound(addr(remoteIP, appPort)) + app("remote", podIP, addr(remoteIP, appPort)); err != nil || got != want {
		t.Errorf("F2 through the eBPF data path: %q (%v), want %q", got, err, want)
	}
	after := readCNIEBPFStatus(t, pinDir).Counters
	for _, c := range []string{"connects_redirected", "origdst_answered", "messages_redirected"} {
		if after[c] <= before[c] {
			t.Errorf("counter %s did not grow (%d → %d): the connection did not take the eBPF path", c, before[c], after[c])
		}
	}
	if after["redirect_misses"] != 0 {
		t.Errorf("redirect_misses = %d, want 0", after["redirect_misses"])
	}

	if err := n.del(t, list, fast); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if st := readCNIEBPFStatus(t, pinDir); len(st.Pods) != 0 {
		t.Errorf("pods registered after DEL: %d, want 0", len(st.Pods))
	}

	// A node without the data path: the pod is programmed for iptables and starts.
	unloaded := n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`","ebpf_pin_dir":"`+filepath.Join(pinDir, "none")+`"`)
	fallback := n.podSandbox(t, meshedPod("shop", "fallback", map[string]string{"shunt.io/mode": "ebpf"}))
	if err := n.add(t, unloaded, fallback); err != nil {
		t.Fatalf("ADD without a data path: %v, want the pod on iptables", err)
	}
	if r := ourRules(save(t, fallback.ns, false)); !strings.Contains(r, "ISTIO_REDIRECT") {
		t.Errorf("the fallback pod has no capture rules:\n%s", r)
	}
}
