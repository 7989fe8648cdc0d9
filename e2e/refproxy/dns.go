//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// dnsTCP handles a TCP DNS connection captured to the DNS port and relays it
// to the upstream of its IP family.
func (p *proxy) dnsTCP(c *net.TCPConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(connTimeout))
	local := addrPort(c.LocalAddr())
	orig, err := originalDst(c)
	if err != nil {
		orig = local // dialed the DNS port itself, not redirected
	}
	if p.own.has(upstreamDNS, addrPort(c.RemoteAddr())) {
		fmt.Fprintf(c, "dns=proxy-loop orig=%s\n", orig)
		return
	}
	fmt.Fprintf(c, "dns=proxy orig=%s;", orig)
	upstream, err := p.dnsUpstreams.forFamily(local.Addr())
	if err != nil {
		fmt.Fprintf(c, "error=%q\n", err)
		return
	}
	up, release, err := p.dial(upstream, upstreamDNS, netip.Addr{})
	if err != nil {
		fmt.Fprintf(c, "error=%q\n", err)
		return
	}
	defer release()
	relay(c, up)
}

// serveDNSUDP answers each datagram on pc with "dns=proxy;" and the answer
// of the upstream of pc's IP family.
func (p *proxy) serveDNSUDP(pc net.PacketConn) error {
	local := addrPort(pc.LocalAddr()).Addr()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("read %s: %w", pc.LocalAddr(), err)
		}
		query := bytes.Clone(buf[:n])
		go func() {
			_, _ = pc.WriteTo(p.forwardUDP(local, addrPort(from), query), from)
		}()
	}
}

func (p *proxy) forwardUDP(local netip.Addr, from netip.AddrPort, query []byte) []byte {
	if p.own.has(upstreamDNS, from) {
		return []byte("dns=proxy-loop\n")
	}
	upstream, err := p.dnsUpstreams.forFamily(local)
	if err != nil {
		return fmt.Appendf(nil, "dns=proxy;error=%q\n", err)
	}
	network := "udp4"
	if upstream.Addr().Is6() {
		network = "udp6"
	}
	// Bound before sending, so the socket is known as the proxy's own if
	// its query comes back to the DNS port.
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return fmt.Appendf(nil, "dns=proxy;error=%q\n", err)
	}
	defer conn.Close()
	key := netip.AddrPortFrom(netip.Addr{}, addrPort(conn.LocalAddr()).Port())
	p.own.add(upstreamDNS, key)
	defer p.own.remove(upstreamDNS, key)

	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.WriteToUDPAddrPort(query, upstream); err != nil {
		return fmt.Appendf(nil, "dns=proxy;error=%q\n", err)
	}
	buf := make([]byte, 64<<10)
	n, src, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return fmt.Appendf(nil, "dns=proxy;error=%q\n", err)
	}
	if src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port()); src != upstream {
		return fmt.Appendf(nil, "dns=proxy;error=\"answer from %s, asked %s\"\n", src, upstream)
	}
	return append([]byte("dns=proxy;"), buf[:n]...)
}
