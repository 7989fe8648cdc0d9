package meshpod

import (
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/redirect"
)

const basePod = `
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: ns
  annotations:
    sidecar.istio.io/status: '{}'
spec:
  containers:
  - name: app
    image: app
  - name: istio-proxy
    image: proxy
`

func mustPod(t *testing.T, yaml string) *Pod {
	t.Helper()
	p, err := Decode([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigForPodDefaults(t *testing.T) {
	cfg, skip, err := ConfigForPod(mustPod(t, basePod), nil)
	if err != nil || skip != "" {
		t.Fatalf("ConfigForPod = %q, %v", skip, err)
	}
	if cfg.Mode != redirect.ModeRedirect || !cfg.InboundPorts.All || !cfg.OutboundIPRanges.All || cfg.IPv6 {
		t.Errorf("defaults = %+v", cfg)
	}
	if got := cfg.InboundPortsExclude; len(got) != 3 || got[0] != 15020 || got[2] != 15090 {
		t.Errorf("inbound exclude = %v, want the agent ports 15020,15021,15090", got)
	}
	if got := cfg.OutboundPortsExclude; len(got) != 1 || got[0] != 15020 {
		t.Errorf("outbound exclude = %v, want 15020", got)
	}
}

func TestConfigForPodAnnotations(t *testing.T) {
	pod := mustPod(t, basePod)
	a := pod.Metadata.Annotations
	a[AnnotationInterceptionMode] = "TPROXY"
	a[AnnotationExcludeInboundPorts] = "3333,15020"
	a[AnnotationIncludeOutboundCIDRs] = "10.0.0.0/8"
	a[AnnotationKubevirtInterfaces] = "old0"
	a[AnnotationRerouteVirtualIfaces] = "new0"
	pod.Status.PodIPs = append(pod.Status.PodIPs, struct {
		IP string `json:"ip"`
	}{IP: "fd00::7"})
	cfg, _, err := ConfigForPod(pod, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != redirect.ModeTProxy || !cfg.IPv6 || len(cfg.OutboundIPRanges.Prefixes) != 1 {
		t.Errorf("cfg = %+v", cfg)
	}
	if got := cfg.InboundPortsExclude; len(got) != 4 || got[0] != 3333 {
		t.Errorf("inbound exclude = %v, want 3333 then the deduplicated agent ports", got)
	}
	if len(cfg.KubeVirtInterfaces) != 1 || cfg.KubeVirtInterfaces[0] != "new0" {
		t.Errorf("virtual interfaces = %v, want reroute-virtual-interfaces to win", cfg.KubeVirtInterfaces)
	}
}

func TestConfigForPodErrorsNameTheAnnotation(t *testing.T) {
	pod := mustPod(t, basePod)
	pod.Metadata.Annotations[AnnotationExcludeOutboundCIDRs] = "10.0.0.0/33"
	pod.Metadata.Annotations[AnnotationIncludeInboundPorts] = "80,abc"
	_, _, err := ConfigForPod(pod, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{AnnotationExcludeOutboundCIDRs, "10.0.0.0/33", AnnotationIncludeInboundPorts, "abc"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

func TestSkipReasons(t *testing.T) {
	tests := map[string]func(*Pod){
		"host network":       func(p *Pod) { p.Spec.HostNetwork = true },
		"no istio-proxy":     func(p *Pod) { p.Spec.Containers = p.Spec.Containers[:1] },
		"not injected":       func(p *Pod) { delete(p.Metadata.Annotations, AnnotationStatus) },
		"injection disabled": func(p *Pod) { p.Metadata.Labels = map[string]string{LabelInject: "false"} },
		"istio-init":         func(p *Pod) { p.Spec.InitContainers = []Container{{Name: InitContainerName}} },
		"interception NONE":  func(p *Pod) { p.Metadata.Annotations[AnnotationInterceptionMode] = "NONE" },
		"gateway":            func(p *Pod) { p.Spec.Containers[1].Args = []string{"proxy", "router"} },
		"DISABLE_ENVOY true": func(p *Pod) {
			p.Spec.Containers[1].Env = append(p.Spec.Containers[1].Env, EnvVar{"DISABLE_ENVOY", "true"})
		},
	}
	for name, edit := range tests {
		pod := mustPod(t, basePod)
		edit(pod)
		_, skip, err := ConfigForPod(pod, nil)
		if err != nil || skip == "" {
			t.Errorf("%s: skip = %q, err = %v; want the pod skipped", name, skip, err)
		}
	}
}

func FuzzDecodePod(f *testing.F) {
	f.Add([]byte(basePod))
	f.Add([]byte(`{"kind":"Pod","metadata":{"annotations":{"sidecar.istio.io/status":"x","traffic.sidecar.istio.io/includeInboundPorts":"1,2"}},"spec":{"containers":[{"name":"istio-proxy"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		pod, err := Decode(data)
		if err != nil {
			return
		}
		cfg, skip, err := ConfigForPod(pod, nil)
		if err != nil || skip != "" {
			return
		}
		if _, err := redirect.Build(cfg); err != nil {
			t.Fatalf("ConfigForPod accepted a Config that does not build: %v", err)
		}
	})
}
