//go:build linux

package e2e

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/trace"
)

var (
	traceSeed    = flag.Uint64("trace.seed", 0, "TestTraceProperty: seed of the random configurations and connections (0: from the clock)")
	traceConfigs = flag.Int("trace.configs", 8, "TestTraceProperty: random configurations per variant and mode")
	traceConns   = flag.Int("trace.conns", 24, "TestTraceProperty: random connections per configuration")
	traceDebug   = flag.Bool("trace.debug", false, "TestTraceProperty: with a failure, show the pod's rules, and the pod's and the remote's neighbours, addresses, sockets and counters")
)

// TestTraceProperty is the property test of package trace: for random configurations (randconfig)
// applied with shunt, and random connections from the pod (as the app, the proxy, other uids and
// groups; to remote, local, loopback, excluded and included addresses and ports) and from the remote
// (to the app's, excluded, agent and tunnel ports, over every interface), the kernel does with the
// real connection what trace.Walk says it does with its first packet: the listener of the reference
// sidecar that gets it with its original destination, or the server (the pod's app or the remote's)
// that answers at the original destination, or nothing (dropped). For each variant (iptables-nft,
// iptables-legacy, native nftables) and mode (REDIRECT, TPROXY), IPv4 and IPv6. The namespaces of a
// variant serve all its configurations: each is applied with --reconcile over the last one.
//
// A failure names the seed: -args -trace.seed=N replays the same configurations and connections.
func TestTraceProperty(t *testing.T) {
	testutil.RequireRoot(t)
	seed := *traceSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: go test -run TestTraceProperty -args -trace.seed=%d)", seed, seed)
	var mu sync.Mutex
	counts := map[string]int{}
	count := func(key string) {
		mu.Lock()
		counts[key]++
		mu.Unlock()
	}
	t.Cleanup(func() {
		keys := make([]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "  %-36s %d\n", k, counts[k])
		}
		t.Logf("connections checked: by variant/mode/family/direction, by trace verdict, and the cases of the quirks the kernel showed:\n%s", b.String())
	})
	for vi, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			p := newTracePod(t, v)
			for mi, mode := range modes {
				t.Run(mode, func(t *testing.T) {
					p.startProxy(t, mode)
					r := rand.New(rand.NewPCG(seed, uint64(vi*len(modes)+mi)))
					for i := range *traceConfigs {
						cfg := randconfig.Config(r, redirect.DefaultConfig())
						cfg.Mode = redirect.Mode(mode)
						cfg.NativeNFTables = v == native
						p.checkConfig(t, r, seed, i, cfg, count)
						if t.Failed() {
							return
						}
					}
				})
			}
			p.uncapture(t)
		})
	}
}

// tracePod is a pod for the property test: newPod's, plus two more links to the remote, veth7 (an
// interface the random configurations' "veth+" names) and kv0 (a virtual machine's interface: the
// remote routes traceVM's network through it), and more addresses on the remote's lo, in the ranges the
// random configurations include and exclude.
type tracePod struct {
	*pod
	nl *netlink.Handle
}

// traceLink is one of the pod's links to the remote, with both ends' addresses in each family.
type traceLink struct {
	name        string
	pod, remote [2]netip.Addr // IPv4, IPv6
}

var traceLinks = []traceLink{
	{"eth0", [2]netip.Addr{ipv4.pod, ipv6.pod}, [2]netip.Addr{ipv4.remote, ipv6.remote}},
	{"eth1", [2]netip.Addr{ipv4.pod1, ipv6.pod1}, [2]netip.Addr{ipv4.remote1, ipv6.remote1}},
	{"veth7", [2]netip.Addr{ip("10.217.0.1"), ip("fd00:217::1")}, [2]netip.Addr{ip("10.217.0.2"), ip("fd00:217::2")}},
	{"kv0", [2]netip.Addr{ip("10.218.0.1"), ip("fd00:218::1")}, [2]netip.Addr{ip("10.218.0.2"), ip("fd00:218::2")}},
}

// traceVM is an address beyond the pod, which the remote (standing for a virtual machine behind kv0)
// sends to through the pod.
var traceVM = [2]netip.Addr{ip("10.219.0.9"), ip("fd00:219::9")}

// traceRemoteAddrs are on the remote's lo, reached through the pod's default route: in and out of
// the random configurations' CIDRs (10.0.0.0/8, 10.16.0.0/12, 192.168.1.7/32, fd00::/33,
// 2001:db8::/32) and DNS servers (10.96.0.10).
var traceRemoteAddrs = [2][]netip.Addr{
	{ipv4.far, ip("10.96.0.10"), ip("10.17.0.1"), ip("192.168.1.7"), ip("172.20.0.1")},
	{ipv6.far, ip("fd00:96::10"), ip("2001:db8::1"), ip("2001:db9::1"), ip("fd00:8000::1")},
}

func newTracePod(t *testing.T, v variant) *tracePod {
	t.Helper()
	p := &tracePod{pod: newPod(t, v)}
	for i, l := range traceLinks[2:] {
		p.ns.Run(t, "ip", "link", "add", l.name, "index", strconv.Itoa(12+i), "type", "veth",
			"peer", "name", l.name, "index", strconv.Itoa(22+i), "netns", p.remote.Name)
		for fi, f := range families {
			addAddr(t, p.ns, l.name, l.pod[fi], f.bits)
			addAddr(t, p.remote, l.name, l.remote[fi], f.bits)
		}
		for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
			ns.Run(t, "ip", "link", "set", l.name, "addrgenmode", "none", "up")
		}
		for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
			ns.WaitLinkUp(t, l.name)
		}
	}
	// IPv6 neighbour discovery for packets from an address that is not on the link (the replies of
	// the remote's lo addresses; the replies to the virtual machine, from its destination, de-NATed or
	// a transparent socket's) solicits from the link's link-local address, which the topology leaves
	// out: each end's IPv6 neighbour on every link is made permanent.
	podNL, remoteNL := p.ns.Netlink(t), p.remote.Netlink(t)
	for _, l := range traceLinks {
		for _, end := range []struct {
			ns   *testutil.NetNS
			peer *netlink.Handle
			addr netip.Addr
		}{{p.ns, remoteNL, l.remote[1]}, {p.remote, podNL, l.pod[1]}} {
			link, err := end.peer.LinkByName(l.name)
			if err != nil {
				t.Fatalf("%s: %v", l.name, err)
			}
			end.ns.Run(t, "ip", "-6", "neigh", "replace", end.addr.String(), "lladdr", link.Attrs().HardwareAddr.String(), "dev", l.name, "nud", "permanent")
		}
	}
	kv := traceLinks[3]
	for fi, f := range families {
		p.remote.Run(t, "ip", familyFlag(f), "route", "add", netip.PrefixFrom(traceVM[fi], f.bits).Masked().String(), "via", kv.pod[fi].String(), "dev", kv.name)
		for _, a := range traceRemoteAddrs[fi] {
			if a != f.far {
				addAddr(t, p.remote, "lo", a, a.BitLen())
			}
		}
	}
	p.nl = podNL
	return p
}

// podAddrs are the pod's addresses, both families.
func (p *tracePod) podAddrs() []netip.Addr {
	var out []netip.Addr
	for _, l := range traceLinks {
		out = append(out, l.pod[:]...)
	}
	return out
}

// shuntArgs returns the flags and environment that make `shunt iptables` program cfg.
func shuntArgs(cfg redirect.Config) (args, env []string) {
	ports := func(ps []uint16) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = strconv.Itoa(int(p))
		}
		return strings.Join(s, ",")
	}
	ids := func(ids []uint32) string {
		s := make([]string, len(ids))
		for i, id := range ids {
			s[i] = strconv.FormatUint(uint64(id), 10)
		}
		return strings.Join(s, ",")
	}
	list := func(xs []string) string { return strings.Join(xs, ",") }
	inbound := ports(cfg.InboundPorts.Ports)
	if cfg.InboundPorts.All {
		inbound = "*"
	}
	var include []string
	for _, p := range cfg.OutboundIPRanges.Prefixes {
		include = append(include, p.String())
	}
	if cfg.OutboundIPRanges.All {
		include = []string{"*"}
	}
	var exclude, servers []string
	for _, p := range cfg.OutboundIPRangesExclude {
		exclude = append(exclude, p.String())
	}
	for _, s := range cfg.DNSServers {
		servers = append(servers, s.String())
	}
	args = []string{
		"-p", strconv.Itoa(int(cfg.ProxyPort)), "-z", strconv.Itoa(int(cfg.InboundCapturePort)),
		"-e", strconv.Itoa(int(cfg.InboundTunnelPort)), "-u", ids(cfg.ProxyUIDs), "-g", ids(cfg.ProxyGIDs),
		"-m", string(cfg.Mode), "-b", inbound, "-d", ports(cfg.InboundPortsExclude),
		"-i", list(include), "-x", list(exclude), "-q", ports(cfg.OutboundPorts), "-o", ports(cfg.OutboundPortsExclude),
		"-c", list(cfg.ExcludeInterfaces), "-k", list(cfg.KubeVirtInterfaces),
		"-t", strconv.FormatUint(uint64(cfg.TProxyMark), 10), "-r", strconv.FormatUint(uint64(cfg.TProxyRouteTable), 10),
		"--ipv6=" + strconv.FormatBool(cfg.IPv6), "--dns-servers=" + list(servers), "--reconcile",
	}
	for _, b := range []struct {
		set  bool
		flag string
	}{{cfg.RedirectDNS, "--redirect-dns"}, {cfg.CaptureAllDNS, "--capture-all-dns"}, {cfg.DropInvalid, "--drop-invalid"}} {
		if b.set {
			args = append(args, b.flag)
		}
	}
	switch g := cfg.OwnerGroups; {
	case !g.All:
		env = append(env, "ISTIO_OUTBOUND_OWNER_GROUPS="+ids(g.Include))
	case len(g.Exclude) > 0:
		env = append(env, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE="+ids(g.Exclude))
	}
	if l := cfg.HostIPv4LoopbackCIDR; l != netip.MustParsePrefix("127.0.0.1/32") {
		env = append(env, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR="+l.String())
	}
	return args, env
}

// traceCreds are the identities the pod's connections are made as: the app (most often), the proxy in
// both modes, the proxy's uid or gid alone, the other proxy ids and owner groups of the random
// configurations.
var traceCreds = []testutil.Cred{
	appUser, appUser, appUser, proxyUser, tproxyUser, proxyUID, proxyGID, otherGroup, root,
	{UID: 3, GID: 2}, {UID: 4, GID: 1}, {UID: 1000, GID: 4242}, {UID: 1000, GID: 4242}, {UID: 1000, GID: 202},
	{UID: 1000, GID: 202}, {UID: 1000, GID: 888},
}

// traceCase is one connection to make and walk.
type traceCase struct {
	conn trace.Conn
	from *testutil.NetNS
	cred testutil.Cred
	// transparent: the socket is bound to conn.Src with IP_TRANSPARENT and marked conn.Mark, as the
	// proxy's upstream connections to the app are in TPROXY mode.
	transparent bool
	// localPort is the port the connection was made from.
	localPort uint16
}

func (tc *traceCase) String() string {
	c := &tc.conn
	if c.Dir == trace.In {
		return fmt.Sprintf("in %s %s -> %s on %s", c.Proto, c.Src, c.Dst, c.InIface)
	}
	s := fmt.Sprintf("out %s -> %s (via %s) as %v", c.Proto, c.Dst, c.OutIface, tc.cred)
	if c.Src.Addr().IsValid() {
		s += " from " + c.Src.Addr().String()
	}
	if tc.transparent {
		s += fmt.Sprintf(", transparent, mark %d", c.Mark)
	}
	return s
}

// randomCases draws n connections for cfg, whose plan is plan.
func (p *tracePod) randomCases(r *rand.Rand, cfg redirect.Config, plan *redirect.Plan, n int) []traceCase {
	// Ports: the apps', the agent's and the tunnel's, DNS, and those the configuration lists.
	ports := []uint16{appPort, appPort, otherPort, 8081, dnsPort, 15008, 15020, 15021, 15090}
	cfgPorts := slices.Concat(cfg.InboundPorts.Ports, cfg.InboundPortsExclude, cfg.OutboundPorts, cfg.OutboundPortsExclude)
	port := func() uint16 {
		if len(cfgPorts) > 0 && r.IntN(3) == 0 {
			return cfgPorts[r.IntN(len(cfgPorts))]
		}
		return ports[r.IntN(len(ports))]
	}
	proto := func(port uint16) string {
		if port == dnsPort && r.IntN(2) == 0 || r.IntN(12) == 0 {
			return "udp"
		}
		return "tcp"
	}
	pods := p.podAddrs()
	// The TPROXY mark of each family, if its plan routes it.
	var tproxyMark [2]uint32
	for _, fp := range plan.Families {
		if fp.TProxy == nil {
			continue
		}
		for _, f := range fp.Covers {
			if f == redirect.IPv6 {
				tproxyMark[1] = fp.TProxy.Mark
			} else {
				tproxyMark[0] = fp.TProxy.Mark
			}
		}
	}
	hasLoopback := func(a netip.Addr) bool {
		for _, fp := range plan.Families {
			for _, l := range fp.LoopbackAddrs {
				if l.Contains(a) {
					return true
				}
			}
		}
		return a.Is4()
	}
	var cases []traceCase
	for range n {
		fi := r.IntN(2)
		if r.IntN(3) == 0 {
			// In: from the remote end of a link to the pod's address on it, or through kv0 beyond.
			l := traceLinks[r.IntN(len(traceLinks))]
			dst := l.pod[fi]
			if l.name == "kv0" && r.IntN(2) == 0 {
				dst = traceVM[fi]
			}
			pt := port()
			cases = append(cases, traceCase{
				// The source port is the client's ephemeral one; no rule of a plan matches it but
				// DNS's source ports 53 and 15053.
				conn: trace.Conn{Dir: trace.In, Proto: proto(pt), Src: netip.AddrPortFrom(l.remote[fi], 40000),
					Dst: netip.AddrPortFrom(dst, pt), InIface: l.name, PodAddrs: pods},
				from: p.remote,
				cred: root,
			})
			continue
		}
		// Out: to a remote address over each link or the default route, to the pod's own addresses,
		// to loopback addresses, to DNS servers.
		var dst netip.Addr
		var src netip.Addr
		iface := "eth0"
		cred := traceCreds[r.IntN(len(traceCreds))]
		if r.IntN(2) == 0 {
			cred = appUser // what is captured, unless excluded
		}
		pt := port()
		transparent := false
		switch k := r.IntN(12); {
		case k < 3:
			l := traceLinks[r.IntN(3)] // not kv0: nothing answers there for the pod
			dst, iface = l.remote[fi], l.name
		case k < 5:
			dst = traceRemoteAddrs[fi][r.IntN(len(traceRemoteAddrs[fi]))]
		case k < 7:
			dst = traceLinks[r.IntN(len(traceLinks))].pod[fi]
			switch {
			case r.IntN(3) == 0 && hasLoopback(families[fi].passthrough):
				// The proxy's inbound passthrough to the app (F1).
				src = families[fi].passthrough
			case r.IntN(3) == 0 && tproxyMark[fi] != 0:
				// The proxy's transparent upstream to the app in TPROXY mode (F1), from the client: one
				// on eth0 or eth1, which no configuration excludes (the replies to a client behind an
				// excluded interface leave by it, "-o veth+ -j RETURN" coming before the mark's
				// restore in mangle OUTPUT; but then no inbound connection from it is TPROXYed).
				src, transparent, cred = traceLinks[r.IntN(2)].remote[fi], true, tproxyUser
			}
		case k < 9:
			loop := [2][]netip.Addr{{ip("127.0.0.1"), ip("127.1.2.3"), ip("127.0.0.53")}, {ip("::1")}}
			dst = loop[fi][r.IntN(len(loop[fi]))]
		default:
			// DNS (F9): to the configured servers, to others.
			servers := []netip.Addr{ipv4.remote, ip("10.96.0.10"), ip("127.0.0.53"), ipv6.remote, ip("::127.0.0.53")}
			servers = slices.DeleteFunc(append(servers, cfg.DNSServers...), func(a netip.Addr) bool { return a.Is4() != (fi == 0) })
			dst, pt = servers[r.IntN(len(servers))], dnsPort
		}
		c := trace.Conn{Dir: trace.Out, Proto: proto(pt), Dst: netip.AddrPortFrom(dst, pt), OutIface: iface,
			UID: uint32(cred.UID), GID: uint32(cred.GID), PodAddrs: pods}
		if src.IsValid() {
			c.Src = netip.AddrPortFrom(src, 0)
		}
		if transparent {
			c.Proto, c.Mark = "tcp", tproxyMark[fi]
		}
		cases = append(cases, traceCase{conn: c, from: p.ns, cred: cred, transparent: transparent})
	}
	return cases
}

// checkConfig applies cfg and checks random connections against trace.Walk.
func (p *tracePod) checkConfig(t *testing.T, r *rand.Rand, seed uint64, i int, cfg redirect.Config, count func(string)) {
	t.Helper()
	plan, err := redirect.Build(cfg)
	if err != nil {
		t.Fatalf("randconfig: %v", err)
	}
	args, env := shuntArgs(cfg)
	if out, err := p.shuntErr(t, env, append([]string{"iptables"}, args...)...); err != nil {
		t.Fatalf("seed %d config %d: shunt iptables %s (env %q): %v\n%s", seed, i, strings.Join(args, " "), env, err, out)
	}
	p.waitLoopbackAddrs(t, &plan)
	// Connections of earlier configurations must not decide the NAT of these.
	if err := p.nl.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
	failures := 0
	for _, tc := range p.randomCases(r, cfg, &plan, *traceConns) {
		res, werr := trace.Walk(&plan, tc.conn)
		if errors.Is(werr, trace.ErrFamilyNotCovered) {
			res, werr = uncaptured(tc.conn)
		}
		if werr != nil {
			t.Fatalf("seed %d config %d: %s: Walk: %v", seed, i, &tc, werr)
		}
		want := expect(tc.conn, res.Verdict, cfg.DropInvalid)
		got := exchange(tc.from, &tc)
		if got.timeout && tc.transparent {
			if p.natOf(t, &tc, &got) {
				count("transparent upstream REDIRECTed, SYN-ACK unroutable")
			}
		}
		fam := "ipv4"
		if tc.conn.Dst.Addr().Is6() {
			fam = "ipv6"
		}
		listener, _, _ := strings.Cut(res.Verdict.Listener, " ")
		count(fmt.Sprintf("%s/%s/%s/%s", p.variant, cfg.Mode, fam, tc.conn.Dir))
		if tc.conn.InIface == "kv0" && slices.Contains(cfg.KubeVirtInterfaces, "kv0") {
			count("in on a kube-virt interface, " + res.Verdict.Kind.String() + " " + listener)
		}
		if cfg.NativeNFTables && !cfg.IPv6 && fam == "ipv6" {
			count("native nftables with --ipv6=false, IPv6 " + res.Verdict.Kind.String())
		}
		count(strings.TrimSpace("verdict " + res.Verdict.Kind.String() + " " + listener))
		if want.accepts(got) {
			continue
		}
		failures++
		if failures > 3 {
			continue
		}
		walk := trace.Format(&plan, res)
		if *traceDebug {
			for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
				argvs := [][]string{{"ip", "neigh"}, {"ip", "addr"}, {"ss", "-tuanp"}, {"nstat", "-a"}}
				if ns == p.ns {
					for _, l := range p.variant.listings(true) {
						argvs = append(argvs, l.argv)
					}
				}
				for _, argv := range argvs {
					out, err := ns.Exec(nil, nil, argv...)
					walk += fmt.Sprintf("\n$ %s (%s)\n%s%v", argv, ns.Name, out, err)
				}
			}
		}
		t.Errorf("seed %d, config %d: shunt iptables %s %s (env %q)\n%s:\n kernel: %s\n  trace: %s\n%s",
			seed, i, strings.Join(p.variant.args(), " "), strings.Join(args, " "), env, &tc, got, want, walk)
	}
}

// waitLoopbackAddrs waits until lo holds the addresses the plan adds (::6), usable: shunt adds them
// without IFA_F_NODAD, and an address is tentative, refusing bind(2), until the kernel's DAD work has
// run, even on lo where it skips the probing.
func (p *tracePod) waitLoopbackAddrs(t *testing.T, plan *redirect.Plan) {
	t.Helper()
	var want []netip.Prefix
	for _, fp := range plan.Families {
		want = append(want, fp.LoopbackAddrs...)
	}
	if len(want) == 0 {
		return
	}
	lo, err := p.nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := p.nl.AddrList(lo, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatalf("addresses of lo: %v", err)
		}
		ready := 0
		for _, w := range want {
			for _, a := range addrs {
				if pa, ok := netip.AddrFromSlice(a.IP); ok && pa.Unmap() == w.Addr() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
					ready++
					break
				}
			}
		}
		if ready == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lo lacks a usable %v after 5s: %v", want, addrs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// natOf fills o from conntrack for a transparent connection that timed out: a REDIRECT of it (the
// proxy's transparent upstream caught by a hairpin rule) leaves its SYN-ACK, from 127.0.0.1 or ::1 to
// the client's address, without a route, but conntrack shows where its first packet went.
func (p *tracePod) natOf(t *testing.T, tc *traceCase, o *outcome) bool {
	fam := netlink.InetFamily(netlink.FAMILY_V4)
	if tc.conn.Dst.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	flows, err := p.nl.ConntrackTableList(netlink.ConntrackTable, fam)
	if err != nil {
		t.Fatalf("list conntrack: %v", err)
	}
	for _, f := range flows {
		fwd, rev := f.Forward, f.Reverse
		if fwd.Protocol != unix.IPPROTO_TCP || fwd.SrcPort != tc.localPort || fwd.DstPort != tc.conn.Dst.Port() ||
			!fwd.SrcIP.Equal(tc.conn.Src.Addr().AsSlice()) || !fwd.DstIP.Equal(tc.conn.Dst.Addr().AsSlice()) {
			continue
		}
		if l, ok := listenerOf[rev.SrcPort]; ok && rev.SrcIP.IsLoopback() {
			o.listener, o.orig = l, tc.conn.Dst
			o.reply += fmt.Sprintf(" (conntrack: REDIRECTed to %s, its SYN-ACK unroutable)", net.JoinHostPort(rev.SrcIP.String(), strconv.Itoa(int(rev.SrcPort))))
			return true
		}
	}
	return false
}

// outcome is what happened to a real connection.
type outcome struct {
	// listener is the reference sidecar's listener that got the connection ("outbound", "inbound",
	// "dns"), with the original destination it read (orig, not known for UDP DNS).
	listener string
	orig     netip.AddrPort
	// server is the app server that answered ("pod", "remote"), at local (TCP only).
	server string
	local  netip.AddrPort
	// refused: a TCP reset or ICMP port unreachable; timeout: no answer.
	refused, timeout bool
	reply            string
	err              error
}

func (o outcome) String() string {
	if o.err != nil {
		return fmt.Sprintf("error %v (read %q)", o.err, o.reply)
	}
	return fmt.Sprintf("%q", o.reply)
}

// exchange makes tc's connection from ns, sends a line and reads the first tag of the reply.
func exchange(ns *testutil.NetNS, tc *traceCase) outcome {
	var o outcome
	err := ns.Do(func() error {
		reply, err := exchangeAs(tc)
		o.reply = reply
		return err
	})
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		o.refused = true
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS), errors.Is(err, unix.ETIMEDOUT),
		errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.ENETUNREACH):
		// Nobody answered (or a router said nobody is there).
		o.timeout = true
	case err != nil:
		o.err = err
	}
	if err == nil || o.reply != "" {
		o.parse()
	}
	if err != nil && o.reply == "" {
		o.err = err
		if o.refused || o.timeout {
			o.err = nil
			o.reply = err.Error()
		}
	}
	return o
}

// parse reads the first tag of o.reply (see refproxy and echoserver).
func (o *outcome) parse() {
	first, _, _ := strings.Cut(strings.TrimSpace(o.reply), ";")
	kv := map[string]string{}
	var keys []string
	for f := range strings.FieldsSeq(first) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return
	}
	orig, _ := netip.ParseAddrPort(kv["orig"])
	switch keys[0] {
	case "proxy":
		o.listener, o.orig = kv["proxy"], orig
	case "dns":
		if kv["dns"] == "proxy" {
			o.listener, o.orig = "dns", orig
			break
		}
		o.server = kv["dns"]
	case "app":
		o.server = kv["app"]
		o.local, _ = netip.ParseAddrPort(kv["local"])
	}
}

// exchangeAs runs on a locked thread of the namespace: it takes on cred for this thread only (the
// socket's owner is who creates it), which then never runs anything else, and makes the exchange with
// blocking system calls bounded by timeouts.
func exchangeAs(tc *traceCase) (string, error) {
	cred, proto, dst := tc.cred, tc.conn.Proto, tc.conn.Dst
	// Never unlocked: the thread ends with this goroutine (netns.Do runs it in its own), so that no
	// other goroutine ever runs with its credentials.
	runtime.LockOSThread()
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return "", fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(cred.GID), uintptr(cred.GID), uintptr(cred.GID)); e != 0 {
		return "", fmt.Errorf("setresgid %d: %w", cred.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(cred.UID), uintptr(cred.UID), uintptr(cred.UID)); e != 0 {
		return "", fmt.Errorf("setresuid %d: %w", cred.UID, e)
	}
	domain, typ := unix.AF_INET, unix.SOCK_STREAM
	if dst.Addr().Is6() {
		domain = unix.AF_INET6
	}
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if tc.transparent {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if dst.Addr().Is6() {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return "", fmt.Errorf("transparent: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(tc.conn.Mark)); err != nil {
			return "", fmt.Errorf("SO_MARK: %w", err)
		}
	}
	if src := tc.conn.Src.Addr(); tc.conn.Dir == trace.Out && src.IsValid() {
		var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: src.As16()}
		if src.Is4() {
			sa = &unix.SockaddrInet4{Addr: src.As4()}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return "", fmt.Errorf("bind %s: %w", src, err)
		}
	}
	connectTimeout := unix.NsecToTimeval((1500 * time.Millisecond).Nanoseconds())
	readTimeout := unix.NsecToTimeval((4 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &connectTimeout); err != nil {
		return "", err
	}
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	if dst.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	}
	err = unix.Connect(fd, sa)
	if local, gerr := unix.Getsockname(fd); gerr == nil {
		switch a := local.(type) {
		case *unix.SockaddrInet4:
			tc.localPort = uint16(a.Port)
		case *unix.SockaddrInet6:
			tc.localPort = uint16(a.Port)
		}
	}
	if err != nil {
		return "", fmt.Errorf("connect %s: %w", dst, err)
	}
	if _, err := unix.Write(fd, []byte("hello\n")); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	if proto == "udp" {
		// A datagram dropped on its way shows as a timeout as well.
		readTimeout = connectTimeout
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &readTimeout); err != nil {
		return "", err
	}
	var reply []byte
	buf := make([]byte, 4096)
	for !strings.ContainsAny(string(reply), ";\n") {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return string(reply), fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			break
		}
		reply = append(reply, buf[:n]...)
		if proto == "udp" {
			break
		}
	}
	return string(reply), nil
}

// expectation is what trace.Walk's verdict allows the kernel to do with the real connection.
type expectation struct {
	verdict string
	// listener and port: captured by that listener of the sidecar (orig checked when valid).
	listener string
	orig     netip.AddrPort
	// servers may answer at local (TCP) or refuse: delivered or passed through.
	servers []string
	local   netip.AddrPort
	timeout bool
	// mute: no answer is fine too (see expect).
	mute bool
}

func (e expectation) String() string { return e.verdict }

// listenerOf names the reference sidecar's listener on a port.
var listenerOf = map[uint16]string{redirect.DefaultProxyPort: "outbound", redirect.DefaultInboundPort: "inbound", redirect.DNSProxyPort: "dns"}

func expect(c trace.Conn, v trace.Verdict, dropInvalid bool) expectation {
	e := expectation{verdict: v.String()}
	// The port unreachable error for a UDP flow in a conntrack zone is looked up in zone 0, found
	// INVALID, and dropped by --drop-invalid: no refusal comes back.
	lostRefusal := c.Proto == "udp" && v.Zone != 0 && dropInvalid
	switch v.Kind {
	case trace.Captured, trace.TProxied:
		e.listener, e.orig = listenerOf[v.Port], v.OrigDst
		if e.listener == "" {
			e.listener = "port " + strconv.Itoa(int(v.Port))
		}
	case trace.Delivered:
		e.servers, e.local, e.mute = []string{"pod"}, v.Dst, lostRefusal
	case trace.PassedThrough:
		e.servers, e.local = []string{"remote"}, v.Dst
		// The remote's DNS server listens on the wildcard address: it answers a query to an address
		// of its lo from the address of its interface, which the client's connected socket ignores.
		// Nothing answers for an address the remote does not have.
		e.mute = c.Proto == "udp" && slices.Contains(traceRemoteAddrs[familyIndex(v.Dst.Addr())], v.Dst.Addr()) ||
			!remoteHas(v.Dst.Addr()) || lostRefusal
	case trace.Dropped:
		e.timeout = true
	}
	return e
}

// remoteHas reports whether a is one of the remote's addresses.
func remoteHas(a netip.Addr) bool {
	for _, l := range traceLinks {
		if slices.Contains(l.remote[:], a) {
			return true
		}
	}
	return slices.Contains(traceRemoteAddrs[familyIndex(a)], a)
}

func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// uncaptured walks c through no rules at all: what the kernel does with a connection of a family the
// plan does not cover.
func uncaptured(c trace.Conn) (trace.Result, error) {
	fam := redirect.IPv4
	if c.Dst.Addr().Is6() {
		fam = redirect.IPv6
	}
	return trace.Walk(&redirect.Plan{Families: []redirect.FamilyPlan{{Family: fam, Covers: []redirect.Family{fam}}}}, c)
}

func (e expectation) accepts(o outcome) bool {
	switch {
	case o.err != nil:
		return false
	case e.timeout:
		return o.timeout
	case e.listener != "":
		return o.listener == e.listener && (!o.orig.IsValid() || o.orig == e.orig)
	case o.refused, o.timeout && e.mute:
		return true
	}
	return o.server != "" && slices.Contains(e.servers, o.server) && (!o.local.IsValid() || o.local == e.local)
}
