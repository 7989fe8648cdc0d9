// Package randconfig draws random capture configurations for tests of every package that turns a
// redirect.Config into rules.
package randconfig

import (
	"math/rand/v2"
	"net/netip"

	"github.com/shuntmesh/shunt/redirect"
)

// Config returns base with every setting the engine has drawn at random: a valid Config, so that
// tests (renderers, backends against the tools) cover combinations no hand-written case names.
func Config(r *rand.Rand, base redirect.Config) redirect.Config {
	c := base
	pick := func(n int) bool { return r.IntN(n) == 0 }
	ports := func(max int) []uint16 {
		var ps []uint16
		for range r.IntN(max + 1) {
			ps = append(ps, uint16(1+r.IntN(65000)))
		}
		return ps
	}
	prefixes := func() []netip.Prefix {
		all := []string{"10.0.0.0/8", "10.16.0.0/12", "192.168.1.7/32", "0.0.0.0/0", "fd00::/33", "2001:db8::/32", "::1/128", "127.1.2.3/32"}
		var ps []netip.Prefix
		for _, s := range all {
			if pick(3) {
				ps = append(ps, netip.MustParsePrefix(s))
			}
		}
		return ps
	}
	c.IPv6 = pick(2)
	if pick(2) {
		c.Mode = redirect.ModeTProxy
	}
	switch r.IntN(3) {
	case 0:
		c.InboundPorts = redirect.PortList{Ports: ports(3)}
	case 1:
		c.InboundPorts = redirect.PortList{All: true}
		c.InboundPortsExclude = ports(3)
	}
	switch r.IntN(3) {
	case 0:
		c.OutboundIPRanges = redirect.PrefixList{Prefixes: prefixes()}
	case 1:
		c.OutboundIPRanges = redirect.PrefixList{}
	}
	c.OutboundIPRangesExclude = prefixes()
	c.OutboundPorts = ports(2)
	c.OutboundPortsExclude = ports(2)
	if pick(3) {
		c.ExcludeInterfaces = []string{"eth7", "veth+"}[:1+r.IntN(2)]
	}
	if pick(3) {
		c.KubeVirtInterfaces = []string{"kv0", "kv1"}[:1+r.IntN(2)]
	}
	c.ProxyUIDs = []uint32{1337, 3, 4}[:1+r.IntN(3)]
	c.ProxyGIDs = []uint32{1337, 1, 2}[:1+r.IntN(3)]
	switch r.IntN(3) {
	case 0:
		c.OwnerGroups = redirect.GroupFilter{Include: []uint32{4242, 202}[:1+r.IntN(2)]}
	case 1:
		c.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{888}}
	}
	if pick(2) {
		c.RedirectDNS = true
		c.CaptureAllDNS = pick(3)
		for _, s := range []string{"127.0.0.53", "10.96.0.10", "::127.0.0.53"} {
			if pick(2) {
				c.DNSServers = append(c.DNSServers, netip.MustParseAddr(s))
			}
		}
	}
	if pick(3) {
		c.HostIPv4LoopbackCIDR = netip.MustParsePrefix("127.0.0.1/8")
	}
	c.DropInvalid = pick(3)
	return c
}
