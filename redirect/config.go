// Package redirect is shunt's rule engine: it turns a Config (Istio's istio-iptables settings) into a
// Plan, the chains and ordered rules per address family and table that capture a meshed pod's traffic.
//
// The package is pure: it performs no I/O, runs no commands and does not log. The same Config always
// yields the same Plan.
package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mode is the inbound interception mode.
type Mode string

// Interception modes, spelled as Istio spells them.
const (
	ModeRedirect Mode = "REDIRECT"
	ModeTProxy   Mode = "TPROXY"
)

// Well-known ports and marks of a meshed pod.
const (
	DefaultProxyPort        = 15001
	DefaultInboundPort      = 15006
	DefaultTunnelPort       = 15008
	DefaultProxyID          = 1337
	DefaultTProxyMark       = 1337
	DefaultTProxyRouteTable = 133
	// DNSProxyPort is where the Istio agent's DNS proxy listens.
	DNSProxyPort = 15053
	// OutboundMark marks the proxy's own connections to its pod's IP in TPROXY mode (hairpin).
	OutboundMark = 1338
	// MaxOwnerGroupsInclude bounds the include list: all groups end up in one rule of N owner matches.
	MaxOwnerGroupsInclude = 64
)

// Addresses the proxy uses for its inbound passthrough connections to the app.
var (
	PassthroughV4 = netip.MustParseAddr("127.0.0.6")
	PassthroughV6 = netip.MustParseAddr("::6")
)

// PortList is a list of ports that may instead be "all ports" ('*').
type PortList struct {
	All   bool
	Ports []uint16
}

// PrefixList is a list of CIDRs that may instead be "all addresses" ('*').
type PrefixList struct {
	All      bool
	Prefixes []netip.Prefix
}

// GroupFilter selects the processes, by owner group, whose outbound traffic is captured: every group
// except Exclude when All is set, otherwise only the groups in Include.
type GroupFilter struct {
	All     bool
	Include []uint32
	Exclude []uint32
}

// Config holds every setting of the engine. Field comments name the istio-iptables flag.
type Config struct {
	ProxyPort          uint16   // -p: outbound listener
	InboundCapturePort uint16   // -z: inbound listener
	InboundTunnelPort  uint16   // -e: HBONE tunnel port, never captured inbound or hairpinned
	ProxyUIDs          []uint32 // -u
	ProxyGIDs          []uint32 // -g
	Mode               Mode     // -m

	InboundPorts        PortList // -b
	InboundPortsExclude []uint16 // -d: only applies when InboundPorts.All

	OutboundIPRanges        PrefixList     // -i
	OutboundIPRangesExclude []netip.Prefix // -x
	OutboundPorts           []uint16       // -q: captured whatever the destination
	OutboundPortsExclude    []uint16       // -o

	ExcludeInterfaces  []string // -c: neither direction captured
	KubeVirtInterfaces []string // -k: inbound traffic from these is treated as outbound

	TProxyMark       uint32 // -t
	TProxyRouteTable uint32 // -r

	OwnerGroups GroupFilter // ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE], resolved to numeric ids
	// HostIPv4LoopbackCIDR is the IPv4 localhost range (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR).
	HostIPv4LoopbackCIDR netip.Prefix

	RedirectDNS   bool         // --redirect-dns
	CaptureAllDNS bool         // --capture-all-dns
	DNSServers    []netip.Addr // --dns-servers: the servers whose traffic is captured unless CaptureAllDNS

	DropInvalid bool // --drop-invalid
	IPv6        bool // program ip6tables too

	// NativeNFTables plans nftables' inet tables, as Istio's native nftables mode programs them
	// (--native-nftables): one Plan family, Inet, covering IPv4 and, with IPv6, IPv6.
	NativeNFTables bool
}

// DefaultConfig returns the sidecar injector's settings: everything captured, in REDIRECT mode, with the
// agent's ports excluded inbound.
func DefaultConfig() Config {
	return Config{
		ProxyPort:            DefaultProxyPort,
		InboundCapturePort:   DefaultInboundPort,
		InboundTunnelPort:    DefaultTunnelPort,
		ProxyUIDs:            []uint32{DefaultProxyID},
		ProxyGIDs:            []uint32{DefaultProxyID},
		Mode:                 ModeRedirect,
		InboundPorts:         PortList{All: true},
		InboundPortsExclude:  []uint16{15090, 15021, 15020},
		OutboundIPRanges:     PrefixList{All: true},
		TProxyMark:           DefaultTProxyMark,
		TProxyRouteTable:     DefaultTProxyRouteTable,
		OwnerGroups:          GroupFilter{All: true},
		HostIPv4LoopbackCIDR: netip.MustParsePrefix("127.0.0.1/32"),
	}
}

// FieldError is an invalid setting: the field (a flag, variable or annotation name), its value and why.
type FieldError struct {
	Field string
	Value string
	Err   error
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: invalid value %q: %v", e.Field, e.Value, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// Validate reports every invalid setting of c at once. Errors are *FieldError values naming the
// istio-iptables flag of the field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, value string, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Value: value, Err: fmt.Errorf(format, args...)})
	}
	port := func(field string, p uint16) {
		if p == 0 {
			bad(field, "0", "port must be between 1 and 65535")
		}
	}
	port("envoy-port", c.ProxyPort)
	port("inbound-capture-port", c.InboundCapturePort)
	port("inbound-tunnel-port", c.InboundTunnelPort)
	ports := func(field string, ps []uint16) {
		for _, p := range ps {
			port(field, p)
		}
	}
	ports("istio-inbound-ports", c.InboundPorts.Ports)
	ports("istio-local-exclude-ports", c.InboundPortsExclude)
	ports("istio-outbound-ports", c.OutboundPorts)
	ports("istio-local-outbound-ports-exclude", c.OutboundPortsExclude)
	if c.InboundPorts.All && len(c.InboundPorts.Ports) > 0 {
		bad("istio-inbound-ports", "*", "'*' cannot be combined with a port list")
	}
	if c.OutboundIPRanges.All && len(c.OutboundIPRanges.Prefixes) > 0 {
		bad("istio-service-cidr", "*", "'*' cannot be combined with a CIDR list")
	}
	if len(c.ProxyUIDs) == 0 {
		bad("proxy-uid", "", "at least one uid is needed: the proxy's own traffic must not be captured")
	}
	if len(c.ProxyGIDs) == 0 {
		bad("proxy-gid", "", "at least one gid is needed: the proxy's own traffic must not be captured")
	}
	for _, ids := range []struct {
		field string
		ids   []uint32
	}{{"proxy-uid", c.ProxyUIDs}, {"proxy-gid", c.ProxyGIDs}} {
		for _, id := range ids.ids {
			if id == InvalidID {
				bad(ids.field, strconv.FormatUint(uint64(id), 10), "%d is not a valid id", id)
			}
		}
	}
	switch c.Mode {
	case ModeRedirect, ModeTProxy:
	default:
		bad("istio-inbound-interception-mode", string(c.Mode), "must be REDIRECT or TPROXY")
	}
	if c.Mode == ModeTProxy {
		if c.TProxyMark == 0 || c.TProxyMark == OutboundMark {
			bad("istio-inbound-tproxy-mark", strconv.FormatUint(uint64(c.TProxyMark), 10),
				"must be non-zero and differ from %d, the mark of the proxy's hairpin connections", OutboundMark)
		}
		if t := c.TProxyRouteTable; t == 0 || (t >= 253 && t <= 255) {
			bad("istio-inbound-tproxy-route-table", strconv.FormatUint(uint64(t), 10),
				"must be a routing table other than 0 and the reserved 253 (default), 254 (main), 255 (local)")
		}
	}
	for _, p := range c.OutboundIPRanges.Prefixes {
		if !p.IsValid() {
			bad("istio-service-cidr", p.String(), "not a CIDR")
		}
	}
	for _, p := range c.OutboundIPRangesExclude {
		if !p.IsValid() {
			bad("istio-service-exclude-cidr", p.String(), "not a CIDR")
		}
	}
	for _, field := range []struct {
		name   string
		ifaces []string
	}{{"istio-exclude-interfaces", c.ExcludeInterfaces}, {"kube-virt-interfaces", c.KubeVirtInterfaces}} {
		for _, name := range field.ifaces {
			if err := ValidateInterfaceName(name); err != nil {
				bad(field.name, name, "%v", err)
			}
		}
	}
	if !c.OwnerGroups.All && len(c.OwnerGroups.Include) > MaxOwnerGroupsInclude {
		bad("ISTIO_OUTBOUND_OWNER_GROUPS", fmt.Sprint(len(c.OwnerGroups.Include))+" groups",
			"at most %d groups can be included", MaxOwnerGroupsInclude)
	}
	if !c.OwnerGroups.All && len(c.OwnerGroups.Include) == 0 {
		bad("ISTIO_OUTBOUND_OWNER_GROUPS", "", "name at least one group, or '*' for all")
	}
	if l := c.HostIPv4LoopbackCIDR; !l.IsValid() || !l.Addr().Is4() || l.Bits() < 8 ||
		!netip.MustParsePrefix("127.0.0.0/8").Contains(l.Addr()) {
		bad("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", l.String(), "must be an IPv4 CIDR within 127.0.0.0/8, prefix length 8 to 32")
	}
	for _, s := range c.DNSServers {
		if !s.IsValid() || s.Zone() != "" {
			bad("dns-servers", s.String(), "not an IP address")
		}
	}
	return errors.Join(errs...)
}

// InvalidID is (uid_t)-1, which the kernel never gives a process.
const InvalidID = ^uint32(0)

// ValidateInterfaceName reports whether name can name a Linux network interface in an iptables match:
// 1 to 15 characters of letters, digits, '.', '_' and '-', optionally ending in iptables' '+' wildcard.
func ValidateInterfaceName(name string) error {
	base := strings.TrimSuffix(name, "+")
	if base == "" {
		return errors.New("empty interface name")
	}
	if len(name) > 15 {
		return fmt.Errorf("interface names are at most 15 characters, this one has %d", len(name))
	}
	if base == "." || base == ".." {
		return errors.New("not an interface name")
	}
	for _, r := range base {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("character %q is not allowed in an interface name", r)
		}
	}
	return nil
}
