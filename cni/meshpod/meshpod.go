// Package meshpod decides, as istio-cni decides, whether a Pod written by Istio's sidecar injector is
// captured and with which settings (docs/cni.md). The CNI plugin and `shunt iptables --pod` share it;
// it links nothing but the engine and a YAML decoder, so the init-container binary can too.
package meshpod

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
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
	Name            string           `json:"name"`
	Args            []string         `json:"args"`
	Env             []EnvVar         `json:"env"`
	SecurityContext *SecurityContext `json:"securityContext"`
}

// EnvVar is a container's environment variable; one set from a field reference has an empty Value.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// SecurityContext is the part of a container's security context the plugin reads.
type SecurityContext struct {
	RunAsUser  *int64 `json:"runAsUser"`
	RunAsGroup *int64 `json:"runAsGroup"`
}

// Decode parses a Pod manifest, YAML or JSON.
func Decode(data []byte) (*Pod, error) {
	var pod Pod
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return nil, fmt.Errorf("decode Pod: %w", err)
	}
	if pod.Kind != "" && pod.Kind != "Pod" {
		return nil, fmt.Errorf("decode Pod: kind is %q, want Pod", pod.Kind)
	}
	return &pod, nil
}

// Decision is the plugin's verdict on one pod: capture it with Config, or leave it alone.
type Decision struct {
	// Skip says why the pod is left alone; "" when it is captured.
	Skip string
	// Config is what the pod is captured with (the zero Config when skipped).
	Config redirect.Config
	// Warnings name values istio-cni ignores too (an unparsable boolean, port 0), which a user should
	// still hear about.
	Warnings []string
}

// ManifestConfig decodes a Pod manifest (YAML or JSON, as `kubectl get pod -o yaml` prints it) and
// returns the Config the CNI plugin would capture it with, passing each warning of Decide to warn. A pod
// the plugin would not capture is an error saying why.
func ManifestConfig(manifest []byte, warn func(string)) (redirect.Config, error) {
	pod, err := Decode(manifest)
	if err != nil {
		return redirect.Config{}, err
	}
	name := pod.Metadata.Namespace + "/" + pod.Metadata.Name
	d, err := Decide(pod, nil)
	for _, w := range d.Warnings {
		warn("pod " + name + ": " + w)
	}
	if err != nil {
		return redirect.Config{}, fmt.Errorf("pod %s: %w", name, err)
	}
	if d.Skip != "" {
		return redirect.Config{}, fmt.Errorf("pod %s is not captured by the CNI plugin: %s", name, d.Skip)
	}
	return d.Config, nil
}

// ConfigForPod is Decide without the warnings.
func ConfigForPod(pod *Pod, podIPs []netip.Addr) (cfg redirect.Config, skip string, err error) {
	d, err := Decide(pod, podIPs)
	return d.Config, d.Skip, err
}

// Decide takes istio-cni's decisions for pod: whether it is captured, and with which settings. The
// rules, in istio-cni's order, are documented in docs/cni.md; in short a pod is captured when it has an
// istio-proxy container (a regular one, or a native sidecar: an init container), the sidecar injector's
// status annotation, no istio-init container, no DISABLE_ENVOY, injection not turned off, and a proxy
// that runs as a sidecar (gateways run `proxy router`). The settings come from the
// traffic.sidecar.istio.io/* annotations, each checked as istio-cni checks it, the proxy's
// runAsUser/runAsGroup and its ISTIO_META_DNS_CAPTURE, INVALID_DROP and ISTIO_DUAL_STACK variables.
//
// podIPs are the pod's addresses (from the CNI result); when nil, status.podIPs is used. IPv6 rules
// are planned as Istio plans them from the pod's addresses: with ISTIO_DUAL_STACK when it has an IPv6
// address, without when its first address is IPv6 (the kernel lists an interface's IPv4 addresses
// first, so an IPv6-only pod).
//
// A value istio-cni refuses is an error naming the annotation, and the pod is not started.
func Decide(pod *Pod, podIPs []netip.Addr) (Decision, error) {
	facts := readProxy(pod)
	var d Decision
	warn := func(format string, args ...any) { d.Warnings = append(d.Warnings, fmt.Sprintf(format, args...)) }
	if d.Skip = skipReason(pod, &facts, warn); d.Skip != "" {
		return d, nil
	}
	cfg := redirect.DefaultConfig()
	ann := pod.Metadata.Annotations
	var errs []error
	bad := func(key, value string, err error) {
		if err != nil {
			errs = append(errs, &redirect.FieldError{Field: "annotation " + key, Value: value, Err: err})
		}
	}
	// get returns the annotation, or def when it is absent, after istio-cni's check of its syntax;
	// ok is false when that check fails (the error is recorded).
	get := func(key, def string, check func(string) error) (string, bool) {
		v, found := ann[key]
		if !found {
			return def, true
		}
		if err := check(v); err != nil {
			bad(key, v, err)
			return "", false
		}
		return v, true
	}

	if v, ok := get(AnnotationInterceptionMode, string(redirect.ModeRedirect), checkIstioMode); ok {
		cfg.Mode = redirect.Mode(v)
	}
	// A runAsUser or runAsGroup of 0 (TPROXY runs the proxy as root) or none means 1337, as in
	// istio-cni: the injector then sets the proxy's group to 1337.
	if facts.uid != nil && *facts.uid != 0 {
		cfg.ProxyUIDs = []uint32{uint32(*facts.uid)}
		if *facts.uid < 0 || *facts.uid >= int64(redirect.InvalidID) {
			bad("container istio-proxy securityContext.runAsUser", fmt.Sprint(*facts.uid), errors.New("not a valid uid"))
		}
	}
	if facts.gid != nil && *facts.gid != 0 {
		cfg.ProxyGIDs = []uint32{uint32(*facts.gid)}
		if *facts.gid < 0 || *facts.gid >= int64(redirect.InvalidID) {
			bad("container istio-proxy securityContext.runAsGroup", fmt.Sprint(*facts.gid), errors.New("not a valid gid"))
		}
	}

	var err error
	if v, ok := get(AnnotationIncludeOutboundCIDRs, "*", checkIstioCIDRs(true)); ok {
		cfg.OutboundIPRanges, err = redirect.ParsePrefixList(v)
		bad(AnnotationIncludeOutboundCIDRs, v, err)
	}
	if v, ok := get(AnnotationExcludeOutboundCIDRs, "", checkIstioCIDRs(false)); ok {
		cfg.OutboundIPRangesExclude, err = redirect.ParsePrefixes(v)
		bad(AnnotationExcludeOutboundCIDRs, v, err)
	}
	if v, ok := get(AnnotationIncludeInboundPorts, "*", checkIstioPorts); ok {
		cfg.InboundPorts, err = redirect.ParsePortList(dropPortZero(AnnotationIncludeInboundPorts, v, warn))
		bad(AnnotationIncludeInboundPorts, v, err)
	}
	// istio-cni's default for both exclude lists is the agent's port, 15020; inbound it always adds
	// the agent, health and Envoy metrics ports.
	if v, ok := get(AnnotationExcludeInboundPorts, "15020", checkIstioPorts); ok {
		exclude, err := redirect.ParsePorts(dropPortZero(AnnotationExcludeInboundPorts, v, warn))
		bad(AnnotationExcludeInboundPorts, v, err)
		cfg.InboundPortsExclude = dedup(append(exclude, agentPorts...))
	}
	if v, ok := get(AnnotationIncludeOutboundPorts, "", checkIstioPorts); ok {
		cfg.OutboundPorts, err = redirect.ParsePorts(dropPortZero(AnnotationIncludeOutboundPorts, v, warn))
		bad(AnnotationIncludeOutboundPorts, v, err)
	}
	if v, ok := get(AnnotationExcludeOutboundPorts, "15020", checkIstioPorts); ok {
		cfg.OutboundPortsExclude, err = redirect.ParsePorts(dropPortZero(AnnotationExcludeOutboundPorts, v, warn))
		bad(AnnotationExcludeOutboundPorts, v, err)
	}
	if v, ok := get(AnnotationExcludeInterfaces, "", checkIstioInterfaces); ok {
		cfg.ExcludeInterfaces, err = redirect.ParseInterfaces(v)
		bad(AnnotationExcludeInterfaces, v, err)
	}
	// The deprecated kubevirtInterfaces counts only when reroute-virtual-interfaces is absent.
	key := AnnotationRerouteVirtualIfaces
	if _, ok := ann[key]; !ok {
		key = AnnotationKubevirtInterfaces
	}
	if v, ok := get(key, "", checkIstioInterfaces); ok {
		cfg.KubeVirtInterfaces, err = redirect.ParseInterfaces(v)
		bad(key, v, err)
	}

	// The proxy's variables: a value that is not a boolean counts as false, as in istio-cni (and in
	// the agent, which then runs no DNS proxy), with a warning.
	envBool := func(name string) bool {
		v, ok := facts.env[name]
		if !ok {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			warn("container istio-proxy env %s=%q is not a boolean: taken as false", name, v)
		}
		return b
	}
	cfg.RedirectDNS = envBool("ISTIO_META_DNS_CAPTURE")
	cfg.CaptureAllDNS = cfg.RedirectDNS
	cfg.DropInvalid = envBool("INVALID_DROP")
	dualStack := envBool("ISTIO_DUAL_STACK")

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
	cfg.IPv6 = ipv6ForPod(podIPs, dualStack)

	if len(errs) == 0 {
		errs = append(errs, cfg.Validate())
	}
	if err := errors.Join(errs...); err != nil {
		return Decision{Warnings: d.Warnings}, err
	}
	d.Config = cfg
	return d, nil
}

// ipv6ForPod says whether Istio programs IPv6 for a pod with these addresses: it looks at the pod's
// first global address, or with dual stack at any.
func ipv6ForPod(ips []netip.Addr, dualStack bool) bool {
	var v4, v6 bool
	for _, a := range ips {
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			continue
		}
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	if dualStack {
		return v6
	}
	return v6 && !v4
}

// dropPortZero removes port 0 from a port list istio-cni accepted: Istio programs a rule for it that
// matches no connection, shunt programs none and warns.
func dropPortZero(key, v string, warn func(string, ...any)) string {
	items := strings.Split(v, ",")
	kept := items[:0]
	for _, item := range items {
		if n, err := strconv.ParseUint(strings.TrimSpace(item), 10, 16); err == nil && n == 0 {
			warn("annotation %s: port 0 matches no connection and is ignored", key)
			continue
		}
		kept = append(kept, item)
	}
	return strings.Join(kept, ",")
}

// proxyFacts is what istio-cni reads of the pod's istio-proxy containers. A native sidecar is an init
// container named istio-proxy; istio-cni looks at init containers first, then regular ones, and a
// later container's values win.
type proxyFacts struct {
	found      bool              // a container named istio-proxy exists
	proxyType  string            // the second argument after "proxy": sidecar, router, …
	env        map[string]string // its environment (the last value of a name wins)
	uid, gid   *int64            // its runAsUser, runAsGroup
	containers map[string]bool   // the names of every container, init or regular
}

func readProxy(pod *Pod) proxyFacts {
	f := proxyFacts{env: map[string]string{}, containers: map[string]bool{}}
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for _, c := range all {
		f.containers[c.Name] = true
		if c.Name != ProxyContainerName {
			continue
		}
		f.found = true
		for _, e := range c.Env {
			f.env[e.Name] = e.Value
		}
		if len(c.Args) >= 2 && c.Args[0] == "proxy" {
			f.proxyType = c.Args[1]
		}
		if c.SecurityContext != nil {
			f.uid, f.gid = c.SecurityContext.RunAsUser, c.SecurityContext.RunAsGroup
		}
	}
	return f
}

// skipReason says why istio-cni would leave a pod alone, or "" when it captures it. The checks are
// istio-cni's, in its order; hostNetwork (the runtime never calls CNI plugins for such a pod) and
// interception mode NONE (istio-cni refuses the pod) are shunt's, see docs/cni.md.
func skipReason(pod *Pod, f *proxyFacts, warn func(string, ...any)) string {
	ann := pod.Metadata.Annotations
	if pod.Spec.HostNetwork {
		return "host network pod"
	}
	if f.containers[InitContainerName] {
		return "it has an " + InitContainerName + " container that programs the rules"
	}
	if v, ok := f.env["DISABLE_ENVOY"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			warn("container istio-proxy env DISABLE_ENVOY=%q is not a boolean: taken as false", v)
		}
		if b {
			return "DISABLE_ENVOY is true on " + ProxyContainerName
		}
	}
	if !f.found {
		return "no " + ProxyContainerName + " container"
	}
	if f.proxyType != "" && f.proxyType != "sidecar" {
		return ProxyContainerName + " runs as " + f.proxyType + " (a gateway), not as a sidecar"
	}
	// The label is the newer API and wins when both are set, even when empty.
	inject, from := ann[AnnotationInject], "annotation"
	if v, ok := pod.Metadata.Labels[LabelInject]; ok {
		inject, from = v, "label"
	}
	if inject != "" {
		b, err := strconv.ParseBool(inject)
		if err != nil {
			warn("%s %s=%q is not a boolean: ignored", from, AnnotationInject, inject)
		} else if !b {
			return "injection disabled (" + from + " " + AnnotationInject + ": " + inject + ")"
		}
	}
	if _, ok := ann[AnnotationStatus]; !ok {
		return "no " + AnnotationStatus + " annotation: not injected"
	}
	if ann[AnnotationInterceptionMode] == "NONE" {
		return "interception mode NONE"
	}
	return ""
}

// The checks istio-cni makes of each annotation's syntax before it uses the value; a value they
// refuse makes istio-cni fail the pod. Values they pass are then parsed by the engine's parsers.

func checkIstioMode(v string) error {
	if v != string(redirect.ModeRedirect) && v != string(redirect.ModeTProxy) {
		return errors.New("want REDIRECT or TPROXY (or NONE for no capture), in capitals")
	}
	return nil
}

func checkIstioCIDRs(wildcard bool) func(string) error {
	return func(v string) error {
		if v == "" || wildcard && v == "*" {
			return nil
		}
		for _, item := range strings.Split(v, ",") {
			if _, err := netip.ParsePrefix(item); err != nil {
				return fmt.Errorf("%q is not a CIDR (no spaces or empty items)", item)
			}
		}
		return nil
	}
}

func checkIstioPorts(v string) error {
	if v == "*" {
		return nil
	}
	if v = strings.TrimSpace(v); v == "" {
		return nil
	}
	for _, item := range strings.Split(v, ",") {
		if _, err := strconv.ParseUint(strings.TrimSpace(item), 10, 16); err != nil {
			return fmt.Errorf("%q is not a port (0 to 65535; no empty items)", item)
		}
	}
	return nil
}

func checkIstioInterfaces(v string) error {
	if v == "" {
		return nil
	}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			return errors.New("empty interface name")
		case len(item) > 15:
			return fmt.Errorf("interface name %q is longer than 15 characters", item)
		case !istioInterfaceName(item):
			return fmt.Errorf("interface name %q: want a letter, then letters, digits, '.', '_' or '-'", item)
		}
	}
	return nil
}

func istioInterfaceName(s string) bool {
	for i, r := range s {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || !(r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')) {
			return false
		}
	}
	return true
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
