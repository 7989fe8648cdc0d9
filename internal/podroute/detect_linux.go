package podroute

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/shuntmesh/shunt/internal/netns"
)

// DetectIPv6 says whether the namespace at path (current when empty) is IPv6, as Istio decides: by its
// first address that is neither loopback nor link-local, or with dualStack by any such IPv6 address.
// A namespace without addresses is IPv4.
//
// The addresses are read as Istio reads them, with net.InterfaceAddrs (ordered by interface, then
// address), which also costs the init container less than a netlink library's 64 KiB receive buffers.
func DetectIPv6(path string, dualStack bool) (bool, error) {
	var addrs []net.Addr
	err := netns.Do(path, func() error {
		var err error
		if addrs, err = net.InterfaceAddrs(); err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		return nil
	})
	ips := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				ips = append(ips, ip)
			}
		}
	}
	return ipv6Of(ips, dualStack), err
}

// ipv6Of is DetectIPv6's decision on the namespace's addresses, in order.
func ipv6Of(addrs []netip.Addr, dualStack bool) bool {
	for _, ip := range addrs {
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
			continue
		}
		if !dualStack || ip.Is6() {
			return ip.Is6()
		}
	}
	return false
}
