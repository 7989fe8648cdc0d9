//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"encoding/binary"
	"net/netip"
)

// kernel returns p as the value of shunt_pods for generation gen.
func (p *Pod) kernel(gen uint16) redirectPod {
	v := redirectPod{
		ProxyPort:   p.ProxyPort,
		InboundPort: p.InboundPort,
		DnsPort:     p.DNSPort,
		Gen:         gen,
	}
	for i := range MaxProxyIDs {
		v.Uids[i], v.Gids[i] = ^uint32(0), ^uint32(0)
		if i < len(p.ProxyUIDs) {
			v.Uids[i] = p.ProxyUIDs[i]
		}
		if i < len(p.ProxyGIDs) {
			v.Gids[i] = p.ProxyGIDs[i]
		}
	}
	lo := p.HostLoopback.Masked()
	v.Lo4Addr = nativeBE(lo.Addr().As4())
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-lo.Bits()))
	v.Lo4Mask = nativeBE(mask)
	if a, ok := p.source(true); ok {
		v.Src4 = nativeBE(a.As4())
	}
	if a, ok := p.source(false); ok {
		b := a.As16()
		for i := range 4 {
			v.Src6[i] = nativeBE([4]byte(b[4*i : 4*i+4]))
		}
	}
	flags := map[redirectPodFlag]bool{
		redirectPodFlagPOD_NO_SOCKMSG:     p.NoSockMsg,
		redirectPodFlagPOD_IPV6:           p.IPv6,
		redirectPodFlagPOD_INCLUDE_ALL:    p.IncludeAll,
		redirectPodFlagPOD_CAPTURE_LOCAL:  p.CaptureLocal,
		redirectPodFlagPOD_DNS:            p.DNSPort != 0,
		redirectPodFlagPOD_DNS_ALL:        p.DNSPort != 0 && p.DNSAll,
		redirectPodFlagPOD_GROUPS_INCLUDE: !p.OwnerGroups.All,
	}
	for f, on := range flags {
		if on {
			v.Flags |= f
		}
	}
	return v
}

// entries returns the keys of p's prefixes and set entries for generation gen.
func (p *Pod) entries(gen uint16) ([]redirectCidrKey, []redirectSetKey) {
	var cidrs []redirectCidrKey
	add := func(kind redirectCidrKind, pr netip.Prefix) {
		cidrs = append(cidrs, cidrKey(p.Cookie, gen, kind, pr))
	}
	for _, ip := range p.IPs {
		add(redirectCidrKindCIDR_SELF, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
	}
	for _, pr := range p.Exclude {
		add(redirectCidrKindCIDR_EXCLUDE, pr)
	}
	if !p.IncludeAll {
		for _, pr := range p.Include {
			add(redirectCidrKindCIDR_INCLUDE, pr)
		}
	}
	if p.DNSPort != 0 && !p.DNSAll {
		for _, s := range p.DNSServers {
			add(redirectCidrKindCIDR_DNS, netip.PrefixFrom(s.Unmap(), s.Unmap().BitLen()))
		}
	}
	var sets []redirectSetKey
	set := func(kind redirectSetKind, v uint32) {
		sets = append(sets, redirectSetKey{Cookie: p.Cookie, Kind: kind, Value: v, Gen: gen})
	}
	for _, port := range p.PortsExclude {
		set(redirectSetKindSET_PORT_EXCLUDE, uint32(port))
	}
	for _, port := range p.Ports {
		set(redirectSetKindSET_PORT_INCLUDE, uint32(port))
	}
	if p.OwnerGroups.All {
		for _, g := range p.OwnerGroups.Exclude {
			set(redirectSetKindSET_GID_EXCLUDE, g)
		}
	} else {
		for _, g := range p.OwnerGroups.Include {
			set(redirectSetKindSET_GID_INCLUDE, g)
		}
	}
	return cidrs, sets
}

// cidrBits is the length of the part of a shunt_cidrs key before the address (CIDR_FIXED_BITS).
const cidrBits = 128

func cidrKey(cookie uint64, gen uint16, kind redirectCidrKind, pr netip.Prefix) redirectCidrKey {
	pr = pr.Masked()
	a := pr.Addr()
	bits := pr.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), max(bits-96, 0)
	}
	k := redirectCidrKey{Prefixlen: uint32(cidrBits + bits), Kind: kind, Cookie: cookie, Gen: gen, Family: 6}
	if a.Is4() {
		k.Family = 4
		k.Addr[0] = nativeBE(a.As4())
	} else {
		b := a.As16()
		for i := range 4 {
			k.Addr[i] = nativeBE([4]byte(b[4*i : 4*i+4]))
		}
	}
	return k
}

// nativeBE returns the uint32 whose in-memory bytes (on this little- or big-endian host) are b,
// as the kernel programs see a network byte order address.
func nativeBE(b [4]byte) uint32 { return binary.NativeEndian.Uint32(b[:]) }
