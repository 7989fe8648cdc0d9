//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// NetNSCookie returns the cookie of the network namespace at nsPath (a /proc/PID/ns/net or a bind
// mount such as /run/netns/NAME), the key of its pod: the value bpf_get_netns_cookie returns for
// its sockets. It reads SO_NETNS_COOKIE from a socket made inside the namespace, on a locked
// thread; the caller's thread stays where it is. Linux 5.14 or later.
func NetNSCookie(nsPath string) (uint64, error) {
	var cookie uint64
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("SO_NETNS_COOKIE: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", nsPath, err)
	}
	return cookie, nil
}
