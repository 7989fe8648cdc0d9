// Package netns runs code inside a network namespace named by its path.
package netns

import (
	"errors"
	"net"
	"net/netip"
)

// ErrNotSupported is returned where network namespaces do not exist.
var ErrNotSupported = errors.New("not supported")

// GlobalAddrs returns the global unicast addresses of the network namespace at path: a pod's own IPs.
func GlobalAddrs(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := Do(path, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().IsGlobalUnicast() {
					out = append(out, ip.Unmap())
				}
			}
		}
		return nil
	})
	return out, err
}
