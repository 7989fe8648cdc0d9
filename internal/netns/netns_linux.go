package netns

import "github.com/containernetworking/plugins/pkg/ns"

// Do runs fn in the network namespace at path (a /proc/PID/ns/net or a bind mount such as
// /run/netns/NAME; the current namespace when path is empty), on a locked OS thread, so that
// commands fn starts and netlink sockets it opens belong to that namespace. The caller's thread
// stays where it is.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}
