package podroute

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/shuntmesh/shunt/internal/netns"
)

// DetectIPv6 says whether the namespace at path (current when empty) is IPv6, as Istio decides: by its
// first address that is neither loopback nor link-local, or with dualStack by any such IPv6 address.
// A namespace without addresses is IPv4.
func DetectIPv6(path string, dualStack bool) (bool, error) {
	var v6 bool
	err := netns.Do(path, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		// Istio looks at net.InterfaceAddrs, ordered by interface then address: the same order here.
		slices.SortStableFunc(addrs, func(a, b netlink.Addr) int { return a.LinkIndex - b.LinkIndex })
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
				continue
			}
			if !dualStack {
				v6 = ip.Is6()
				return nil
			}
			if ip.Is6() {
				v6 = true
				return nil
			}
		}
		return nil
	})
	return v6, err
}
