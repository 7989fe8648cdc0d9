//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestDNS sends the app's DNS queries over UDP (sendto(2) on an unconnected socket, and
// connect(2)), IPv4, IPv6 and IPv4-mapped, and over TCP, and checks that those to a captured
// server reach the DNS proxy and that the answer comes from the server asked; the proxy's own
// queries (uid 1337), a server not listed, and a pod without DNS capture are left alone.
func TestDNS(t *testing.T) {
	e := newEnv(t)
	e.dnsServers()
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15053", "-name", "dns") // TCP
	e.start(e.pod, proxyCred, "dnsproxy", "-upstream4", ap(remoteIP4, 53).String(), "-upstream6", ap(remoteIP6, 53).String())

	cfg := testConfig()
	cfg.RedirectDNS = true
	cfg.DNSServers = []netip.Addr{remoteIP4, remoteIP6}
	e.addPod(cfg, false)

	dns4, dns6, unlisted := ap(remoteIP4, 53), ap(remoteIP6, 53), ap(remote2IP4, 53)
	// What the app's query gets: through the DNS proxy, whose own query reached the remote
	// from the pod's address, or straight from the remote.
	proxied := func(pod netip.Addr) string { return "dns=proxy;dns=remote peer=" + pod.String() }
	direct := func(name string, pod netip.Addr) string { return "dns=" + name + " peer=" + pod.String() }

	for _, c := range []struct {
		name     string
		args     []string
		target   netip.AddrPort
		reply    string
		captured bool
	}{
		{"IPv4/sendto", nil, dns4, proxied(podIP4), true},
		{"IPv4/connect", []string{"-connect"}, dns4, proxied(podIP4), true},
		{"IPv6/sendto", nil, dns6, proxied(podIP6), true},
		{"IPv6/connect", []string{"-connect"}, dns6, proxied(podIP6), true},
		{"IPv4Mapped/sendto", []string{"-mapped"}, dns4, proxied(podIP4), true},
		{"IPv4Mapped/connect", []string{"-mapped", "-connect"}, dns4, proxied(podIP4), true},
		{"UnlistedServer/sendto", nil, unlisted, direct("remote2", podIP4), false},
		{"UnlistedServer/connect", []string{"-connect"}, unlisted, direct("remote2", podIP4), false},
	} {
		t.Run("UDP/"+c.name, func(t *testing.T) {
			before := e.stats()
			r := e.dnsApp(t, appCred, append(c.args, c.target.String())...)
			checkDNS(t, r, []dnsExpect{{c.target, c.reply}}, slices.Contains(c.args, "-connect"))
			var want uint64
			if c.captured {
				want = 1
			}
			pod, err := PodFromConfig(e.cookie, &cfg, []netip.Addr{podIP4, podIP6})
			if err != nil {
				t.Fatal(err)
			}
			if d := DecideConnect(&pod, Connect{UDP: true, Dst: c.target, UID: uint32(appCred.UID), GID: uint32(appCred.GID)}); (d.Verdict == ConnectDNS) != c.captured {
				t.Errorf("DecideConnect: %+v, the kernel captured %t", d, c.captured)
			}
			if d := statsDelta(before, e.stats()); d.DNSRedirected != want || d.DNSAnswered != want {
				t.Errorf("stats %+v: want %d DNS datagram or connect redirected and %d answer rewritten", d, want, want)
			}
		})
	}

	t.Run("UDP/ProxyOwnQueries", func(t *testing.T) {
		before := e.stats()
		checkDNS(t, e.dnsApp(t, proxyCred, dns4.String()), []dnsExpect{{dns4, direct("remote", podIP4)}}, false)
		checkDNS(t, e.dnsApp(t, proxyCred, "-connect", dns6.String()), []dnsExpect{{dns6, direct("remote", podIP6)}}, true)
		checkDNS(t, e.dnsApp(t, gidCred, dns4.String()), []dnsExpect{{dns4, direct("remote", podIP4)}}, false)
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 0 || d.DNSAnswered != 0 {
			t.Errorf("stats %+v: the proxy's queries were touched", d)
		}
	})

	// A socket connected to a captured server, disconnected (AF_UNSPEC), then connected to one
	// that is not: getpeername shows the second, whose answer comes straight from it.
	t.Run("UDP/Reconnect", func(t *testing.T) {
		r := e.dnsApp(t, appCred, "-connect", dns4.String(), unlisted.String())
		checkDNS(t, r, []dnsExpect{{unlisted, direct("remote2", podIP4)}}, true)
	})

	// One unconnected socket asks a captured server and one that is not: the mapping of the first
	// survives the second, each answer comes from the server asked.
	t.Run("UDP/OneSocketTwoServers", func(t *testing.T) {
		before := e.stats()
		r := e.dnsApp(t, appCred, "-one-socket", dns4.String(), unlisted.String())
		checkDNS(t, r, []dnsExpect{{dns4, proxied(podIP4)}, {unlisted, direct("remote2", podIP4)}}, false)
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 1 || d.DNSAnswered != 1 {
			t.Errorf("stats %+v: want 1 datagram redirected and 1 answer rewritten", d)
		}
	})

	t.Run("TCP", func(t *testing.T) {
		before := e.stats()
		check(t, e.app(e.pod, appCred, dns4.String(), dns6.String(), unlisted.String()), []expect{
			{target: dns4.String(), redirected: true, via: "dns", orig: dns4, server: "remote"},
			{target: dns6.String(), redirected: true, via: "dns", orig: dns6, server: "remote"},
			{target: unlisted.String(), redirected: true, orig: unlisted, server: "remote"}, // the outbound proxy
		})
		check(t, e.app(e.pod, proxyCred, dns4.String(), dns6.String()), []expect{
			{target: dns4.String(), server: "remote"},
			{target: dns6.String(), server: "remote"},
		})
		if d := statsDelta(before, e.stats()); d.ConnectsRedirected != 3 || d.DNSRedirected != 0 {
			t.Errorf("stats %+v: want 3 connects redirected, no UDP DNS", d)
		}
	})

	t.Run("CaptureAllDNS", func(t *testing.T) {
		cfg := testConfig()
		cfg.RedirectDNS = true
		cfg.CaptureAllDNS = true
		e.addPod(cfg, false)
		before := e.stats()
		checkDNS(t, e.dnsApp(t, appCred, unlisted.String()), []dnsExpect{{unlisted, proxied(podIP4)}}, false)
		checkDNS(t, e.dnsApp(t, appCred, "-connect", dns6.String()), []dnsExpect{{dns6, proxied(podIP6)}}, true)
		checkDNS(t, e.dnsApp(t, proxyCred, unlisted.String()), []dnsExpect{{unlisted, direct("remote2", podIP4)}}, false)
		check(t, e.app(e.pod, appCred, unlisted.String()), []expect{
			{target: unlisted.String(), redirected: true, via: "dns", orig: unlisted, server: "remote"},
		})
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 2 || d.DNSAnswered != 2 || d.ConnectsRedirected != 1 {
			t.Errorf("stats %+v: want 2 UDP queries redirected and answered, 1 TCP connect redirected", d)
		}
	})

	// The rest of decide() applies to UDP as to TCP: owner groups, excluded ports.
	t.Run("OwnerGroupsInclude", func(t *testing.T) {
		cfg := testConfig()
		cfg.RedirectDNS = true
		cfg.DNSServers = []netip.Addr{remoteIP4, remoteIP6}
		cfg.OwnerGroups = redirect.GroupFilter{Include: []uint32{2000}}
		e.addPod(cfg, false)
		checkDNS(t, e.dnsApp(t, appCred, dns4.String()), []dnsExpect{{dns4, direct("remote", podIP4)}}, false)
		checkDNS(t, e.dnsApp(t, &testutil.Cred{UID: 1002, GID: 2000}, dns4.String()), []dnsExpect{{dns4, proxied(podIP4)}}, false)
	})

	t.Run("ExcludedPort53", func(t *testing.T) {
		cfg := testConfig()
		cfg.RedirectDNS = true
		cfg.DNSServers = []netip.Addr{remoteIP4, remoteIP6}
		cfg.OutboundPortsExclude = append(cfg.OutboundPortsExclude, 53)
		e.addPod(cfg, false)
		before := e.stats()
		checkDNS(t, e.dnsApp(t, appCred, dns4.String()), []dnsExpect{{dns4, direct("remote", podIP4)}}, false)
		checkDNS(t, e.dnsApp(t, appCred, "-connect", dns6.String()), []dnsExpect{{dns6, direct("remote", podIP6)}}, true)
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 0 {
			t.Errorf("stats %+v: DNS to an excluded port redirected", d)
		}
	})

	t.Run("IPv6NotCaptured", func(t *testing.T) {
		cfg := testConfig()
		cfg.IPv6 = false
		cfg.RedirectDNS = true
		cfg.DNSServers = []netip.Addr{remoteIP4, remoteIP6}
		e.addPod(cfg, false)
		before := e.stats()
		checkDNS(t, e.dnsApp(t, appCred, dns6.String()), []dnsExpect{{dns6, direct("remote", podIP6)}}, false)
		checkDNS(t, e.dnsApp(t, appCred, dns4.String()), []dnsExpect{{dns4, proxied(podIP4)}}, false)
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 1 || d.DNSAnswered != 1 {
			t.Errorf("stats %+v: want only the IPv4 query redirected", d)
		}
	})

	t.Run("NoDNSCapture", func(t *testing.T) {
		e.addPod(testConfig(), false)
		before := e.stats()
		checkDNS(t, e.dnsApp(t, appCred, dns4.String()), []dnsExpect{{dns4, direct("remote", podIP4)}}, false)
		checkDNS(t, e.dnsApp(t, appCred, "-connect", dns6.String()), []dnsExpect{{dns6, direct("remote", podIP6)}}, true)
		if d := statsDelta(before, e.stats()); d.DNSRedirected != 0 || d.DNSAnswered != 0 {
			t.Errorf("stats %+v: DNS touched without DNS capture", d)
		}
	})
}

// dnsServers starts UDP DNS servers of this test process (outside the test cgroup) in the remote
// namespace, one per address so that each answers from its own: "dns=remote peer=IP" on
// remoteIP4 and remoteIP6, "dns=remote2 peer=IP" on remote2IP4, port 53.
func (e *env) dnsServers() {
	e.t.Helper()
	for _, s := range []struct {
		addr netip.Addr
		name string
	}{{remoteIP4, "remote"}, {remoteIP6, "remote"}, {remote2IP4, "remote2"}} {
		var pc *net.UDPConn
		err := e.remote.Do(func() error {
			var err error
			pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap(s.addr, 53)))
			return err
		})
		if err != nil {
			e.t.Fatalf("listen on udp %s: %v", ap(s.addr, 53), err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 512)
			for {
				_, from, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteToUDPAddrPort([]byte("dns="+s.name+" peer="+from.Addr().Unmap().String()), from)
			}
		}()
		e.t.Cleanup(func() {
			pc.Close()
			<-done
		})
	}
}

// dnsReply is one datagram the dnsapp helper received: its payload and its source as
// recvfrom(2) reported it.
type dnsReply struct {
	Data string `json:"data"`
	From string `json:"from"`
}

// dnsResult is what the dnsapp helper prints.
type dnsResult struct {
	Replies []dnsReply `json:"replies"`
	Peer    string     `json:"peer"` // getpeername(2) of a connected socket
	Err     string     `json:"err,omitempty"`
}

// dnsApp runs the dnsapp helper in the pod as cred and returns what it printed.
func (e *env) dnsApp(t *testing.T, cred *testutil.Cred, args ...string) dnsResult {
	t.Helper()
	cmd := e.command(e.pod, cred, "dnsapp", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dnsapp %v: %v\n%s", args, err, stderr.String())
	}
	var r dnsResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("dnsapp output %q: %v", stdout.String(), err)
	}
	return r
}

// dnsExpect is an answer the app must have received: from the server it asked, with data.
type dnsExpect struct {
	server netip.AddrPort
	data   string
}

// checkDNS checks that r holds the answers of want, in any order, each from its server as the
// app asked it; connected says the socket was connected, and getpeername must show the server.
func checkDNS(t *testing.T, r dnsResult, want []dnsExpect, connected bool) {
	t.Helper()
	if r.Err != "" {
		t.Errorf("dnsapp: %s (replies %+v)", r.Err, r.Replies)
		return
	}
	if len(r.Replies) != len(want) {
		t.Errorf("replies %+v, want %+v", r.Replies, want)
		return
	}
	left := append([]dnsReply(nil), r.Replies...)
	for _, w := range want {
		found := false
		for i, got := range left {
			from, err := netip.ParseAddrPort(got.From)
			if err == nil && netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == w.server && strings.HasPrefix(got.Data, w.data) {
				left = append(left[:i], left[i+1:]...)
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no answer %q from %s among %+v", w.data, w.server, r.Replies)
		}
	}
	if connected {
		peer, err := netip.ParseAddrPort(r.Peer)
		if err != nil || netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()) != want[0].server {
			t.Errorf("getpeername %q, want the server asked, %s", r.Peer, want[0].server)
		}
	}
}

// runDNSProxy is the agent's DNS proxy: it answers each datagram to 127.0.0.1 and ::1 at -port
// with "dns=proxy;" and the answer of the upstream of the family it arrived in, asked from an
// unconnected socket of its own; an answer that does not come from the upstream is an error.
func runDNSProxy(args []string) error {
	fs := flag.NewFlagSet("dnsproxy", flag.ContinueOnError)
	port := fs.Int("port", 15053, "port")
	up4 := fs.String("upstream4", "", "IPv4 upstream")
	up6 := fs.String("upstream6", "", "IPv6 upstream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 2)
	for _, l := range []struct{ listen, upstream string }{
		{fmt.Sprintf("127.0.0.1:%d", *port), *up4},
		{fmt.Sprintf("[::1]:%d", *port), *up6},
	} {
		upstream, err := netip.ParseAddrPort(l.upstream)
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", l.listen)
		if err != nil {
			return err
		}
		go func() { errc <- serveDNSProxy(pc.(*net.UDPConn), upstream) }()
	}
	fmt.Println("ready")
	return <-errc
}

func serveDNSProxy(pc *net.UDPConn, upstream netip.AddrPort) error {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		query := bytes.Clone(buf[:n])
		go func() {
			_, _ = pc.WriteToUDPAddrPort(append([]byte("dns=proxy;"), forwardDNS(upstream, query)...), from)
		}()
	}
}

func forwardDNS(upstream netip.AddrPort, query []byte) []byte {
	up, err := net.ListenUDP("udp", nil)
	if err != nil {
		return []byte("error=" + err.Error())
	}
	defer up.Close()
	_ = up.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := up.WriteToUDPAddrPort(query, upstream); err != nil {
		return []byte("error=" + err.Error())
	}
	buf := make([]byte, 512)
	n, src, err := up.ReadFromUDPAddrPort(buf)
	if err != nil {
		return []byte("error=" + err.Error())
	}
	if src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port()); src != upstream {
		return fmt.Appendf(nil, "error=answer from %s, asked %s", src, upstream)
	}
	return buf[:n]
}

// runDNSApp sends "query" to each target over UDP and prints a dnsResult with the answers and
// their sources as recvfrom(2) reports them. Each target gets its own socket unless -one-socket
// (then every query is sent before any answer is read); -connect connects the socket to each
// target in turn (disconnecting in between) and sends to the last with write(2); -mapped uses an AF_INET6 socket and
// IPv4-mapped addresses.
func runDNSApp(args []string) error {
	fs := flag.NewFlagSet("dnsapp", flag.ContinueOnError)
	connect := fs.Bool("connect", false, "connect the socket")
	mapped := fs.Bool("mapped", false, "AF_INET6 socket, IPv4-mapped targets")
	oneSocket := fs.Bool("one-socket", false, "one unconnected socket for every target")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var r dnsResult
	if err := dnsQueries(fs.Args(), *connect, *mapped, *oneSocket, &r); err != nil {
		r.Err = err.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func dnsQueries(targets []string, connect, mapped, oneSocket bool, r *dnsResult) error {
	if len(targets) == 0 || (oneSocket && connect) || (!oneSocket && !connect && len(targets) > 1) {
		return errors.New("want one target, or several with -one-socket or -connect")
	}
	var sas []unix.Sockaddr
	family := 0
	for _, target := range targets {
		a, err := netip.ParseAddrPort(target)
		if err != nil {
			return err
		}
		f := unix.AF_INET6
		var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
		if a.Addr().Is4() && !mapped {
			f = unix.AF_INET
			sa = &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
		}
		if family != 0 && f != family {
			return errors.New("targets of both families on one socket")
		}
		family = f
		sas = append(sas, sa)
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return err
	}
	query := []byte("query")
	if connect {
		// Connected to each target in turn, the socket asks the last. In between it disconnects:
		// connected to the DNS proxy, the socket is bound to loopback.
		for i, sa := range sas {
			if i > 0 {
				if err := disconnect(fd); err != nil {
					return err
				}
			}
			if err := unix.Connect(fd, sa); err != nil {
				return fmt.Errorf("connect: %w", err)
			}
		}
		sas = sas[len(sas)-1:]
		peer, err := unix.Getpeername(fd)
		if err != nil {
			return fmt.Errorf("getpeername: %w", err)
		}
		r.Peer = sockaddrString(peer)
		if _, err := unix.Write(fd, query); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	} else {
		for _, sa := range sas {
			if err := unix.Sendto(fd, query, 0, sa); err != nil {
				return fmt.Errorf("sendto: %w", err)
			}
		}
	}
	buf := make([]byte, 512)
	for range sas {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("recvfrom: %w", err)
		}
		r.Replies = append(r.Replies, dnsReply{Data: string(buf[:n]), From: sockaddrString(from)})
	}
	return nil
}

// disconnect dissolves fd's association with connect(2) to AF_UNSPEC.
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return fmt.Errorf("disconnect: %w", errno)
	}
	return nil
}
