package ebpf

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ConnectVerdict is what the connect hook (shunt_connect4/6) does with a TCP connect(2), and what
// the DNS hooks (shunt_sendmsg4/6, and shunt_connect4/6 for UDP) do with a UDP datagram or connect.
type ConnectVerdict int

// Connect verdicts, the values of redirect.c's enum verdict.
const (
	// ConnectPass leaves the connection alone: it goes where the app asked, and the iptables
	// rules, the safety net, see it as usual.
	ConnectPass ConnectVerdict = 0
	// ConnectProxy rewrites the destination to loopback at the pod's ProxyPort.
	ConnectProxy ConnectVerdict = 1
	// ConnectDNS rewrites the destination to loopback at the pod's DNSPort.
	ConnectDNS ConnectVerdict = 2
)

func (v ConnectVerdict) String() string {
	switch v {
	case ConnectPass:
		return "pass"
	case ConnectProxy:
		return "proxy"
	case ConnectDNS:
		return "dns"
	}
	return fmt.Sprintf("ConnectVerdict(%d)", int(v))
}

// Connect is one TCP connect(2) in a registered pod, as the connect hook sees it, or with UDP one
// UDP datagram sent to an address or one UDP connect(2).
type Connect struct {
	// UDP says the socket is a UDP one: only ConnectDNS applies to it, as only DNS of ISTIO_OUTPUT
	// captures UDP.
	UDP bool
	// Dst is the address the app connects to; an IPv4-mapped one is taken as IPv4, as connect6 does.
	Dst netip.AddrPort
	// Src is the address the socket is bound to; zero when it is not bound.
	Src netip.Addr
	// UID and GID are the fsuid and fsgid of whoever opened the socket (the credentials of its
	// file, which follow the effective ids), as the user namespace owning the pod's network
	// namespace sees them: the ids the owner match of the rules compares (xt_owner, nftables'
	// meta skuid/skgid), also in a user-namespaced pod. NoID stands for an id that namespace does
	// not map, or a socket without a file: neither the proxy's nor an owner group.
	UID, GID uint32
}

// NoID is the id Connect.UID or GID holds for an id the pod's user namespace does not map, as
// redirect.c's sock_owner reads it ((uid_t)-1, which no process has).
const NoID = ^uint32(0)

// ConnectDecision is the connect hook's decision and why.
type ConnectDecision struct {
	Verdict ConnectVerdict
	// Port is the loopback port the destination is rewritten to (ConnectProxy, ConnectDNS), else 0.
	Port uint16
	// Reason says which test of decide the connection stopped at, in words.
	Reason string
}

// DecideConnect returns what the connect (or, for UDP, DNS) hook decides for c in the pod p, from the values
// Node.AddPod writes into the maps (shunt_pods, shunt_cidrs, shunt_sets): a mirror in Go of
// redirect.c's decide(), test for test in the same order, for tools that explain a pod's data path
// (shunt trace). It performs no I/O.
func DecideConnect(p *Pod, c Connect) ConnectDecision {
	if !c.UDP {
		return decideConnect(p, c)
	}
	// redirect.c's dns_capture: port 53 of a pod with DNS capture, then decide().
	switch {
	case c.Dst.Port() != 53:
		return ConnectDecision{Verdict: ConnectPass, Reason: "UDP is only captured as DNS, to port 53"}
	case p.DNSPort == 0:
		return ConnectDecision{Verdict: ConnectPass, Reason: "UDP is only captured as DNS, and the pod's DNS is not captured (--redirect-dns)"}
	}
	d := decideConnect(p, c)
	if d.Verdict == ConnectProxy {
		return ConnectDecision{Verdict: ConnectPass, Reason: "UDP is only captured as DNS, and " + c.Dst.Addr().Unmap().String() + " is not a captured DNS server"}
	}
	if d.Verdict == ConnectDNS {
		d.Reason = strings.Replace(d.Reason, "DNS over TCP", "DNS over UDP", 1)
	}
	return d
}

func decideConnect(p *Pod, c Connect) ConnectDecision {
	dst := c.Dst.Addr().Unmap()
	dport := c.Dst.Port()
	src := c.Src.Unmap()
	ids := func(list []uint32, id uint32) bool {
		// Unused slots of the pod entry's uids and gids hold NoID too (see Pod.kernel), which
		// decide() never takes for the proxy's.
		return id != NoID && slices.Contains(list, id)
	}
	dns := p.DNSPort != 0 && dport == 53
	pass := func(format string, args ...any) ConnectDecision {
		return ConnectDecision{Verdict: ConnectPass, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case dst.Is6() && !p.IPv6:
		return pass("an IPv6 destination, and the pod's IPv6 is not captured")
	case ids(p.ProxyUIDs, c.UID):
		return pass("uid %d is the proxy's", c.UID)
	case ids(p.ProxyGIDs, c.GID):
		return pass("gid %d is the proxy's", c.GID)
	case slices.Contains(p.PortsExclude, dport):
		return pass("port %d is excluded (--istio-local-outbound-ports-exclude)", dport)
	case isPassthrough(src):
		return pass("the socket is bound to %s, the proxy's passthrough source", src)
	case !p.CaptureLocal && !dns && (dst.IsLoopback() || isPassthrough(dst) || kernelContains(prefixesOf(p.IPs), dst)):
		return pass("%s is local: the app calling its own pod goes over lo", dst)
	case !p.OwnerGroups.All && !slices.Contains(p.OwnerGroups.Include, c.GID):
		return pass("gid %d is not among the captured owner groups", c.GID)
	case p.OwnerGroups.All && slices.Contains(p.OwnerGroups.Exclude, c.GID):
		return pass("gid %d is an excluded owner group", c.GID)
	case dns && (p.DNSAll || kernelContains(prefixesOf(p.DNSServers), dst)):
		return ConnectDecision{Verdict: ConnectDNS, Port: p.DNSPort, Reason: fmt.Sprintf("DNS over TCP to %s goes to the DNS proxy", dst)}
	case dst.Is4() && p.HostLoopback.Masked().Contains(dst):
		return pass("%s is in the host loopback range %s", dst, p.HostLoopback.Masked())
	case dst.Is6() && dst.IsLoopback():
		return pass("%s is loopback", dst)
	case kernelContains(p.Exclude, dst):
		return pass("%s is in an excluded range (--istio-service-exclude-cidr)", dst)
	case slices.Contains(p.Ports, dport):
		return ConnectDecision{Verdict: ConnectProxy, Port: p.ProxyPort, Reason: fmt.Sprintf("port %d is always captured (--istio-outbound-ports)", dport)}
	case p.IncludeAll:
		return ConnectDecision{Verdict: ConnectProxy, Port: p.ProxyPort, Reason: "every destination nothing excludes is captured"}
	case kernelContains(p.Include, dst):
		return ConnectDecision{Verdict: ConnectProxy, Port: p.ProxyPort, Reason: fmt.Sprintf("%s is in a captured range (--istio-service-cidr)", dst)}
	}
	return pass("%s is in no captured range (--istio-service-cidr)", dst)
}

// isPassthrough reports whether a is 127.0.0.6 or ::6 (redirect.c's is_passthrough).
func isPassthrough(a netip.Addr) bool {
	return a == netip.AddrFrom4([4]byte{127, 0, 0, 6}) || a == netip.AddrFrom16([16]byte{15: 6})
}

func prefixesOf(addrs []netip.Addr) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// kernelContains reports whether one of prefixes, as cidrKey stores it in the LPM trie, holds a.
func kernelContains(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, pr := range prefixes {
		pr = pr.Masked()
		if pr.Addr().Is4In6() {
			pr = netip.PrefixFrom(pr.Addr().Unmap(), max(pr.Bits()-96, 0))
		}
		if pr.IsValid() && pr.Addr().Is4() == a.Is4() && pr.Contains(a) {
			return true
		}
	}
	return false
}
