// Package cni is shunt's CNI plugin: it programs a meshed pod's capture rules from the node, as
// istio-cni does, so that app pods need no privileged init container.
package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/shuntmesh/shunt/redirect"
)

// Annotations and names the plugin reads, as Istio spells them.
const (
	AnnotationStatus               = "sidecar.istio.io/status"
	AnnotationInject               = "sidecar.istio.io/inject"
	LabelInject                    = "sidecar.istio.io/inject"
	AnnotationInterceptionMode     = "sidecar.istio.io/interceptionMode"
	AnnotationIncludeOutboundCIDRs = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	AnnotationExcludeOutboundCIDRs = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	AnnotationIncludeInboundPorts  = "traffic.sidecar.istio.io/includeInboundPorts"
	AnnotationExcludeInboundPorts  = "traffic.sidecar.istio.io/excludeInboundPorts"
	AnnotationIncludeOutboundPorts = "traffic.sidecar.istio.io/includeOutboundPorts"
	AnnotationExcludeOutboundPorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
	AnnotationExcludeInterfaces    = "traffic.sidecar.istio.io/excludeInterfaces"
	AnnotationKubevirtInterfaces   = "traffic.sidecar.istio.io/kubevirtInterfaces"
	AnnotationRerouteVirtualIfaces = "istio.io/reroute-virtual-interfaces"

	// AnnotationMode chooses the data path: "iptables" (the default) or "ebpf", where the node's eBPF
	// agent redirects the app's connections and splices the loopback legs, and the iptables rules stay
	// for inbound capture and as the safety net.
	AnnotationMode = "shunt.io/mode"
	// AnnotationEBPFSockMsg "false" keeps an eBPF pod's connect and getsockopt redirection but not the
	// sk_msg splicing of its loopback sockets (for receivers that read with splice(2)).
	AnnotationEBPFSockMsg = "shunt.io/ebpf-sk-msg"

	ProxyContainerName = "istio-proxy"
	InitContainerName  = "istio-init"
)

// agentPorts are always excluded inbound: the agent (15020), health (15021) and Envoy metrics (15090).
var agentPorts = []uint16{15020, 15021, 15090}

// Pod holds the fields of a Kubernetes Pod that decide its capture rules. It is decoded from the Pod's
// JSON or YAML; other fields are ignored. (A small type of our own rather than k8s.io/api's keeps the
// init-container binary's start-up lean.)
type Pod struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork    bool        `json:"hostNetwork"`
		Containers     []Container `json:"containers"`
		InitContainers []Container `json:"initContainers"`
	} `json:"spec"`
	Status struct {
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
	} `json:"status"`
}

// Container is the part of a container the plugin reads.
type Container struct {
	Name string `json:"name"`
	Env  []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	SecurityContext *struct {
		RunAsUser  *int64 `json:"runAsUser"`
		RunAsGroup *int64 `json:"runAsGroup"`
	} `json:"securityContext"`
}

// DecodePod parses a Pod manifest, YAML or JSON.
func DecodePod(data []byte) (*Pod, error) {
	var pod Pod
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return nil, fmt.Errorf("decode Pod: %w", err)
	}
	if pod.Kind != "" && pod.Kind != "Pod" {
		return nil, fmt.Errorf("decode Pod: kind is %q, want Pod", pod.Kind)
	}
	return &pod, nil
}

// ConfigForPod returns the capture settings of a pod, read as istio-cni reads them: the
// traffic.sidecar.istio.io/* annotations, the interception mode, the istio-proxy container's
// runAsUser/runAsGroup and its ISTIO_META_DNS_CAPTURE, INVALID_DROP and ISTIO_DUAL_STACK variables.
// podIPs are the pod's addresses (from the CNI result); when nil, status.podIPs is used. IPv6 rules
// are planned when the pod has an IPv6 address.
//
// When the pod is not to be captured, skip says why and the Config is empty.
func ConfigForPod(pod *Pod, podIPs []netip.Addr) (cfg redirect.Config, skip string, err error) {
	if skip := skipReason(pod); skip != "" {
		return redirect.Config{}, skip, nil
	}
	proxy := proxyContainer(pod)
	cfg = redirect.DefaultConfig()
	ann := pod.Metadata.Annotations
	var errs []error
	bad := func(key, value string, err error) {
		if err != nil {
			errs = append(errs, &redirect.FieldError{Field: "annotation " + key, Value: value, Err: err})
		}
	}
	get := func(key, def string) string {
		if v, ok := ann[key]; ok {
			return v
		}
		return def
	}

	if v, ok := ann[AnnotationInterceptionMode]; ok {
		cfg.Mode, err = redirect.ParseMode(v)
		bad(AnnotationInterceptionMode, v, err)
	}
	if sc := proxy.SecurityContext; sc != nil {
		if sc.RunAsUser != nil && *sc.RunAsUser != 0 {
			cfg.ProxyUIDs = []uint32{uint32(*sc.RunAsUser)}
			if *sc.RunAsUser < 0 || *sc.RunAsUser >= int64(redirect.InvalidID) {
				bad("container istio-proxy securityContext.runAsUser", fmt.Sprint(*sc.RunAsUser), errors.New("not a valid uid"))
			}
		}
		if sc.RunAsGroup != nil && *sc.RunAsGroup != 0 {
			cfg.ProxyGIDs = []uint32{uint32(*sc.RunAsGroup)}
			if *sc.RunAsGroup < 0 || *sc.RunAsGroup >= int64(redirect.InvalidID) {
				bad("container istio-proxy securityContext.runAsGroup", fmt.Sprint(*sc.RunAsGroup), errors.New("not a valid gid"))
			}
		}
	}

	v := get(AnnotationIncludeOutboundCIDRs, "*")
	cfg.OutboundIPRanges, err = redirect.ParsePrefixList(v)
	bad(AnnotationIncludeOutboundCIDRs, v, err)
	v = get(AnnotationExcludeOutboundCIDRs, "")
	cfg.OutboundIPRangesExclude, err = redirect.ParsePrefixes(v)
	bad(AnnotationExcludeOutboundCIDRs, v, err)
	v = get(AnnotationIncludeInboundPorts, "*")
	cfg.InboundPorts, err = redirect.ParsePortList(v)
	bad(AnnotationIncludeInboundPorts, v, err)
	v = get(AnnotationExcludeInboundPorts, "")
	exclude, err := redirect.ParsePorts(v)
	bad(AnnotationExcludeInboundPorts, v, err)
	cfg.InboundPortsExclude = dedup(append(exclude, agentPorts...))
	v = get(AnnotationIncludeOutboundPorts, "")
	cfg.OutboundPorts, err = redirect.ParsePorts(v)
	bad(AnnotationIncludeOutboundPorts, v, err)
	v = get(AnnotationExcludeOutboundPorts, "15020")
	cfg.OutboundPortsExclude, err = redirect.ParsePorts(v)
	bad(AnnotationExcludeOutboundPorts, v, err)
	v = get(AnnotationExcludeInterfaces, "")
	cfg.ExcludeInterfaces, err = redirect.ParseInterfaces(v)
	bad(AnnotationExcludeInterfaces, v, err)
	// The deprecated kubevirtInterfaces counts only when reroute-virtual-interfaces is absent.
	key := AnnotationRerouteVirtualIfaces
	if _, ok := ann[key]; !ok {
		key = AnnotationKubevirtInterfaces
	}
	v = get(key, "")
	cfg.KubeVirtInterfaces, err = redirect.ParseInterfaces(v)
	bad(key, v, err)

	envBool := func(name string) bool {
		for _, e := range proxy.Env {
			if e.Name == name {
				b, err := redirect.ParseBool(e.Value)
				if err != nil {
					errs = append(errs, &redirect.FieldError{Field: "container istio-proxy env " + name, Value: e.Value, Err: err})
				}
				return b
			}
		}
		return false
	}
	cfg.RedirectDNS = envBool("ISTIO_META_DNS_CAPTURE")
	cfg.CaptureAllDNS = cfg.RedirectDNS
	cfg.DropInvalid = envBool("INVALID_DROP")
	envBool("ISTIO_DUAL_STACK") // validated; the families come from the pod's IPs

	if podIPs == nil {
		for _, ip := range pod.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				errs = append(errs, &redirect.FieldError{Field: "status.podIPs", Value: ip.IP, Err: errors.New("not an IP address")})
				continue
			}
			podIPs = append(podIPs, a)
		}
	}
	cfg.IPv6 = slices.ContainsFunc(podIPs, func(a netip.Addr) bool { return a.Unmap().Is6() })

	if len(errs) == 0 {
		errs = append(errs, cfg.Validate())
	}
	if err := errors.Join(errs...); err != nil {
		return redirect.Config{}, "", err
	}
	return cfg, "", nil
}

// DataPath is how a captured pod's outbound traffic reaches its proxy.
type DataPath struct {
	EBPF    bool // the node's eBPF agent redirects connections (shunt.io/mode: ebpf)
	SockMsg bool // with EBPF: loopback sockets are spliced with sk_msg
}

// DataPathForPod reads the pod's shunt.io annotations; a bad value is an error naming the annotation.
func DataPathForPod(ann map[string]string) (DataPath, error) {
	var dp DataPath
	var errs []error
	switch v := ann[AnnotationMode]; v {
	case "", "iptables":
	case "ebpf":
		dp.EBPF, dp.SockMsg = true, true
	default:
		errs = append(errs, &redirect.FieldError{Field: "annotation " + AnnotationMode, Value: v, Err: errors.New(`want "iptables" or "ebpf"`)})
	}
	if v, ok := ann[AnnotationEBPFSockMsg]; ok {
		b, err := redirect.ParseBool(v)
		if err != nil {
			errs = append(errs, &redirect.FieldError{Field: "annotation " + AnnotationEBPFSockMsg, Value: v, Err: err})
		}
		dp.SockMsg = dp.EBPF && b
	}
	return dp, errors.Join(errs...)
}

// skipReason says why istio-cni would leave a pod alone, or "" when it captures it.
func skipReason(pod *Pod) string {
	if pod.Spec.HostNetwork {
		return "host network pod"
	}
	if proxyContainer(pod) == nil {
		return "no " + ProxyContainerName + " container"
	}
	if _, ok := pod.Metadata.Annotations[AnnotationStatus]; !ok {
		return "no " + AnnotationStatus + " annotation: not injected"
	}
	inject, ok := pod.Metadata.Labels[LabelInject]
	if !ok {
		inject, ok = pod.Metadata.Annotations[AnnotationInject]
	}
	if ok && strings.EqualFold(inject, "false") {
		return "injection disabled (" + AnnotationInject + ": false)"
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == InitContainerName {
			return "it has an " + InitContainerName + " container that programs the rules"
		}
	}
	for _, e := range proxyContainer(pod).Env {
		if e.Name == "DISABLE_ENVOY" && strings.EqualFold(e.Value, "true") {
			return "DISABLE_ENVOY is true"
		}
	}
	if strings.EqualFold(pod.Metadata.Annotations[AnnotationInterceptionMode], "NONE") {
		return "interception mode NONE"
	}
	return ""
}

func proxyContainer(pod *Pod) *Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == ProxyContainerName {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

func dedup(ports []uint16) []uint16 {
	var out []uint16
	for _, p := range ports {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
