//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/cri"
	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

const pkgLoopback = "github.com/containernetworking/plugins/plugins/main/loopback"

// criImages are the images of the containerd tests, built once per run into the directory the
// test binaries are built in (TestMain's).
var (
	criImagesOnce sync.Once
	criImages     *cri.Images
)

func images(t testing.TB) *cri.Images {
	t.Helper()
	dir := filepath.Dir(bins.Path(t, pkgEchoserver))
	criImagesOnce.Do(func() { criImages = cri.NewImages(dir) })
	return criImages
}

// criNode is a Kubernetes node whose container runtime is a real containerd: a kube-apiserver and
// containerd in the node's namespace, containerd running the conflist loopback (its own), bridge +
// host-local + shunt-cni for every sandbox, each plugin behind a wrapper that records what
// containerd passed it.
type criNode struct {
	*cri.Node
	cluster   *kube.Cluster
	cni       *cniNode // this node as TestCNI's helpers see it: namespace, API server, data dir, shunt-cni's log
	binDir    string
	confDir   string
	recordDir string
}

// newCRINode starts the node, with no CNI configuration yet. Images besides the sandbox's are
// imported.
func newCRINode(t *testing.T, imports ...string) *criNode {
	t.Helper()
	testutil.RequireRoot(t)
	im := images(t)
	var imgs []cri.Image
	for _, pkg := range imports {
		imgs = append(imgs, im.Image(t, pkg))
	}
	n := &criNode{binDir: t.TempDir(), recordDir: t.TempDir(), cni: &cniNode{dataDir: t.TempDir()}}
	n.cni.logFile = filepath.Join(n.cni.dataDir, "shunt-cni.log")
	n.confDir = t.TempDir()
	n.Node = cri.Start(t, cri.Options{CNIBinDir: n.binDir, CNIConfDir: n.confDir, Images: im, Import: imgs})
	n.cluster = kube.Start(t, kube.InNetNS(n.NetNS.Path()))
	n.cni.ns, n.cni.cluster = n.NetNS, n.cluster
	if err := os.Chmod(n.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, bins.Path(t, pkgShunt), filepath.Join(n.binDir, "shunt-cni.real"))
	n.record(t, "shunt-cni", filepath.Join(n.binDir, "shunt-cni.real"))
	for _, pkg := range []string{pkgBridge, pkgHostLocal, pkgLoopback} {
		src := bins.Path(t, pkg)
		n.record(t, filepath.Base(src), src)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(n.cni.logFile); err == nil {
				t.Logf("shunt-cni log:\n%s", tail(string(b), 60))
			}
		}
	})
	return n
}

// writeConflist writes TestCNI's network (bridge + host-local, then shunt-cni) into the conf dir,
// in spec version 1.0.0 (containerd 1.6 fails ADD on a 1.1.0 result: "unsupported CNI result
// version"), with the installer's default api_timeout, 20s (a burst of 100 sandboxes on two cores
// took single GETs past TestCNI's 5s), and waits until containerd has loaded it.
func (n *criNode) writeConflist(t *testing.T) {
	t.Helper()
	list := n.cni.conflistVersion(t, "1.0.0", `"kubeconfig":"`+n.cluster.Kubeconfig+`"`)
	var conf map[string]any
	if err := json.Unmarshal(list.Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	plugins := conf["plugins"].([]any)
	plugins[len(plugins)-1].(map[string]any)["api_timeout"] = "20s"
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.confDir, "10-k8s-pod-network.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	n.WaitNetworkReady(t)
}

// record installs plugin in the CNI bin dir as a script that saves the environment and the
// configuration containerd passes, one directory per call named by the time, then executes real.
func (n *criNode) record(t *testing.T, plugin, real string) {
	t.Helper()
	script := fmt.Sprintf(`#!/bin/sh
d=$(mktemp -d %s/$(date +%%s%%N).XXXXXX)
echo %s > "$d/plugin"
env > "$d/env"
cat > "$d/stdin"
exec %s < "$d/stdin"
`, n.recordDir, plugin, real)
	if err := os.WriteFile(filepath.Join(n.binDir, plugin), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// cniCall is one execution of a plugin, as the recording wrapper saw it.
type cniCall struct {
	Plugin, Command, NetNS, ContainerID, IfName string
	Args                                        map[string]string
	Conf                                        map[string]any
}

func (c cniCall) String() string {
	keys := make([]string, 0, len(c.Conf))
	for k := range c.Conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return fmt.Sprintf("%s %s netns=%q ifname=%q args=%v conf keys=%v", c.Plugin, c.Command, c.NetNS, c.IfName, c.Args, keys)
}

// calls returns the plugin executions for the sandbox id, in order.
func (n *criNode) calls(t *testing.T, id string) []cniCall {
	t.Helper()
	entries, err := os.ReadDir(n.recordDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []cniCall
	for _, e := range entries { // named by the time: in order
		dir := filepath.Join(n.recordDir, e.Name())
		plugin, err1 := os.ReadFile(filepath.Join(dir, "plugin"))
		env, err2 := os.ReadFile(filepath.Join(dir, "env"))
		stdin, err3 := os.ReadFile(filepath.Join(dir, "stdin"))
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("record %s: %v %v %v", dir, err1, err2, err3)
		}
		c := cniCall{Plugin: strings.TrimSpace(string(plugin)), Args: map[string]string{}}
		for _, l := range strings.Split(string(env), "\n") {
			k, v, _ := strings.Cut(l, "=")
			switch k {
			case "CNI_COMMAND":
				c.Command = v
			case "CNI_NETNS":
				c.NetNS = v
			case "CNI_CONTAINERID":
				c.ContainerID = v
			case "CNI_IFNAME":
				c.IfName = v
			case "CNI_ARGS":
				for _, kv := range strings.Split(v, ";") {
					if k, v, ok := strings.Cut(kv, "="); ok {
						c.Args[k] = v
					}
				}
			}
		}
		if c.ContainerID != id {
			continue
		}
		if err := json.Unmarshal(stdin, &c.Conf); err != nil {
			t.Fatalf("record %s: stdin: %v\n%s", dir, err, stdin)
		}
		out = append(out, c)
	}
	return out
}

// podMeta is what kubelet passes of pod for its sandbox.
func podMeta(pod *corev1.Pod) cri.PodMeta {
	return cri.PodMeta{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Labels: pod.Labels, Annotations: pod.Annotations}
}

// runPod creates pod in the API server and runs its sandbox.
func (n *criNode) runPod(t *testing.T, pod *corev1.Pod) *cri.Pod {
	t.Helper()
	created := n.cni.createPod(t, pod)
	return n.MustRunPod(t, n.SandboxConfig(podMeta(created)))
}

// TestContainerd runs pods through a real containerd (Debian's, with runc) driven over CRI as
// kubelet drives it: what containerd passes to CNI plugins, meshed and unmeshed pods' rules, F1 and
// F2 between real containers through a sidecar container, the init container as Istio's injector
// runs it, and sandboxes started at once.
func TestContainerd(t *testing.T) {
	n := newCRINode(t, pkgEchoserver, pkgRefproxy, pkgShuntInit)
	n.writeConflist(t)
	t.Run("cni_calls", func(t *testing.T) { testContainerdCNICalls(t, n) })
	t.Run("pods", func(t *testing.T) { testContainerdPods(t, n) })
	t.Run("flows", func(t *testing.T) { testContainerdFlows(t, n, "native-sidecar.yaml", "REDIRECT") })
	t.Run("flows_tproxy", func(t *testing.T) { testContainerdFlows(t, n, "native-sidecar-tproxy.yaml", "TPROXY") })
	t.Run("init_container", func(t *testing.T) { testContainerdInitContainer(t, n) })
	t.Run("concurrent", func(t *testing.T) { testContainerdConcurrent(t, n, 100) })
}

// testContainerdCNICalls records what containerd passes to the plugins for RunPodSandbox,
// StopPodSandbox twice and RemovePodSandbox, and that each call succeeds. Containerd 1.6 runs its own
// loopback network beside the conflist's (whose DEL goes in reverse); every call has the sandbox's
// K8S_POD_* arguments. The first DEL has the namespace and the cached result as prevResult; the
// repeated StopPodSandbox and RemovePodSandbox each run DEL again, with an empty CNI_NETNS and no
// prevResult. shunt-cni gets the pod's annotations (runtimeConfig) in every call. It is never
// called with CHECK, STATUS or GC.
func testContainerdCNICalls(t *testing.T, n *criNode) {
	pod := injectedPod(t, "native-sidecar.yaml", "calls")
	p := n.runPod(t, pod)
	steps := []struct {
		name string
		do   func(testing.TB) error
	}{{"StopPodSandbox", p.Stop}, {"StopPodSandbox again", p.Stop}, {"RemovePodSandbox", p.Remove}}
	for _, s := range steps {
		if err := s.do(t); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	calls := n.calls(t, p.ID)
	const ns = "NETNS" // the sandbox's
	var got []string
	for _, c := range calls {
		netns := c.NetNS
		if netns == p.NetNSPath {
			netns = ns
		}
		got = append(got, fmt.Sprintf("%s %s %s netns=%q prevResult=%v", c.Plugin, c.Command, c.IfName, netns, c.Conf["prevResult"] != nil))
	}
	want := []string{
		// RunPodSandbox: in ADD only the plugin chained after bridge has a prevResult.
		`bridge ADD eth0 netns="NETNS" prevResult=false`,
		`host-local ADD eth0 netns="NETNS" prevResult=false`,
		`shunt-cni ADD eth0 netns="NETNS" prevResult=true`,
		// StopPodSandbox: the conflist in reverse, each with the cached result.
		`shunt-cni DEL eth0 netns="NETNS" prevResult=true`,
		`bridge DEL eth0 netns="NETNS" prevResult=true`,
		`host-local DEL eth0 netns="NETNS" prevResult=true`,
		// StopPodSandbox again: the namespace is gone, the cache too.
		`shunt-cni DEL eth0 netns="" prevResult=false`,
		`bridge DEL eth0 netns="" prevResult=false`,
		`host-local DEL eth0 netns="" prevResult=false`,
		// RemovePodSandbox: once more.
		`shunt-cni DEL eth0 netns="" prevResult=false`,
		`bridge DEL eth0 netns="" prevResult=false`,
		`host-local DEL eth0 netns="" prevResult=false`,
	}
	// Containerd's own loopback network, set up concurrently with the conflist's (so in no fixed
	// order with it), and torn down with it each time.
	wantLoopback := []string{
		`loopback ADD lo netns="NETNS" prevResult=false`,
		`loopback DEL lo netns="NETNS" prevResult=false`,
		`loopback DEL lo netns="" prevResult=false`,
		`loopback DEL lo netns="" prevResult=false`,
	}
	var gotLoopback []string
	got = slices.DeleteFunc(got, func(c string) bool {
		if strings.HasPrefix(c, "loopback ") {
			gotLoopback = append(gotLoopback, c)
			return true
		}
		return false
	})
	if diff := cmp.Diff(wantLoopback, gotLoopback); diff != "" {
		t.Errorf("loopback calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CNI calls for RunPodSandbox, StopPodSandbox twice, RemovePodSandbox (-want +got):\n%s", diff)
	}
	// What shunt-cni made of each: the ADD programs, the first DEL removes the rules, the later ones
	// have no namespace to clean and succeed.
	var outcomes []string
	log, err := os.ReadFile(n.cni.logFile)
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(log)) {
		var e struct {
			Msg, Command, Outcome, Reason string
			ContainerID                   string `json:"container_id"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "command done" && e.ContainerID == p.ID {
			outcomes = append(outcomes, strings.TrimSpace(e.Command+" "+e.Outcome+" "+e.Reason))
		}
	}
	wantOutcomes := []string{"ADD programmed", "DEL removed", "DEL removed no network namespace", "DEL removed no network namespace"}
	if diff := cmp.Diff(wantOutcomes, outcomes); diff != "" {
		t.Errorf("shunt-cni's outcomes (-want +got):\n%s", diff)
	}
	wantArgs := map[string]string{"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": pod.Namespace, "K8S_POD_NAME": pod.Name,
		"K8S_POD_INFRA_CONTAINER_ID": p.ID, "K8S_POD_UID": p.Config.Metadata.Uid}
	for i, c := range calls {
		if diff := cmp.Diff(wantArgs, c.Args); diff != "" {
			t.Errorf("call %d (%s %s): CNI_ARGS (-want +got):\n%s", i, c.Plugin, c.Command, diff)
		}
		if c.Plugin != "shunt-cni" {
			continue
		}
		rc, _ := c.Conf["runtimeConfig"].(map[string]any)
		ann, _ := json.Marshal(rc[annotationsCap])
		wantAnn, _ := json.Marshal(p.Config.Annotations)
		if string(ann) != string(wantAnn) {
			t.Errorf("call %d (%s %s): runtimeConfig %s = %s, want the sandbox's annotations %s", i, c.Plugin, c.Command, annotationsCap, ann, wantAnn)
		}
	}
}

// fixtureContainer is the container c of an injected pod as kubelet passes it to CRI, running
// img: its arguments (args replaces them when given) and security context.
func fixtureContainer(c corev1.Container, img cri.Image, args ...string) cri.Container {
	out := cri.Container{Name: c.Name, Image: img, Args: c.Args}
	if args != nil {
		out.Args = args
	}
	if sc := c.SecurityContext; sc != nil {
		out.RunAsUser, out.RunAsGroup = sc.RunAsUser, sc.RunAsGroup
		if sc.AllowPrivilegeEscalation != nil {
			out.NoNewPrivs = !*sc.AllowPrivilegeEscalation
		}
		if sc.ReadOnlyRootFilesystem != nil {
			out.ReadonlyRootfs = *sc.ReadOnlyRootFilesystem
		}
		if caps := sc.Capabilities; caps != nil {
			for _, c := range caps.Add {
				out.CapAdd = append(out.CapAdd, string(c))
			}
			for _, c := range caps.Drop {
				out.CapDrop = append(out.CapDrop, string(c))
			}
		}
	}
	return out
}

// injectorInitArgs are the arguments of Istio's injector's init container, as it writes them. (The
// fixtures' args are YAML flow sequences, which split -d's list 15090,15021,15020 into three
// arguments.)
func injectorInitArgs(mode string) []string {
	return append([]string{"istio-iptables"}, injectorArgs(mode)...)
}

// initContainer returns pod's init container name.
func initContainer(t *testing.T, pod *corev1.Pod, name string) corev1.Container {
	t.Helper()
	i := slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("pod %s has no init container %s", pod.Name, name)
	}
	return pod.Spec.InitContainers[i]
}

// istioCNIRules returns our rules of Istio's CNI scenario name (shared/compat/istio-cni) as the
// kernel holds them.
func istioCNIRules(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "shared", "compat", "istio-cni", name))
	if err != nil {
		t.Fatal(err)
	}
	return canonical(t, string(b))
}

// testContainerdPods runs the injector's pod shapes as sandboxes: the sidecars, native and classic,
// get Istio's rules in the namespace containerd made, and StopPodSandbox removes them (DEL); an
// unmeshed pod, a gateway and an istio-init pod get none.
func testContainerdPods(t *testing.T, n *criNode) {
	basic := istioCNIRules(t, "basic.v4")
	for file, want := range map[string]string{
		"native-sidecar.yaml":        basic,
		"classic-sidecar.yaml":       basic,
		"native-sidecar-tproxy.yaml": istioCNIRules(t, "tproxy.v4"),
		"gateway.yaml":               "",
		"istio-init.yaml":            "",
		"unmeshed":                   "",
	} {
		t.Run(strings.TrimSuffix(file, ".yaml"), func(t *testing.T) {
			var pod *corev1.Pod
			if file == "unmeshed" {
				pod = injectedPod(t, "native-sidecar.yaml", "pods")
				pod.Name = "unmeshed"
				delete(pod.Annotations, "sidecar.istio.io/status")
			} else {
				pod = injectedPod(t, file, "pods")
			}
			p := n.runPod(t, pod)
			if got := ourRules(save(t, p.NetNS, false)); got != want {
				t.Errorf("rules in the sandbox's namespace %s:\n got:\n%s\nwant:\n%s", p.NetNSPath, got, want)
			}
			if left := ourRules(save(t, p.NetNS, true)); left != "" && want == "" {
				t.Errorf("IPv6 rules in a pod left alone:\n%s", left)
			}
			held := p.Hold(t)
			if err := p.Stop(t); err != nil {
				t.Fatalf("StopPodSandbox: %v", err)
			}
			if left := ourRules(save(t, held, false)); left != "" {
				t.Errorf("after StopPodSandbox the namespace still holds:\n%s", left)
			}
			if err := p.Remove(t); err != nil {
				t.Fatalf("RemovePodSandbox: %v", err)
			}
		})
	}
}

// testContainerdFlows runs an injected native sidecar pod (file, interception mode mode) as kubelet
// runs it — istio-validation, the sidecar (the reference sidecar, with the injector's user, group
// and capabilities), the app — and an unmeshed remote pod, sends F1 and F2 between the containers,
// then stops the running pod: DEL leaves none of the rules.
func testContainerdFlows(t *testing.T, n *criNode, file, mode string) {
	im := images(t)
	echo, proxy, initImg := im.Image(t, pkgEchoserver), im.Image(t, pkgRefproxy), im.Image(t, pkgShuntInit)
	pod := injectedPod(t, file, "flows")
	p := n.runPod(t, pod)
	remotePod := injectedPod(t, file, "flows")
	remotePod.Name += "-remote"
	delete(remotePod.Annotations, "sidecar.istio.io/status")
	remote := n.runPod(t, remotePod)

	// istio-validation: shunt-init with the injector's arguments, --run-validation --skip-rule-apply,
	// as uid 1337 with no capability and a read-only root.
	validation := fixtureContainer(initContainer(t, pod, "istio-validation"), initImg,
		append(injectorInitArgs(mode), "--run-validation", "--skip-rule-apply")...)
	if code := p.Run(t, validation); code != 0 {
		t.Fatalf("istio-validation exited %d:\n%s", code, p.Logs(validation))
	}
	sidecar := fixtureContainer(initContainer(t, pod, "istio-proxy"), proxy, "-mode", mode)
	p.StartReady(t, sidecar)
	appC := cri.Container{Name: "reviews", Image: echo, Args: []string{"serve", "-name", "pod", "-tcp", fmt.Sprint(appPort)},
		RunAsUser: cri.Int64(int64(appUser.UID)), RunAsGroup: cri.Int64(int64(appUser.GID))}
	appID := p.StartReady(t, appC)
	remoteID := remote.StartReady(t, cri.Container{Name: "remote", Image: echo,
		Args: []string{"serve", "-name", "remote", "-tcp", fmt.Sprint(appPort)}})

	podIP, remoteIP := ip(p.IP), ip(remote.IP)
	inboundPeer := ip("127.0.0.6")
	if mode == "TPROXY" {
		inboundPeer = remoteIP // the app sees the real client
	}
	for _, c := range []struct {
		name, from string
		to         netip.AddrPort
		want       string
	}{
		{"F2_outbound", appID, addr(remoteIP, appPort), viaOutbound(addr(remoteIP, appPort)) + app("remote", podIP, addr(remoteIP, appPort))},
		{"F1_inbound", remoteID, addr(podIP, appPort), viaInbound(addr(podIP, appPort)) + app("pod", inboundPeer, addr(podIP, appPort))},
	} {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := n.Exec(t, c.from, "/echoserver", "client", "-tcp", c.to.String())
			got := peerPort.ReplaceAllString(strings.TrimSpace(stdout), "peer=$1")
			if code != 0 || got != c.want {
				t.Errorf("echoserver client -tcp %s in %s: exit %d, %s\n got: %s\nwant: %s", c.to, c.from, code, stderr, got, c.want)
			}
		})
	}

	held := p.Hold(t)
	if err := p.Stop(t); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if left := ourRules(save(t, held, false)) + ourRules(save(t, held, true)); left != "" {
		t.Errorf("after StopPodSandbox of the running pod its namespace still holds:\n%s", left)
	}
}

// testContainerdInitContainer runs the init container as Istio's injector writes it, in a pod the
// plugin leaves alone (it has istio-init): shunt-init's image, the injector's arguments,
// capabilities NET_ADMIN and NET_RAW only, uid 0; then again in the same sandbox, as kubelet does
// when the sandbox survives. Both exit 0 and the pod holds the rules of those arguments.
func testContainerdInitContainer(t *testing.T, n *criNode) {
	pod := injectedPod(t, "istio-init.yaml", "init")
	p := n.runPod(t, pod)
	if got := ourRules(save(t, p.NetNS, false)); got != "" {
		t.Fatalf("the plugin programmed an istio-init pod:\n%s", got)
	}
	c := fixtureContainer(initContainer(t, pod, "istio-init"), images(t).Image(t, pkgShuntInit), injectorInitArgs("REDIRECT")...)
	// The rules of the same arguments, as shunt's dry run prints them, loaded and read back.
	dry, err := exec.Command(bins.Path(t, pkgShunt), append([]string{"iptables", "--dry-run"}, injectorArgs("REDIRECT")...)...).Output()
	if err != nil {
		t.Fatalf("shunt iptables --dry-run: %v", err)
	}
	want := canonical(t, string(dry))
	for attempt := range uint32(2) {
		c.Attempt = attempt
		if code := p.Run(t, c); code != 0 {
			t.Fatalf("istio-init attempt %d exited %d:\n%s", attempt, code, p.Logs(c))
		}
		if got := ourRules(save(t, p.NetNS, false)); got != want {
			t.Errorf("after istio-init attempt %d:\n got:\n%s\nwant:\n%s\nlog:\n%s", attempt, got, want, p.Logs(c))
		}
	}
}

// testContainerdConcurrent starts count meshed sandboxes at once; each gets its rules.
func testContainerdConcurrent(t *testing.T, n *criNode, count int) {
	want := istioCNIRules(t, "basic.v4")
	pods := make([]*corev1.Pod, count)
	for i := range pods {
		pods[i] = injectedPod(t, "native-sidecar.yaml", "many")
		pods[i].Name = fmt.Sprintf("pod-%d", i)
		pods[i] = n.cni.createPod(t, pods[i])
	}
	start := time.Now()
	sandboxes := make([]*cri.Pod, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() { sandboxes[i], errs[i] = n.RunPod(t, n.SandboxConfig(podMeta(pods[i]))) })
	}
	wg.Wait()
	t.Logf("%d sandboxes started at once in %v", count, time.Since(start).Round(time.Millisecond))
	for i, p := range sandboxes {
		if errs[i] != nil {
			t.Errorf("RunPodSandbox %s: %v", pods[i].Name, errs[i])
			continue
		}
		if got := ourRules(save(t, p.NetNS, false)); got != want {
			t.Errorf("%s: rules differ:\n%s", pods[i].Name, got)
		}
	}
	start = time.Now()
	for i, p := range sandboxes {
		if p == nil {
			continue
		}
		wg.Go(func() {
			if err := p.Stop(t); err != nil {
				t.Errorf("StopPodSandbox %s: %v", pods[i].Name, err)
			}
			if err := p.Remove(t); err != nil {
				t.Errorf("RemovePodSandbox %s: %v", pods[i].Name, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d sandboxes stopped and removed at once in %v", count, time.Since(start).Round(time.Millisecond))
}
