package cni

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/shuntmesh/shunt/backend/backendtest"
	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/redirect"
)

const prevV4V6 = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],
 "ips":[{"address":"10.1.0.5/24","interface":0},{"address":"fd00::5/64","interface":0}]}`

func netConf(t testing.TB, extra string) []byte {
	t.Helper()
	dir := t.TempDir()
	conf := `{"cniVersion":"1.0.0","name":"k8s","type":"shunt-cni","log_file":"` + filepath.Join(dir, "cni.log") +
		`","state_dir":"` + filepath.Join(dir, "pods") + `"` + extra + `}`
	return []byte(conf)
}

func withPrev(t testing.TB, extra string) []byte {
	return netConf(t, `,"prevResult":`+prevV4V6+extra)
}

func cmdArgs(conf []byte, netns, k8s string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "eth0", Args: k8s, StdinData: conf}
}

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u1"

func meshedPod(ann map[string]string) *Pod {
	p := &Pod{}
	p.Metadata.Name, p.Metadata.Namespace = "cart-1", "shop"
	p.Metadata.Annotations = map[string]string{meshpod.AnnotationStatus: "{}"}
	for k, v := range ann {
		p.Metadata.Annotations[k] = v
	}
	p.Spec.Containers = []Container{{Name: "app"}, {Name: meshpod.ProxyContainerName}}
	return p
}

// fakePlugin records what the plugin asked of the API server, the backend and the eBPF layer.
type fakePlugin struct {
	Plugin
	gets     int
	backends backendtest.Fake
	joined   []EBPFPod
	joinErr  error
	left     []string
}

func newFake(t *testing.T, pod *Pod, getErr error) *fakePlugin {
	f := &fakePlugin{}
	f.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	f.GetPod = func(context.Context, *NetConf, string, string, string) (*Pod, string, error) {
		f.gets++
		return pod, PodSourceAgent, getErr
	}
	f.Backends = f.backends.Select
	f.Cleanup = f.backends.Cleanup
	f.Layer = func(conf *NetConf) DataPathLayer {
		if conf.EBPFPinDir != DefaultEBPFPinDir {
			t.Errorf("eBPF layer with pin dir %q", conf.EBPFPinDir)
		}
		return fakeLayer{f}
	}
	quietStdout(t)
	return f
}

// applied is the plan the last Apply installed, or nil.
func (f *fakePlugin) applied() *redirect.Plan {
	c, ok := f.backends.Last("Apply")
	if !ok {
		return nil
	}
	return f.backends.Installed(c.NetNS)
}

type fakeLayer struct{ f *fakePlugin }

func (l fakeLayer) Register(p EBPFPod) error {
	l.f.joined = append(l.f.joined, p)
	return l.f.joinErr
}

func (l fakeLayer) Unregister(netns string) error {
	l.f.left = append(l.f.left, netns)
	return nil
}

// quietStdout sends the CNI result the plugin prints to /dev/null for the test.
func quietStdout(t *testing.T) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = devnull
	t.Cleanup(func() { os.Stdout = old; devnull.Close() })
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a CNI error", err)
	}
	return e.Code
}

// dualStack sets ISTIO_DUAL_STACK on the pod's proxy, as the injector does for dual-stack meshes.
func dualStack(p *Pod) *Pod {
	p.Spec.Containers[1].Env = append(p.Spec.Containers[1].Env, EnvVar{Name: "ISTIO_DUAL_STACK", Value: "true"})
	return p
}

func TestAddProgramsMeshedPod(t *testing.T) {
	f := newFake(t, dualStack(meshedPod(map[string]string{meshpod.AnnotationExcludeOutboundPorts: "9000"})), nil)
	if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/var/run/netns/x", podArgs)); err != nil {
		t.Fatal(err)
	}
	if f.gets != 1 || f.applied() == nil {
		t.Fatalf("gets=%d applied=%v, want one GET and an apply", f.gets, f.applied() != nil)
	}
	if len(f.applied().Families) != 2 {
		t.Errorf("planned %d families, want IPv4 and IPv6 from prevResult's IPs", len(f.applied().Families))
	}
	if c, _ := f.backends.Last("Apply"); c.NetNS != "/var/run/netns/x" || !c.Mode.Reconcile {
		t.Errorf("apply %+v, want the pod's netns and reconcile", c)
	}
}

func TestAddNFTablesBackend(t *testing.T) {
	f := newFake(t, dualStack(meshedPod(nil)), nil)
	if err := f.CmdAdd(cmdArgs(netConf(t, `,"backend":"nftables","prevResult":`+prevV4V6), "/var/run/netns/x", podArgs)); err != nil {
		t.Fatal(err)
	}
	if f.applied() == nil || len(f.applied().Families) != 1 || f.applied().Families[0].Family != redirect.Inet {
		t.Fatalf("applied %+v, want one inet plan", f.applied())
	}
	if got := f.applied().Families[0].Covers; len(got) != 2 {
		t.Errorf("inet plan covers %v, want IPv4 and IPv6 from prevResult's IPs", got)
	}
	if c, _ := f.backends.Last("Select"); !c.Inet {
		t.Errorf("selected %+v, want the nftables backend", c)
	}
}

// TestAddDualStackNeedsTheVariable: like istio-cni, a pod with an IPv4 and an IPv6 address gets IPv6
// rules only when its proxy runs with ISTIO_DUAL_STACK (its listeners are then on both families).
func TestAddDualStackNeedsTheVariable(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/var/run/netns/x", podArgs)); err != nil {
		t.Fatal(err)
	}
	if f.applied() == nil || len(f.applied().Families) != 1 || f.applied().Families[0].Family != redirect.IPv4 {
		t.Fatalf("applied %+v, want IPv4 only", f.applied())
	}
}

func TestParseNetConfBackend(t *testing.T) {
	c, err := ParseNetConf(netConf(t, ""))
	if err != nil || c.Backend != BackendIptables {
		t.Errorf("default backend %q, %v; want iptables", c.Backend, err)
	}
	for conf, want := range map[string]string{
		`,"backend":"ebpf"`: `backend: invalid value "ebpf": must be "iptables", "nftables" or empty`,
		`,"backend":"nftables","iptables_variant":"legacy"`: `iptables_variant: invalid value "legacy": the nftables backend uses no iptables`,
	} {
		if _, err := ParseNetConf(netConf(t, conf)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", conf, err, want)
		}
	}
}

func TestAddSkipsWithoutAPICall(t *testing.T) {
	for name, c := range map[string]struct{ conf, args string }{
		"excluded namespace":          {``, "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"},
		"custom excluded namespace":   {`,"exclude_namespaces":["shop"]`, podArgs},
		"annotations without status":  {`,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}`, podArgs},
		"not a Kubernetes pod":        {``, ""},
		"no pod namespace":            {``, "K8S_POD_NAME=cart-1"},
		"no pod name":                 {``, "K8S_POD_NAMESPACE=shop"},
		"annotations, empty (no key)": {`,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}`, podArgs},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, meshedPod(nil), nil)
			if err := f.CmdAdd(cmdArgs(withPrev(t, c.conf), "/ns", c.args)); err != nil {
				t.Fatal(err)
			}
			if f.gets != 0 || f.applied() != nil {
				t.Errorf("gets=%d applied=%v, want neither", f.gets, f.applied() != nil)
			}
		})
	}
}

func TestAddReadsPodWhenAnnotated(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	conf := `,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"sidecar.istio.io/status":"{}"}}`
	if err := f.CmdAdd(cmdArgs(withPrev(t, conf), "/ns", podArgs)); err != nil {
		t.Fatal(err)
	}
	if f.gets != 1 || f.applied() == nil {
		t.Fatalf("gets=%d applied=%v", f.gets, f.applied() != nil)
	}
}

func TestAddSkipReasons(t *testing.T) {
	hostNet := meshedPod(nil)
	hostNet.Spec.HostNetwork = true
	noProxy := meshedPod(nil)
	noProxy.Spec.Containers = noProxy.Spec.Containers[:1]
	initC := meshedPod(nil)
	initC.Spec.InitContainers = []Container{{Name: meshpod.InitContainerName}}
	for name, pod := range map[string]*Pod{
		"host network":  hostNet,
		"no proxy":      noProxy,
		"istio-init":    initC,
		"inject false":  meshedPod(map[string]string{meshpod.AnnotationInject: "false"}),
		"mode NONE":     meshedPod(map[string]string{meshpod.AnnotationInterceptionMode: "NONE"}),
		"no status ann": func() *Pod { p := meshedPod(nil); delete(p.Metadata.Annotations, meshpod.AnnotationStatus); return p }(),
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, pod, nil)
			if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs)); err != nil {
				t.Fatal(err)
			}
			if f.applied() != nil {
				t.Error("a skipped pod was programmed")
			}
		})
	}
}

func TestAddFailsClosed(t *testing.T) {
	t.Run("API unreachable", func(t *testing.T) {
		f := newFake(t, nil, errors.New("dial tcp: connection refused"))
		err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs))
		if cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "shop/cart-1") {
			t.Errorf("error %v, want try-again naming the pod", err)
		}
	})
	// The node agent's own pods pass while the API is unreachable (istio-cni's degraded-state rule):
	// they restore the plugin's credentials. Others named alike, or in another namespace, fail.
	t.Run("agent pod with the API unreachable", func(t *testing.T) {
		agent := `,"agent_namespace":"kube-system","agent_pod_prefix":"shunt-cni-","exclude_namespaces":[]`
		for args, passes := range map[string]bool{
			"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=shunt-cni-x7k2p": true,
			"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=shunt-cni-x7k2p":        false,
			"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-x7k2p":   false,
		} {
			f := newFake(t, nil, errors.New("dial tcp: connection refused"))
			err := f.CmdAdd(cmdArgs(withPrev(t, agent), "/ns", args))
			if passes && err != nil || !passes && (err == nil || cniCode(t, err) != types.ErrTryAgainLater) {
				t.Errorf("%s: error %v, want it to pass: %v", args, err, passes)
			}
			if f.applied() != nil {
				t.Errorf("%s: rules applied", args)
			}
		}
		// Without the fields the rule is off.
		f := newFake(t, nil, errors.New("dial tcp: connection refused"))
		if err := f.CmdAdd(cmdArgs(withPrev(t, `,"exclude_namespaces":[]`), "/ns", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=shunt-cni-x7k2p")); err == nil {
			t.Error("an agent-looking pod passed without agent_namespace and agent_pod_prefix")
		}
	})
	t.Run("bad annotation", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{meshpod.AnnotationExcludeOutboundPorts: "http"}), nil)
		err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs))
		var e *types.Error
		if !errors.As(err, &e) || !strings.Contains(e.Msg, "shop/cart-1") ||
			!strings.Contains(e.Details, meshpod.AnnotationExcludeOutboundPorts) || !strings.Contains(e.Details, `"http"`) {
			t.Errorf("error %+v, want the pod, the annotation and the value", err)
		}
		if f.applied() != nil {
			t.Error("rules applied for an invalid pod")
		}
	})
	t.Run("programming fails", func(t *testing.T) {
		f := newFake(t, meshedPod(nil), nil)
		f.backends.Errors = map[string]error{"Apply": errors.New("iptables-restore: exit 4")}
		err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs))
		if err == nil || !strings.Contains(err.Error(), "shop/cart-1") {
			t.Errorf("error %v, want one naming the pod", err)
		}
	})
	t.Run("not chained", func(t *testing.T) {
		f := newFake(t, meshedPod(nil), nil)
		err := f.CmdAdd(cmdArgs(netConf(t, ""), "/ns", podArgs))
		if cniCode(t, err) != types.ErrInvalidNetworkConfig {
			t.Errorf("error %v", err)
		}
	})
}

// TestAddEBPF: a pod annotated shunt.io/mode: ebpf gets its iptables rules and joins the node's eBPF
// agent with its settings; a node that cannot take it leaves the pod on iptables, captured, with a
// warning; a bad value fails closed naming the annotation.
func TestAddEBPF(t *testing.T) {
	t.Run("joins", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{AnnotationMode: "ebpf", meshpod.AnnotationExcludeOutboundPorts: "9000"}), nil)
		if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/var/run/netns/x", podArgs)); err != nil {
			t.Fatal(err)
		}
		if f.applied() == nil || len(f.joined) != 1 {
			t.Fatalf("applied=%v joined=%d, want the rules and one join", f.applied() != nil, len(f.joined))
		}
		j := f.joined[0]
		if j.NetNS != "/var/run/netns/x" || !j.SockMsg || !slices.Equal(j.Config.OutboundPortsExclude, []uint16{9000}) || len(j.IPs) != 2 {
			t.Errorf("joined %+v, want the netns, sk_msg, the pod's exclusions and its two IPs", j)
		}
	})
	t.Run("sk_msg opt-out", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{AnnotationMode: "ebpf", AnnotationEBPFSockMsg: "false"}), nil)
		if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs)); err != nil {
			t.Fatal(err)
		}
		if len(f.joined) != 1 || f.joined[0].SockMsg {
			t.Errorf("joined %+v, want one join without sk_msg", f.joined)
		}
	})
	t.Run("iptables pods do not join", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{AnnotationMode: "iptables"}), nil)
		if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs)); err != nil {
			t.Fatal(err)
		}
		if len(f.joined) != 0 {
			t.Errorf("joined %+v", f.joined)
		}
	})
	t.Run("falls back to iptables", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{AnnotationMode: "ebpf"}), nil)
		f.joinErr = errors.New("eBPF agent not loaded")
		var log strings.Builder
		f.Logger = slog.New(slog.NewTextHandler(&log, nil))
		if err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs)); err != nil {
			t.Fatalf("ADD = %v, want success on iptables", err)
		}
		if f.applied() == nil || !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "not loaded") {
			t.Errorf("applied=%v, log:\n%s\nwant the rules and a warning with the cause", f.applied() != nil, log.String())
		}
	})
	t.Run("bad values", func(t *testing.T) {
		f := newFake(t, meshedPod(map[string]string{AnnotationMode: "bpf", AnnotationEBPFSockMsg: "maybe"}), nil)
		err := f.CmdAdd(cmdArgs(withPrev(t, ""), "/ns", podArgs))
		var e *types.Error
		if !errors.As(err, &e) || !strings.Contains(e.Details, AnnotationMode) || !strings.Contains(e.Details, `"bpf"`) ||
			!strings.Contains(e.Details, AnnotationEBPFSockMsg) || !strings.Contains(e.Details, `"maybe"`) {
			t.Errorf("error %+v, want both annotations and values named", err)
		}
		if f.applied() != nil || len(f.joined) != 0 {
			t.Error("a pod with bad settings was programmed")
		}
	})
}

func TestCheckNamesDifference(t *testing.T) {
	f := newFake(t, meshedPod(nil), nil)
	f.backends.Errors = map[string]error{"Check": errors.New("nat/ISTIO_OUTPUT: rule missing: -A ISTIO_OUTPUT -j ISTIO_REDIRECT")}
	err := f.CmdCheck(cmdArgs(withPrev(t, ""), "/ns", podArgs))
	if err == nil || !strings.Contains(err.Error(), "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Errorf("CHECK error %v, want the difference", err)
	}
}

func TestDel(t *testing.T) {
	f := newFake(t, nil, nil)
	gone := filepath.Join(t.TempDir(), "gone")
	for i := 0; i < 2; i++ {
		if err := f.CmdDel(cmdArgs(netConf(t, ""), gone, podArgs)); err != nil {
			t.Fatalf("DEL %d of a gone namespace: %v", i, err)
		}
	}
	if _, cleaned := f.backends.Last("Cleanup"); cleaned {
		t.Error("cleanup ran for a namespace that is gone")
	}
	here := filepath.Join(t.TempDir(), "here")
	if err := os.WriteFile(here, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := f.CmdDel(cmdArgs(netConf(t, ""), here, podArgs))
	if c, cleaned := f.backends.Last("Cleanup"); err != nil || !cleaned || c.Scope.NetNS != here || c.Scope.NativeNFTables || c.Scope.IptablesVariant != "" {
		t.Errorf("DEL: err=%v cleaned=%v scope=%+v, want every backend of %s cleaned", err, cleaned, c.Scope, here)
	}
	if !slices.Equal(f.left, []string{here}) {
		t.Errorf("left the eBPF agent for %q, want only the existing namespace", f.left)
	}
}

// TestPodRecords: ADD records the pod it programs (namespace, settings, backend) for the node agent; an
// ADD that skips the sandbox, DEL and GC (for sandboxes not among the valid attachments) remove it.
func TestPodRecords(t *testing.T) {
	store := podstate.Store{Dir: t.TempDir()}
	withStore := `,"state_dir":"` + store.Dir + `"`
	pod := meshedPod(map[string]string{meshpod.AnnotationExcludeOutboundPorts: "9000"})
	f := newFake(t, pod, nil)
	if err := f.CmdAdd(cmdArgs(withPrev(t, withStore), "/var/run/netns/x", podArgs)); err != nil {
		t.Fatal(err)
	}
	rec, err := store.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.NetNS != "/var/run/netns/x" || rec.Pod() != "shop/cart-1" || rec.UID != "u1" || rec.Backend != "iptables-nft" ||
		!slices.Equal(rec.Config.OutboundPortsExclude, []uint16{9000}) {
		t.Errorf("record %+v, want the pod, its namespace, backend and settings", rec)
	}

	pod.Metadata.Annotations[meshpod.AnnotationInject] = "false"
	if err := f.CmdAdd(cmdArgs(withPrev(t, withStore), "/var/run/netns/x", podArgs)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get("c1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("record after an ADD that skipped the pod: %v, want none", err)
	}

	delete(pod.Metadata.Annotations, meshpod.AnnotationInject)
	for _, id := range []string{"c1", "c2"} {
		a := cmdArgs(withPrev(t, withStore), "/var/run/netns/"+id, podArgs)
		a.ContainerID = id
		if err := f.CmdAdd(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.CmdDel(cmdArgs(netConf(t, withStore), "", podArgs)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get("c1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("record after DEL: %v, want none", err)
	}
	gc := netConf(t, withStore+`,"cni.dev/valid-attachments":[{"containerID":"c3","ifname":"eth0"}]`)
	if err := f.CmdGC(&skel.CmdArgs{StdinData: gc}); err != nil {
		t.Fatal(err)
	}
	if recs, err := store.List(); err != nil || len(recs) != 0 {
		t.Errorf("records after GC: %+v, %v; want none (c2 is not a valid attachment)", recs, err)
	}
}

func TestStatus(t *testing.T) {
	var p Plugin
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	err := p.CmdStatus(cmdArgs(netConf(t, `,"kubeconfig":"`+missing+`"`), "", ""))
	if cniCode(t, err) != errPluginNotAvailable {
		t.Errorf("STATUS with a missing kubeconfig: %v", err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(t, kc, "https://127.0.0.1:1")
	if err := p.CmdStatus(cmdArgs(netConf(t, `,"kubeconfig":"`+kc+`"`), "", "")); err != nil {
		t.Errorf("STATUS with a kubeconfig: %v", err)
	}
	if err := p.CmdGC(cmdArgs(netConf(t, ""), "", "")); err != nil {
		t.Errorf("GC: %v", err)
	}
}

func writeKubeconfig(t *testing.T, path, server string) {
	t.Helper()
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestParseNetConfErrorsNameFields(t *testing.T) {
	_, err := ParseNetConf([]byte(`{"cniVersion":"1.0.0","name":"k","type":"shunt-cni","api_timeout":"soon",
		"iptables_variant":"ebtables","log_level":"loud","exclude_namespaces":[""]}`))
	for _, want := range []string{`api_timeout: invalid value "soon"`, `iptables_variant: invalid value "ebtables"`, `log_level: invalid value "loud"`, `exclude_namespaces: invalid value ""`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.0.0","name":"k","type":"shunt-cni"}`))
	if err != nil || c.Timeout() != DefaultAPITimeout || len(c.ExcludeNamespaces) != 1 || c.Kubeconfig != DefaultKubeconfig {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	c, err = ParseNetConf([]byte(`{"cniVersion":"1.0.0","name":"k","type":"shunt-cni","exclude_namespaces":[]}`))
	if err != nil || len(c.ExcludeNamespaces) != 0 {
		t.Errorf("explicit empty exclude_namespaces: %+v, %v", c.ExcludeNamespaces, err)
	}
}

func TestGetPodFromAPIRetries(t *testing.T) {
	var calls atomic.Int32
	var hung atomic.Bool
	pod := meshedPod(nil)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch {
		case r.URL.Path == "/api/v1/namespaces/shop/pods/missing":
			http.Error(w, `{"kind":"Status","message":"pods \"missing\" not found"}`, http.StatusNotFound)
		case r.URL.Path == "/api/v1/namespaces/shop/pods/slow":
			<-r.Context().Done()
		case r.URL.Path == "/api/v1/namespaces/shop/pods/hangs-once" && hung.CompareAndSwap(false, true):
			<-r.Context().Done() // the first request only: a dead connection, an overloaded replica
		case n <= 2:
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
		default:
			if r.Header.Get("Authorization") != "Bearer secret" {
				t.Errorf("no bearer token: %q", r.Header.Get("Authorization"))
			}
			_ = json.NewEncoder(w).Encode(pod)
		}
	}))
	defer srv.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	writeKubeconfig(t, kc, srv.URL)
	conf := &NetConf{Kubeconfig: kc}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := getPodFromAPI(ctx, conf, "shop", "cart-1")
	if err != nil || got.Metadata.Name != "cart-1" || calls.Load() != 3 {
		t.Fatalf("got %v, %v after %d calls; want the pod on the third", got, err, calls.Load())
	}

	calls.Store(10)
	_, err = getPodFromAPI(ctx, conf, "shop", "missing")
	if err == nil || !strings.Contains(err.Error(), "404") || calls.Load() != 11 {
		t.Errorf("missing pod: %v after %d calls, want one 404", err, calls.Load()-10)
	}

	// One hung request does not use up a short api_timeout: the attempt gets half of it, and the
	// retry finds the pod.
	calls.Store(10)
	budget, cancel3 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel3()
	if got, err := getPodFromAPI(budget, conf, "shop", "hangs-once"); err != nil || got == nil || calls.Load() != 12 {
		t.Errorf("a hung first request within a 2s budget: %v after %d calls, want the pod on the second", err, calls.Load()-10)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = getPodFromAPI(short, conf, "shop", "slow")
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung API server: %v, want the deadline", err)
	}
}

func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"k","type":"shunt-cni","api_timeout":"5s","exclude_namespaces":["a"]}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"k","type":"shunt-cni","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}}`))
	f.Add([]byte(`{"prevResult":{"ips":[{"address":"10.0.0.1/24"}]},"iptables_variant":"legacy"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseNetConf(data)
		if err != nil {
			return
		}
		if c.Timeout() <= 0 || c.Kubeconfig == "" || c.LogFile == "" {
			t.Errorf("accepted configuration without defaults: %+v", c)
		}
		if _, err := ParseLogLevel(c.LogLevel); err != nil {
			t.Errorf("accepted log_level %q", c.LogLevel)
		}
	})
}

// fakeAgent is the node agent's socket, served by handler; it counts the requests.
type fakeAgent struct {
	socket string
	calls  atomic.Int32
}

func startFakeAgent(t *testing.T, handler http.HandlerFunc) *fakeAgent {
	t.Helper()
	a := &fakeAgent{socket: filepath.Join(t.TempDir(), "agent.sock")}
	ln, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.calls.Add(1)
		handler(w, r)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return a
}

// startFakeAPI is an API server that serves pod, counting the requests.
func startFakeAPI(t *testing.T, pod *Pod) (kubeconfig string, calls *atomic.Int32) {
	t.Helper()
	calls = new(atomic.Int32)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if ua := r.Header.Get("User-Agent"); ua != PluginType {
			t.Errorf("API request with user agent %q", ua)
		}
		_ = json.NewEncoder(w).Encode(pod)
	}))
	t.Cleanup(srv.Close)
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	writeKubeconfig(t, kubeconfig, srv.URL)
	return kubeconfig, calls
}

// TestReadPodFromAgent: the plugin asks the node agent first and takes any answer of it — the pod,
// a 404, a 5xx it retries until api_timeout — and asks the API server only when the agent cannot be
// reached: no socket, nobody listening, no answer within AgentTimeout, or no agent_socket.
func TestReadPodFromAgent(t *testing.T) {
	pod := meshedPod(nil)
	servePod := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/pods/shop/cart-1" || r.URL.Query().Get("uid") != "u1" {
			t.Errorf("agent asked %s", r.URL)
		}
		_ = json.NewEncoder(w).Encode(pod)
	}
	var flaky atomic.Int32
	refused := filepath.Join(t.TempDir(), "refused.sock")
	ln, err := net.Listen("unix", refused)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the socket file stays, nobody listens: an agent that was killed
	for _, tt := range []struct {
		name       string
		agent      http.HandlerFunc // nil: socket given by socket
		socket     string
		timeout    time.Duration
		wantSource string
		wantErr    string
		wantAPI    int32
		wantAgent  int32
	}{
		{name: "served", agent: servePod, wantSource: PodSourceAgent, wantAgent: 1},
		{name: "not found", agent: func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"kind":"Status","message":"pods \"cart-1\" not found"}`, http.StatusNotFound)
		}, wantSource: PodSourceAgent, wantErr: `answered 404 Not Found: pods "cart-1" not found`, wantAgent: 1},
		{name: "unavailable then served", agent: func(w http.ResponseWriter, r *http.Request) {
			if flaky.Add(1) <= 2 {
				http.Error(w, `{"message":"API server: timeout"}`, http.StatusServiceUnavailable)
				return
			}
			servePod(w, r)
		}, wantSource: PodSourceAgent, wantAgent: 3},
		{name: "unavailable until the deadline", agent: func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"message":"API server: connection refused"}`, http.StatusServiceUnavailable)
		}, timeout: 500 * time.Millisecond, wantSource: PodSourceAgent, wantErr: "API server: connection refused", wantAgent: 3},
		{name: "hung agent", agent: func(_ http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, wantSource: PodSourceAPI, wantAPI: 1, wantAgent: 1},
		{name: "no socket", socket: filepath.Join(t.TempDir(), "missing.sock"), wantSource: PodSourceAPI, wantAPI: 1},
		{name: "connection refused", socket: refused, wantSource: PodSourceAPI, wantAPI: 1},
		{name: "no agent_socket", socket: "", wantSource: PodSourceAPI, wantAPI: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kc, apiCalls := startFakeAPI(t, pod)
			conf := &NetConf{Kubeconfig: kc, AgentSocket: tt.socket}
			var agent *fakeAgent
			if tt.agent != nil {
				agent = startFakeAgent(t, tt.agent)
				conf.AgentSocket = agent.socket
			}
			timeout := cmp.Or(tt.timeout, 10*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			got, source, err := readPod(ctx, conf, "shop", "cart-1", "u1")
			switch {
			case tt.wantErr == "" && (err != nil || got == nil || got.Metadata.Name != "cart-1"):
				t.Errorf("got %v, %v; want the pod", got, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
			if source != tt.wantSource {
				t.Errorf("source %q, want %q", source, tt.wantSource)
			}
			if n := apiCalls.Load(); n != tt.wantAPI {
				t.Errorf("%d API requests, want %d", n, tt.wantAPI)
			}
			if agent != nil && agent.calls.Load() != tt.wantAgent {
				t.Errorf("%d agent requests, want %d", agent.calls.Load(), tt.wantAgent)
			}
		})
	}
}

// TestAddThroughAgent: an ADD reads its pod from the agent, with no API request, and its report says
// so; with the agent's 404 it fails closed without asking the API server.
func TestAddThroughAgent(t *testing.T) {
	pod := meshedPod(nil)
	reports := filepath.Join(t.TempDir(), "reports.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: reports, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readReport := func() Report {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64<<10)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		var r Report
		if err := json.Unmarshal(buf[:n], &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	found := true
	agent := startFakeAgent(t, func(w http.ResponseWriter, _ *http.Request) {
		if !found {
			http.Error(w, `{"message":"pods \"cart-1\" not found"}`, http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(pod)
	})
	kc, apiCalls := startFakeAPI(t, pod)
	extra := `,"kubeconfig":"` + kc + `","agent_socket":"` + agent.socket + `","report_socket":"` + reports + `"`

	f := newFake(t, nil, nil)
	f.GetPod = nil
	if err := f.CmdAdd(cmdArgs(withPrev(t, extra), "/ns", podArgs)); err != nil {
		t.Fatal(err)
	}
	if r := readReport(); r.Outcome != OutcomeProgrammed || r.PodSource != PodSourceAgent || r.APISeconds <= 0 {
		t.Errorf("report %+v, want programmed with the pod from the agent", r)
	}
	found = false
	err = f.CmdAdd(cmdArgs(withPrev(t, extra), "/ns", podArgs))
	if cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "from the node agent") {
		t.Errorf("error %v, want try-again from the node agent", err)
	}
	if r := readReport(); r.Outcome != OutcomeFailed || r.PodSource != PodSourceAgent {
		t.Errorf("report %+v, want failed with the agent's answer", r)
	}
	if apiCalls.Load() != 0 || agent.calls.Load() != 2 {
		t.Errorf("%d API and %d agent requests, want 0 and 2", apiCalls.Load(), agent.calls.Load())
	}
}

func TestParseNetConfAgentSocket(t *testing.T) {
	for conf, want := range map[string]string{
		`{}`:                                 DefaultAgentSocket,
		`{"agent_socket":""}`:                "",
		`{"agent_socket":"/run/agent.sock"}`: "/run/agent.sock",
	} {
		c, err := ParseNetConf([]byte(conf))
		if err != nil || c.AgentSocket != want {
			t.Errorf("%s: agent socket %q (%v), want %q", conf, c.AgentSocket, err, want)
		}
	}
	if _, err := ParseNetConf([]byte(`{"agent_socket":"agent.sock"}`)); err == nil || !strings.Contains(err.Error(), "agent_socket") {
		t.Errorf("relative agent_socket: %v, want an error naming it", err)
	}
}
