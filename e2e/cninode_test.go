//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

const (
	pkgBridge    = "github.com/containernetworking/plugins/plugins/main/bridge"
	pkgHostLocal = "github.com/containernetworking/plugins/plugins/ipam/host-local"
	// annotationsCap is the capability through which containerd passes a pod's annotations.
	annotationsCap = "io.kubernetes.cri.pod-annotations"
	// nodeSubnet is the pods' subnet on the test node's bridge.
	nodeSubnet = "10.88.0.0/16"
	nodeName   = "node-1"
)

// cniNode is a Kubernetes node in a network namespace of its own: etcd and a real kube-apiserver
// on its loopback, the CNI bridge the pods hang off, and the runtime side — libcni executing the
// conflist bridge + host-local + shunt-cni, as containerd does. Nothing touches the host namespace.
type cniNode struct {
	ns      *testutil.NetNS
	cluster *kube.Cluster
	binDir  string
	dataDir string
	logFile string
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	seq     atomic.Int32
}

// newCNINode starts a node. entry adds fields to shunt-cni's conflist entry.
func newCNINode(t testing.TB) *cniNode {
	t.Helper()
	testutil.RequireRoot(t)
	n := &cniNode{ns: testutil.NewNetNS(t), binDir: t.TempDir(), dataDir: t.TempDir()}
	n.logFile = filepath.Join(n.dataDir, "shunt-cni.log")
	n.cluster = kube.Start(t, kube.InNetNS(n.ns.Path()))
	if err := os.Chmod(n.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, bins.Path(t, pkgShunt), filepath.Join(n.binDir, "shunt-cni"))
	for _, pkg := range []string{pkgBridge, pkgHostLocal} {
		src := bins.Path(t, pkg)
		if err := os.Symlink(src, filepath.Join(n.binDir, filepath.Base(src))); err != nil {
			t.Fatal(err)
		}
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.binDir}, filepath.Join(n.dataDir, "cache"), nil)
	n.list = n.conflist(t, `"kubeconfig":"`+n.cluster.Kubeconfig+`"`)
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(n.logFile); err == nil {
				t.Logf("shunt-cni log:\n%s", tail(string(b), 60))
			}
		}
	})
	return n
}

// conflist returns the node's network with shunt-cni's entry holding the extra fields.
func (n *cniNode) conflist(t testing.TB, extra string) *libcni.NetworkConfigList {
	t.Helper()
	return n.conflistVersion(t, "1.1.0", extra)
}

// conflistVersion is conflist in CNI spec version.
func (n *cniNode) conflistVersion(t testing.TB, version, extra string) *libcni.NetworkConfigList {
	t.Helper()
	conf := fmt.Sprintf(`{
  "cniVersion": %q,
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}},
    {"type": "shunt-cni", "log_level": "debug", "log_file": %q, "state_dir": %q, "agent_socket": "", "api_timeout": "5s",
     "capabilities": {%q: true}, %s}
  ]
}`, version, nodeSubnet, filepath.Join(n.dataDir, "ipam"), n.logFile, filepath.Join(n.dataDir, "pods"), annotationsCap, extra)
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatalf("conflist: %v\n%s", err, conf)
	}
	return list
}

// cniPod is a pod sandbox: its network namespace and what the runtime passes for it.
type cniPod struct {
	ns          *testutil.NetNS
	namespace   string
	name        string
	uid         string
	containerID string
	annotations map[string]string
	ip          string
}

// sandbox makes a pod's network namespace, for a pod namespace/name whose annotations the runtime
// passes (nil: the runtime passes none).
func (n *cniNode) sandbox(t testing.TB, namespace, name string, annotations map[string]string) *cniPod {
	t.Helper()
	id := n.seq.Add(1)
	return &cniPod{
		ns: testutil.NewNetNS(t), namespace: namespace, name: name,
		uid: fmt.Sprintf("uid-%d", id), containerID: fmt.Sprintf("sandbox%08d", id), annotations: annotations,
	}
}

func (p *cniPod) runtimeConf() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.containerID,
		NetNS:       p.ns.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.containerID},
			{"K8S_POD_UID", p.uid},
		},
	}
	if p.annotations != nil {
		rt.CapabilityArgs = map[string]any{annotationsCap: p.annotations}
	}
	return rt
}

// inNode runs fn on a thread in the node's namespace: the plugins libcni executes from there start
// in it, as they would on a node.
func (n *cniNode) inNode(t testing.TB, fn func() error) error {
	t.Helper()
	var err error
	if nerr := n.ns.Do(func() error { err = fn(); return nil }); nerr != nil {
		t.Fatalf("enter node namespace: %v", nerr)
	}
	return err
}

// add runs ADD of the network list for p and records its IPv4 address.
func (n *cniNode) add(t testing.TB, list *libcni.NetworkConfigList, p *cniPod) error {
	t.Helper()
	return n.inNode(t, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := n.cni.AddNetworkList(ctx, list, p.runtimeConf())
		if err != nil {
			return err
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			return err
		}
		for _, ip := range r.IPs {
			if ip.Address.IP.To4() != nil {
				p.ip = ip.Address.IP.String()
			}
		}
		return nil
	})
}

func (n *cniNode) check(t testing.TB, list *libcni.NetworkConfigList, p *cniPod) error {
	t.Helper()
	return n.inNode(t, func() error {
		return n.cni.CheckNetworkList(context.Background(), list, p.runtimeConf())
	})
}

func (n *cniNode) del(t testing.TB, list *libcni.NetworkConfigList, p *cniPod) error {
	t.Helper()
	return n.inNode(t, func() error {
		return n.cni.DelNetworkList(context.Background(), list, p.runtimeConf())
	})
}

func (n *cniNode) status(t testing.TB, list *libcni.NetworkConfigList) error {
	t.Helper()
	return n.inNode(t, func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
}

// cniError returns err's CNI error, failing t when it is something else.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e
}

// createPod creates pod in the API server (its namespace too, when missing), bound to the node.
func (n *cniNode) createPod(t testing.TB, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	c := n.cluster.Client
	if _, err := c.CoreV1().Namespaces().Get(ctx, pod.Namespace, metav1.GetOptions{}); err != nil {
		_, err = c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pod.Namespace}}, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("create namespace %s: %v", pod.Namespace, err)
		}
	}
	pod.Spec.NodeName = nodeName
	for _, cs := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range cs {
			if cs[i].Image == "" {
				cs[i].Image = "example.invalid/app"
			}
		}
	}
	got, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return got
}

// meshedPod is a pod as Istio's injector leaves it for the CNI plugin: an istio-proxy container
// and the status annotation; ann adds annotations.
func meshedPod(namespace, name string, ann map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
			Annotations: map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}},
	}
	for k, v := range ann {
		p.Annotations[k] = v
	}
	return p
}

// podSandbox creates pod in the API and a sandbox for it whose annotations the runtime passes.
func (n *cniNode) podSandbox(t testing.TB, pod *corev1.Pod) *cniPod {
	t.Helper()
	created := n.createPod(t, pod)
	s := n.sandbox(t, created.Namespace, created.Name, created.Annotations)
	s.uid = string(created.UID)
	return s
}

// save returns iptables-save (variant nft, family v4 or v6) of ns without counters.
func save(t testing.TB, n *testutil.NetNS, v6 bool) string {
	t.Helper()
	out, err := n.Exec(nil, nil, saveCommand("nft", v6))
	if err != nil {
		t.Fatalf("%s in %s: %v\n%s", saveCommand("nft", v6), n.Name, err, out)
	}
	return string(out)
}

// ourRules is the part of iptables-save text that shunt owns: per table, the ISTIO_* chains
// declared and every rule that is in, or jumps to, one of them — in order.
func ourRules(save string) string {
	var b strings.Builder
	for _, l := range strings.Split(save, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "*"):
			b.WriteString(l + "\n")
		case strings.HasPrefix(l, ":ISTIO"):
			b.WriteString(strings.Fields(l)[0] + "\n")
		case strings.HasPrefix(l, "-A ") && strings.Contains(l, "ISTIO"):
			b.WriteString(l + "\n")
		}
	}
	// Tables with nothing of ours are left out.
	var out []string
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "*") && (i+1 == len(lines) || strings.HasPrefix(lines[i+1], "*")) {
			continue
		}
		if l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// canonical loads restore input into a scratch namespace and returns our rules as the kernel holds
// them, so that Istio's expected rules compare with what a pod's namespace holds.
func canonical(t testing.TB, restoreInput string) string {
	t.Helper()
	scratch := testutil.NewNetNS(t)
	cmd := scratch.Command(nil, "iptables-nft-restore")
	cmd.Stdin = strings.NewReader(restoreInput)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-nft-restore: %v\n%s", err, out)
	}
	return ourRules(save(t, scratch, false))
}

// nodeHTTP is an HTTP client whose connections are made in the node's namespace.
func (n *cniNode) nodeHTTP() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		var err error
		nerr := n.ns.Do(func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return nil
		})
		if nerr != nil {
			return nil, nerr
		}
		return c, err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: 5 * time.Second}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
