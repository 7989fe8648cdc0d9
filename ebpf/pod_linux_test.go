//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/redirect"
)

// be returns the uint32 the kernel programs see for the network byte order address a.
func be(a string) uint32 { return nativeBE(netip.MustParseAddr(a).As4()) }

func TestPodKernel(t *testing.T) {
	p := Pod{
		Cookie: 9, ProxyPort: 15001, InboundPort: 15006, ProxyUIDs: []uint32{1337}, ProxyGIDs: []uint32{1337, 7},
		IPv6: true, Include: []netip.Prefix{mustPrefix(t, "127.0.0.0/8")}, HostLoopback: mustPrefix(t, "127.0.0.1/8"), CaptureLocal: true,
		OwnerGroups: redirect.GroupFilter{Include: []uint32{5}}, DNSPort: 15053, DNSAll: true, NoSockMsg: true,
	}
	got := p.kernel(3)
	none := ^uint32(0)
	want := redirectPod{
		Flags: redirectPodFlagPOD_NO_SOCKMSG | redirectPodFlagPOD_IPV6 | redirectPodFlagPOD_CAPTURE_LOCAL |
			redirectPodFlagPOD_DNS | redirectPodFlagPOD_DNS_ALL | redirectPodFlagPOD_GROUPS_INCLUDE,
		ProxyPort: 15001, InboundPort: 15006, DnsPort: 15053, Gen: 3,
		Uids:    [4]uint32{1337, none, none, none},
		Gids:    [4]uint32{1337, 7, none, none},
		Lo4Addr: be("127.0.0.0"), Lo4Mask: be("255.0.0.0"),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	p.HostLoopback = mustPrefix(t, "127.0.0.1/32")
	if got := p.kernel(1); got.Lo4Addr != be("127.0.0.1") || got.Lo4Mask != be("255.255.255.255") {
		t.Errorf("/32 loopback: %x/%x", got.Lo4Addr, got.Lo4Mask)
	}
}

func TestPodEntries(t *testing.T) {
	p := Pod{
		Cookie: 9, IPs: []netip.Addr{mustAddr(t, "10.0.0.1"), mustAddr(t, "fd00::1")},
		Include:     []netip.Prefix{mustPrefix(t, "10.96.0.0/12")},
		Exclude:     []netip.Prefix{mustPrefix(t, "::ffff:10.1.0.0/112")},
		Ports:       []uint16{80},
		OwnerGroups: redirect.GroupFilter{All: true, Exclude: []uint32{44}},
		DNSPort:     15053, DNSServers: []netip.Addr{mustAddr(t, "10.96.0.10")},
	}
	cidrs, sets := p.entries(2)
	key := func(kind redirectCidrKind, bits uint32, fam uint8, addr [4]uint32) redirectCidrKey {
		return redirectCidrKey{Prefixlen: cidrBits + bits, Kind: kind, Cookie: 9, Gen: 2, Family: fam, Addr: addr}
	}
	want := []redirectCidrKey{
		key(redirectCidrKindCIDR_SELF, 32, 4, [4]uint32{be("10.0.0.1")}),
		key(redirectCidrKindCIDR_SELF, 128, 6, [4]uint32{be("253.0.0.0"), 0, 0, be("0.0.0.1")}),
		key(redirectCidrKindCIDR_EXCLUDE, 16, 4, [4]uint32{be("10.1.0.0")}), // IPv4-mapped: as IPv4
		key(redirectCidrKindCIDR_INCLUDE, 12, 4, [4]uint32{be("10.96.0.0")}),
		key(redirectCidrKindCIDR_DNS, 32, 4, [4]uint32{be("10.96.0.10")}),
	}
	if diff := cmp.Diff(want, cidrs); diff != "" {
		t.Errorf("prefixes (-want +got)\n%s", diff)
	}
	wantSets := []redirectSetKey{
		{Cookie: 9, Kind: redirectSetKindSET_PORT_INCLUDE, Value: 80, Gen: 2},
		{Cookie: 9, Kind: redirectSetKindSET_GID_EXCLUDE, Value: 44, Gen: 2},
	}
	if diff := cmp.Diff(wantSets, sets); diff != "" {
		t.Errorf("sets (-want +got)\n%s", diff)
	}
	// With IncludeAll the include list is not written.
	p.IncludeAll = true
	if cidrs, _ := p.entries(2); len(cidrs) != 4 {
		t.Errorf("IncludeAll: %d prefixes, want 4", len(cidrs))
	}
}
