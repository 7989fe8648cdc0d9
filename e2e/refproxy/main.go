//go:build linux

// Command refproxy is the reference sidecar of the end-to-end tests: it
// stands where Envoy (outbound 15001, inbound 15006) and the istio-agent DNS
// proxy (15053) stand in a meshed pod, and tags every hop so that the reply a
// client reads tells which path its connection took.
//
// A TCP client sends one line and reads one line back. Before relaying, the
// proxy writes "proxy=outbound orig=IP:PORT;" or "proxy=inbound
// orig=IP:PORT;" to the client; the app at the end of the path answers
// "app=NAME peer=IP:PORT local=IP:PORT". A DNS query gets "dns=proxy;" (UDP)
// or "dns=proxy orig=IP:PORT;" (TCP) followed by the upstream's answer.
//
// A connection from one of the proxy's own upstream sockets back into a
// listener that must never see it (it was captured again) is answered with
// "proxy=outbound-loop", "proxy=inbound-loop" or "dns=proxy-loop" and closed,
// so a bad rule shows up in the reply instead of as an endless loop.
//
// With -tag-peer, the outbound tag also names the downstream peer the proxy
// accepted: "proxy=outbound orig=IP:PORT peer=IP:PORT;", what Envoy reports
// as the downstream remote address.
//
// With -direct-upstream IP:PORT, a connection dialed to the outbound port
// directly (it has no original destination) is tagged "proxy=outbound
// direct=IP:PORT;" and relayed there: the data-path benchmark's baseline
// without interception. Without the flag it is answered with an error.
//
// The proxy prints the line "ready" on standard output once every listener
// is bound.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "refproxy:", err)
		os.Exit(1)
	}
}

// connTimeout bounds every connection and DNS exchange the proxy handles.
const connTimeout = 10 * time.Second

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("refproxy", flag.ContinueOnError)
	outboundPort := fs.Int("outbound-port", 15001, "outbound listener port")
	inboundPort := fs.Int("inbound-port", 15006, "inbound listener port")
	dnsPort := fs.Int("dns-port", 15053, "DNS proxy port (UDP and TCP, on 127.0.0.1 and ::1)")
	mode := fs.String("mode", "REDIRECT", "interception mode: REDIRECT or TPROXY")
	mark := fs.Int("tproxy-mark", 1337, "SO_MARK of inbound upstream sockets in TPROXY mode")
	var direct addrPortFlag
	fs.Var(&direct, "direct-upstream", "IP:PORT outbound connections without an original destination (dialed to the outbound port directly) are relayed to; without it they are answered with an error")
	var dnsUpstreams upstreamList
	fs.Var(&dnsUpstreams, "dns-upstream", "IP:PORT the DNS proxy forwards queries of that IP family to (repeatable)")
	tagPeer := fs.Bool("tag-peer", false, "name the downstream peer in the outbound tag")
	services := serviceMap{}
	fs.Var(services, "service", "VIP:PORT=IP:PORT: outbound connections to VIP:PORT go to IP:PORT (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := &proxy{services: services, mark: *mark, dnsUpstreams: dnsUpstreams, own: newOwnSockets(), direct: netip.AddrPort(direct),
		tagPeer: *tagPeer}
	switch *mode {
	case "REDIRECT":
	case "TPROXY":
		p.tproxy = true
	default:
		return fmt.Errorf("mode %q: want REDIRECT or TPROXY", *mode)
	}

	// Every listener is bound before "ready"; accept loops start after.
	outbound, err := p.listenTCP(fmt.Sprintf("[::]:%d", *outboundPort))
	if err != nil {
		return err
	}
	inbound, err := p.listenTCP(fmt.Sprintf("[::]:%d", *inboundPort))
	if err != nil {
		return err
	}
	// Like istio-agent, the DNS proxy listens on loopback only: REDIRECT in
	// OUTPUT sends to 127.0.0.1 / ::1, and a wildcard UDP socket would answer
	// from the pod IP, which conntrack could not map back to the query.
	var dnsTCP []net.Listener
	var dnsUDP []net.PacketConn
	for _, ip := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(ip, fmt.Sprint(*dnsPort))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		dnsTCP = append(dnsTCP, l)
		dnsUDP = append(dnsUDP, pc)
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}

	errc := make(chan error, 2+2*len(dnsTCP))
	go func() { errc <- serveTCP(outbound, p.outbound) }()
	go func() { errc <- serveTCP(inbound, p.inbound) }()
	for i := range dnsTCP {
		go func() { errc <- serveTCP(dnsTCP[i], p.dnsTCP) }()
		go func() { errc <- p.serveDNSUDP(dnsUDP[i]) }()
	}
	return <-errc
}

// proxy holds the listeners' shared state.
type proxy struct {
	tproxy       bool
	mark         int
	services     serviceMap
	dnsUpstreams upstreamList
	own          *ownSockets
	direct       netip.AddrPort // see -direct-upstream
	tagPeer      bool           // see -tag-peer
}

func serveTCP(l net.Listener, handle func(*net.TCPConn)) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("accept %s: %w", l.Addr(), err)
		}
		go handle(c.(*net.TCPConn))
	}
}

// outbound handles a connection the app made that was redirected to the
// outbound port: it dials the original destination (or the service's
// endpoint) as the proxy itself, which the rules must not capture again.
func (p *proxy) outbound(c *net.TCPConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(connTimeout))
	orig, err := originalDst(c)
	if err != nil && p.direct.IsValid() {
		// Dialed directly: the benchmark's baseline without interception.
		fmt.Fprintf(c, "proxy=outbound direct=%s;", p.direct)
		up, release, err := p.dial(p.direct, upstreamOutbound, netip.Addr{})
		if err != nil {
			fmt.Fprintf(c, "error=%q\n", err)
			return
		}
		defer release()
		relay(c, up)
		return
	}
	if err != nil {
		fmt.Fprintf(c, "proxy=outbound error=%q\n", err)
		return
	}
	if p.own.any(addrPort(c.RemoteAddr())) {
		fmt.Fprintf(c, "proxy=outbound-loop orig=%s\n", orig)
		return
	}
	dst := orig
	if ep, ok := p.services[orig]; ok {
		dst = ep
	}
	if p.tagPeer {
		fmt.Fprintf(c, "proxy=outbound orig=%s peer=%s;", orig, addrPort(c.RemoteAddr()))
	} else {
		fmt.Fprintf(c, "proxy=outbound orig=%s;", orig)
	}
	up, release, err := p.dial(dst, upstreamOutbound, netip.Addr{})
	if err != nil {
		fmt.Fprintf(c, "error=%q\n", err)
		return
	}
	defer release()
	relay(c, up)
}

// inbound handles a connection from outside (or the proxy's own hairpin)
// that was captured to the inbound port, and passes it on to the app: from
// 127.0.0.6 / ::6 in REDIRECT mode, from the client's own address with
// IP_TRANSPARENT and the tproxy mark in TPROXY mode.
func (p *proxy) inbound(c *net.TCPConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(connTimeout))
	// Like Envoy's original_dst filter: SO_ORIGINAL_DST in both modes. A
	// connection TPROXY handed over was not NATed, so it reads back the
	// local address; in TPROXY mode nat still redirects hairpin
	// connections (ISTIO_IN_REDIRECT), and then the local address is :15006.
	orig, err := originalDst(c)
	if err != nil && p.tproxy {
		orig, err = addrPort(c.LocalAddr()), nil
	}
	if err != nil {
		fmt.Fprintf(c, "proxy=inbound error=%q\n", err)
		return
	}
	peer := addrPort(c.RemoteAddr())
	if p.own.has(upstreamInbound, peer) {
		fmt.Fprintf(c, "proxy=inbound-loop orig=%s\n", orig)
		return
	}
	fmt.Fprintf(c, "proxy=inbound orig=%s;", orig)
	var src netip.Addr
	switch {
	case p.tproxy:
		src = peer.Addr()
	case orig.Addr().Is4():
		src = netip.MustParseAddr("127.0.0.6")
	default:
		src = netip.MustParseAddr("::6")
	}
	up, release, err := p.dial(orig, upstreamInbound, src)
	if err != nil {
		fmt.Fprintf(c, "error=%q\n", err)
		return
	}
	defer release()
	relay(c, up)
}

// relay copies bytes both ways with plain read/write loops (no splice) and
// half-closes each side when the other is done.
func relay(client, upstream *net.TCPConn) {
	defer upstream.Close()
	_ = upstream.SetDeadline(time.Now().Add(connTimeout))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = pipe(upstream, client)
		_ = upstream.CloseWrite()
	}()
	_ = pipe(client, upstream)
	_ = client.CloseWrite()
	<-done
}

func pipe(dst, src net.Conn) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// serviceMap maps a service VIP:PORT to its endpoint IP:PORT.
type serviceMap map[netip.AddrPort]netip.AddrPort

func (m serviceMap) String() string {
	var b strings.Builder
	for vip, ep := range m {
		fmt.Fprintf(&b, "%s=%s ", vip, ep)
	}
	return strings.TrimSpace(b.String())
}

func (m serviceMap) Set(s string) error {
	vip, ep, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q: want VIP:PORT=IP:PORT", s)
	}
	v, err := netip.ParseAddrPort(vip)
	if err != nil {
		return err
	}
	e, err := netip.ParseAddrPort(ep)
	if err != nil {
		return err
	}
	m[v] = e
	return nil
}

// addrPortFlag is an IP:PORT flag, invalid when not given.
type addrPortFlag netip.AddrPort

func (f *addrPortFlag) String() string {
	if a := netip.AddrPort(*f); a.IsValid() {
		return a.String()
	}
	return ""
}

func (f *addrPortFlag) Set(s string) error {
	a, err := netip.ParseAddrPort(s)
	*f = addrPortFlag(a)
	return err
}

// upstreamList holds the DNS upstreams, at most one used per IP family.
type upstreamList []netip.AddrPort

func (l *upstreamList) String() string { return fmt.Sprint([]netip.AddrPort(*l)) }

func (l *upstreamList) Set(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return err
	}
	*l = append(*l, ap)
	return nil
}

// forFamily returns the first upstream of the IP family of a.
func (l upstreamList) forFamily(a netip.Addr) (netip.AddrPort, error) {
	for _, u := range l {
		if u.Addr().Is4() == a.Is4() {
			return u, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no DNS upstream for %s", a)
}

// addrPort returns a TCP or UDP address as an AddrPort with IPv4-mapped
// IPv6 addresses unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
