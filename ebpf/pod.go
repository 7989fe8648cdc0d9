package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/shuntmesh/shunt/redirect"
)

// MaxProxyIDs is how many proxy uids, and how many proxy gids, a pod entry holds.
const MaxProxyIDs = 4

// Pod is what the fast path knows of a meshed pod: the settings of its outbound capture, keyed by
// its network namespace cookie. Build one with PodFromConfig.
type Pod struct {
	// Cookie is the pod's network namespace cookie (NetNSCookie).
	Cookie uint64
	// ProxyPort is the proxy's outbound listener: captured connections go to loopback at it.
	ProxyPort uint16
	// InboundPort is the proxy's inbound listener; loopback connections to it are accelerated.
	InboundPort uint16
	// ProxyUIDs and ProxyGIDs are the proxy's identities, at most MaxProxyIDs each: a process with
	// one of the uids or one of the gids is never captured.
	ProxyUIDs, ProxyGIDs []uint32
	// IPs are the pod's own addresses: the app calling them goes over lo and is not captured. The
	// first of each family is the source of the app's redirected connections (see source).
	IPs []netip.Addr
	// IPv6 captures IPv6 destinations too; IPv4 (and IPv4-mapped) ones always are.
	IPv6 bool
	// IncludeAll captures every destination that nothing excludes; otherwise only Include.
	IncludeAll bool
	Include    []netip.Prefix
	// Exclude lists destinations never captured.
	Exclude []netip.Prefix
	// Ports are captured whatever the destination (unless excluded before); PortsExclude never.
	Ports, PortsExclude []uint16
	// HostLoopback is the IPv4 localhost range, never captured.
	HostLoopback netip.Prefix
	// CaptureLocal captures the app's connections over lo too: an included range, as configured, is
	// a loopback range, and the engine then leaves out the rule that returns them
	// (redirect.Outbound.IncludesLoopback).
	CaptureLocal bool
	// OwnerGroups selects the processes captured by gid.
	OwnerGroups redirect.GroupFilter
	// DNSPort, when not 0, is where DNS (port 53, TCP and UDP) to DNSServers, or to anywhere
	// with DNSAll, goes.
	DNSPort    uint16
	DNSAll     bool
	DNSServers []netip.Addr
	// UserNamespaced says the pod's network namespace belongs to a user namespace of its own
	// (hostUsers: false; NetNSUserNamespaced): on a kernel whose programs judge owners by the
	// calling task's ids (OwnerIDs "task"), AddPod refuses such a pod, whose proxy the node sees
	// under another uid.
	UserNamespaced bool
	// NoSockMsg keeps the pod's sockets out of sk_msg acceleration (a receiver that reads with
	// splice(2) stalls on redirected bytes); connect, SO_ORIGINAL_DST and getpeername still work.
	NoSockMsg bool
}

// PodFromConfig returns the Pod of the namespace cookie for cfg and podIPs, the pod's own addresses:
// cfg's Outbound, the decisions the rule engine turns into ISTIO_OUTPUT. It performs no I/O.
//
// Settings that only concern inbound traffic (the inbound ports, TPROXY mode and marks,
// DropInvalid) stay with the nat and mangle rules, and so do KubeVirtInterfaces: traffic a VM
// forwards through the pod never calls connect(2) in it. DNS capture (RedirectDNS, DNSServers,
// CaptureAllDNS) applies to TCP and UDP alike: UDP DNS is no longer left to the nat rules.
// What cannot be represented is an error naming the setting (a *redirect.FieldError): more than
// MaxProxyIDs proxy uids or gids, and ExcludeInterfaces, since connect(2) runs before routing picks
// an interface.
func PodFromConfig(cookie uint64, cfg *redirect.Config, podIPs []netip.Addr) (Pod, error) {
	if err := cfg.Validate(); err != nil {
		return Pod{}, err
	}
	var errs []error
	bad := func(field, value, format string, args ...any) {
		errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: fmt.Errorf(format, args...)})
	}
	if n := len(cfg.ProxyUIDs); n > MaxProxyIDs {
		bad("proxy-uid", fmt.Sprint(cfg.ProxyUIDs), "the eBPF fast path holds at most %d proxy uids, not %d", MaxProxyIDs, n)
	}
	if n := len(cfg.ProxyGIDs); n > MaxProxyIDs {
		bad("proxy-gid", fmt.Sprint(cfg.ProxyGIDs), "the eBPF fast path holds at most %d proxy gids, not %d", MaxProxyIDs, n)
	}
	for _, name := range cfg.ExcludeInterfaces {
		bad("istio-exclude-interfaces", name,
			"the eBPF fast path decides at connect(2), before routing picks the outgoing interface")
	}
	ips := make([]netip.Addr, 0, len(podIPs))
	for _, ip := range podIPs {
		if !ip.IsValid() || ip.Zone() != "" {
			errs = append(errs, fmt.Errorf("pod IP %q: not an IP address without zone", ip))
			continue
		}
		ips = append(ips, ip.Unmap())
	}
	if err := errors.Join(errs...); err != nil {
		return Pod{}, err
	}
	o := cfg.Outbound()
	return Pod{
		Cookie:       cookie,
		ProxyPort:    o.ProxyPort,
		InboundPort:  o.InboundPort,
		ProxyUIDs:    o.ProxyUIDs,
		ProxyGIDs:    o.ProxyGIDs,
		IPs:          ips,
		IPv6:         cfg.IPv6,
		IncludeAll:   o.IncludeAll,
		Include:      o.Include,
		Exclude:      o.Exclude,
		Ports:        o.Ports,
		PortsExclude: o.PortsExclude,
		HostLoopback: o.HostLoopback,
		CaptureLocal: o.IncludesLoopback,
		OwnerGroups:  o.OwnerGroups,
		DNSPort:      o.DNSPort,
		DNSAll:       o.DNSAll,
		DNSServers:   o.DNSServers,
	}, nil
}

// Validate reports every setting of p that the kernel programs cannot hold.
func (p *Pod) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if p.Cookie == 0 {
		bad("cookie: 0 is no network namespace cookie")
	}
	if p.ProxyPort == 0 {
		bad("proxy port: 0")
	}
	if p.InboundPort == 0 {
		bad("inbound port: 0")
	}
	for _, ids := range []struct {
		name string
		ids  []uint32
	}{{"proxy uids", p.ProxyUIDs}, {"proxy gids", p.ProxyGIDs}} {
		if len(ids.ids) > MaxProxyIDs {
			bad("%s: at most %d, not %d", ids.name, MaxProxyIDs, len(ids.ids))
		}
		if slices.Contains(ids.ids, redirect.InvalidID) {
			bad("%s: %d is not a valid id", ids.name, redirect.InvalidID)
		}
	}
	if len(p.ProxyUIDs)+len(p.ProxyGIDs) == 0 {
		bad("proxy uids and gids: none: the proxy's own connections would be captured")
	}
	for _, a := range append(slices.Clone(p.IPs), p.DNSServers...) {
		if !a.IsValid() || a.Zone() != "" {
			bad("address %q: not an IP address without zone", a)
		}
	}
	for _, pr := range append(slices.Clone(p.Include), p.Exclude...) {
		if !pr.IsValid() || pr.Addr().Zone() != "" {
			bad("prefix %q: not a CIDR", pr)
		}
	}
	for _, port := range append(slices.Clone(p.Ports), p.PortsExclude...) {
		if port == 0 {
			bad("port list: 0")
		}
	}
	if l := p.HostLoopback; !l.IsValid() || !l.Addr().Is4() || !netip.MustParsePrefix("127.0.0.0/8").Contains(l.Addr()) || l.Bits() < 8 {
		bad("host loopback %q: not an IPv4 CIDR within 127.0.0.0/8", l)
	}
	if !p.OwnerGroups.All && len(p.OwnerGroups.Include) == 0 {
		bad("owner groups: no group included")
	}
	if p.DNSPort == 0 && (p.DNSAll || len(p.DNSServers) > 0) {
		bad("DNS port: 0 with DNS servers to capture")
	}
	return errors.Join(errs...)
}

// source returns the pod's address that a redirected connection of the IPv4 (v4) or IPv6 family
// comes from: the first of IPs of that family other than loopback and ::6 (which the namespace's lo
// carries for the proxy's passthrough). Bound to it at connect(2), the connection reaches
// the proxy on loopback from the pod's address, as a nat REDIRECTed one does, so that the proxy
// sees the pod as its downstream peer. Without one, the connection comes from loopback.
func (p *Pod) source(v4 bool) (netip.Addr, bool) {
	for _, ip := range p.IPs {
		ip = ip.Unmap()
		if ip.Is4() == v4 && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && ip != redirect.PassthroughV4 && ip != redirect.PassthroughV6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// String is a short description for logs.
func (p Pod) String() string {
	return "pod netns cookie " + strconv.FormatUint(p.Cookie, 10)
}
