package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// which x/sys/unix does not define.
const ip6tSOOriginalDst = 80

// originalDst returns the destination c had before a nat REDIRECT, read with
// SO_ORIGINAL_DST (IPv4, also on an IPv4-mapped connection of a dual-stack
// socket) or IP6T_SO_ORIGINAL_DST (IPv6).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var orig netip.AddrPort
	var serr error
	is4 := addrPort(c.LocalAddr()).Addr().Is4()
	err = rc.Control(func(fd uintptr) {
		if is4 {
			var sa unix.RawSockaddrInet4
			serr = getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
			orig = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), networkPort(sa.Port))
			return
		}
		var sa unix.RawSockaddrInet6
		serr = getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
		orig = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), networkPort(sa.Port))
	})
	if err = errors.Join(err, serr); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return orig, nil
}

// networkPort returns a port stored in network byte order.
func networkPort(p uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:])
}

func getsockopt(fd uintptr, level, name int, val unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// listenTCP binds a dual-stack TCP listener; in TPROXY mode it is
// transparent, so the TPROXY target can hand it connections to any address.
func (p *proxy) listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{}
	if p.tproxy {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// upstreamKind says which listener an upstream socket serves.
type upstreamKind int

const (
	upstreamOutbound upstreamKind = iota
	upstreamInbound
	upstreamDNS
)

// dial connects to dst as the proxy's own upstream. The socket is bound
// (to src, or the wildcard when src is invalid) and recorded in p.own before
// it connects, so a listener that is handed this very connection knows it.
// In TPROXY mode an inbound upstream is transparent and carries the tproxy
// mark, as Envoy's original_src filter makes it. The returned release
// forgets the socket; call it when done with the connection.
func (p *proxy) dial(dst netip.AddrPort, kind upstreamKind, src netip.Addr) (*net.TCPConn, func(), error) {
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	var key netip.AddrPort
	d := net.Dialer{Timeout: 3 * time.Second}
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			key, serr = p.prepare(int(fd), dst.Addr().Is6(), kind, src)
		})
		return errors.Join(err, serr)
	}
	c, err := d.Dial(network, dst.String())
	release := func() { p.own.remove(kind, key) }
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("dial %s: %w", dst, err)
	}
	return c.(*net.TCPConn), release, nil
}

func (p *proxy) prepare(fd int, v6 bool, kind upstreamKind, src netip.Addr) (netip.AddrPort, error) {
	if p.tproxy && kind == upstreamInbound {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if v6 {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return netip.AddrPort{}, fmt.Errorf("transparent: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, p.mark); err != nil {
			return netip.AddrPort{}, fmt.Errorf("SO_MARK: %w", err)
		}
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if v6 {
		sa = &unix.SockaddrInet6{}
	}
	if src.IsValid() {
		if v6 {
			sa = &unix.SockaddrInet6{Addr: src.As16()}
		} else {
			sa = &unix.SockaddrInet4{Addr: src.As4()}
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bind %s: %w", src, err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var port int
	switch sa := bound.(type) {
	case *unix.SockaddrInet4:
		port = sa.Port
	case *unix.SockaddrInet6:
		port = sa.Port
	}
	key := netip.AddrPortFrom(src, uint16(port))
	p.own.add(kind, key)
	return key, nil
}

// ownSockets records the local addresses of the proxy's upstream sockets.
// An address with an invalid Addr stands for a wildcard bind: any address
// with that port matches.
type ownSockets struct {
	mu sync.Mutex
	m  map[upstreamKind]map[netip.AddrPort]int
}

func newOwnSockets() *ownSockets {
	return &ownSockets{m: make(map[upstreamKind]map[netip.AddrPort]int)}
}

func (o *ownSockets) add(kind upstreamKind, a netip.AddrPort) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m[kind] == nil {
		o.m[kind] = make(map[netip.AddrPort]int)
	}
	o.m[kind][a]++
}

func (o *ownSockets) remove(kind upstreamKind, a netip.AddrPort) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := o.m[kind][a]; n > 1 {
		o.m[kind][a] = n - 1
		return
	}
	delete(o.m[kind], a)
}

// has reports whether peer is one of the proxy's upstream sockets of kind.
func (o *ownSockets) has(kind upstreamKind, peer netip.AddrPort) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.m[kind]
	return m[peer] > 0 || m[netip.AddrPortFrom(netip.Addr{}, peer.Port())] > 0
}

// any reports whether peer is any of the proxy's upstream sockets.
func (o *ownSockets) any(peer netip.AddrPort) bool {
	return o.has(upstreamOutbound, peer) || o.has(upstreamInbound, peer) || o.has(upstreamDNS, peer)
}
