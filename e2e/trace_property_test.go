//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/sockwait"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
)

var (
	traceSeed    = flag.Uint64("trace.seed", 0, "TestTraceProperty: seed of the random configurations and connections (0: from the clock)")
	traceConfigs = flag.Int("trace.configs", 8, "TestTraceProperty: random configurations per variant and mode")
	traceConns   = flag.Int("trace.conns", 24, "TestTraceProperty: random connections per configuration")
	traceDebug   = flag.Bool("trace.debug", false, "TestTraceProperty: with a failure, show the pod's rules, and the pod's and the remote's neighbours, addresses, sockets and counters")
)

// TestTraceProperty is the property test of `shunt trace`: for random configurations (randconfig)
// applied with `shunt iptables --reconcile`, and random connections from the pod (as the app, the
// proxy, other uids and groups; to remote, local, loopback, excluded and included addresses and
// ports) and from the remote (to the app's, excluded, agent and tunnel ports, over every interface),
// the kernel does with the real connection what `shunt trace --json` of the same settings says it
// does with its first packet: the listener of the reference sidecar that gets it with its original
// destination, or the server (the pod's app or the remote's) that answers at the original
// destination, or nothing (dropped). Once per configuration, `shunt trace --network-namespace` of the
// rules the pod holds must agree with the trace of the settings. For each variant (iptables-nft,
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
	start := time.Now()
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
		t.Logf("in %s, with %d runs of shunt trace", time.Since(start).Round(time.Second), counts["runs of shunt trace"])
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
						p.checkConfig(t, r, seed, i, randconfig.Draw(r, mode), count)
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

// traceCreds are the identities the pod's connections are made as: the app (most often), the proxy in
// both modes, the proxy's uid or gid alone, the other proxy ids and owner groups of the random
// configurations.
var traceCreds = []testutil.Cred{
	appUser, appUser, appUser, proxyUser, tproxyUser, proxyUID, proxyGID, otherGroup, root,
	{UID: 3, GID: 2}, {UID: 4, GID: 1}, {UID: 1000, GID: 4242}, {UID: 1000, GID: 4242}, {UID: 1000, GID: 202},
	{UID: 1000, GID: 202}, {UID: 1000, GID: 888},
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

// traceConn is a connection to make and trace, as `shunt trace` takes it.
type traceConn struct {
	in    bool   // --direction in (else out)
	proto string // --proto
	// src is --src: in, the sender's ADDR:PORT; out, the address the socket binds, if valid.
	src, dst netip.AddrPort
	iface    string // --iface
	uid, gid uint32 // --uid, --gid (out)
}

// args are c's flags of `shunt trace`, with the pod's addresses pods.
func (c *traceConn) args(pods []netip.Addr) []string {
	args := []string{"--direction", "out", "--proto", c.proto, "--dst", c.dst.String(), "--iface", c.iface}
	if c.in {
		args[1] = "in"
		args = append(args, "--src", c.src.String())
	} else {
		args = append(args, "--uid", strconv.FormatUint(uint64(c.uid), 10), "--gid", strconv.FormatUint(uint64(c.gid), 10))
		if c.src.Addr().IsValid() {
			args = append(args, "--src", c.src.Addr().String())
		}
	}
	ips := make([]string, len(pods))
	for i, a := range pods {
		ips[i] = a.String()
	}
	return append(args, "--pod-ip", strings.Join(ips, ","))
}

// traceCase is one connection to make and trace.
type traceCase struct {
	conn traceConn
	from *testutil.NetNS
	cred testutil.Cred
}

func (tc *traceCase) String() string {
	c := &tc.conn
	if c.in {
		return fmt.Sprintf("in %s %s -> %s on %s", c.proto, c.src, c.dst, c.iface)
	}
	s := fmt.Sprintf("out %s -> %s (via %s) as %v", c.proto, c.dst, c.iface, tc.cred)
	if c.src.Addr().IsValid() {
		s += " from " + c.src.Addr().String()
	}
	return s
}

// randomCases draws n connections for s; loopback are the addresses lo holds with its rules.
func (p *tracePod) randomCases(r *rand.Rand, s *randconfig.Settings, loopback []netip.Prefix, n int) []traceCase {
	// Ports: the apps', the agent's and the tunnel's, DNS, and those the configuration lists.
	ports := []uint16{appPort, appPort, otherPort, 8081, dnsPort, 15008, 15020, 15021, 15090}
	port := func() uint16 {
		if len(s.Ports) > 0 && r.IntN(3) == 0 {
			return s.Ports[r.IntN(len(s.Ports))]
		}
		return ports[r.IntN(len(ports))]
	}
	proto := func(port uint16) string {
		if port == dnsPort && r.IntN(2) == 0 || r.IntN(12) == 0 {
			return "udp"
		}
		return "tcp"
	}
	onLoopback := func(a netip.Addr) bool {
		return slices.ContainsFunc(loopback, func(p netip.Prefix) bool { return p.Contains(a) })
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
				conn: traceConn{in: true, proto: proto(pt), src: netip.AddrPortFrom(l.remote[fi], 40000),
					dst: netip.AddrPortFrom(dst, pt), iface: l.name},
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
		switch k := r.IntN(12); {
		case k < 3:
			l := traceLinks[r.IntN(3)] // not kv0: nothing answers there for the pod
			dst, iface = l.remote[fi], l.name
		case k < 5:
			dst = traceRemoteAddrs[fi][r.IntN(len(traceRemoteAddrs[fi]))]
		case k < 7:
			dst = traceLinks[r.IntN(len(traceLinks))].pod[fi]
			if r.IntN(3) == 0 && onLoopback(families[fi].passthrough) {
				// The proxy's inbound passthrough to the app (F1).
				src = families[fi].passthrough
			}
			// Not drawn: the proxy's transparent upstream to the app in TPROXY mode (F1), from the
			// client's address with IP_TRANSPARENT and SO_MARK: shunt trace takes no socket mark.
		case k < 9:
			loop := [2][]netip.Addr{{ip("127.0.0.1"), ip("127.1.2.3"), ip("127.0.0.53")}, {ip("::1")}}
			dst = loop[fi][r.IntN(len(loop[fi]))]
		default:
			// DNS (F9): to the configured servers, to others.
			servers := []netip.Addr{ipv4.remote, ip("10.96.0.10"), ip("127.0.0.53"), ipv6.remote, ip("::127.0.0.53")}
			servers = slices.DeleteFunc(append(servers, s.DNSServers...), func(a netip.Addr) bool { return a.Is4() != (fi == 0) })
			dst, pt = servers[r.IntN(len(servers))], dnsPort
		}
		c := traceConn{proto: proto(pt), dst: netip.AddrPortFrom(dst, pt), iface: iface, uid: uint32(cred.UID), gid: uint32(cred.GID)}
		if src.IsValid() {
			c.src = netip.AddrPortFrom(src, 0)
		}
		cases = append(cases, traceCase{conn: c, from: p.ns, cred: cred})
	}
	return cases
}

// traceReport is what `shunt trace --json` prints, the fields the test reads.
type traceReport struct {
	Path    []string     `json:"path"`
	Verdict traceVerdict `json:"verdict"`
}

// traceVerdict is the verdict of `shunt trace --json`.
type traceVerdict struct {
	Kind     string `json:"kind"` // delivered, passed through, captured, TPROXYed, dropped
	Port     uint16 `json:"port"`
	Listener string `json:"listener"`
	OrigDst  string `json:"orig_dst"`
	Dst      string `json:"dst"`
	Iface    string `json:"iface"`
	Zone     uint16 `json:"zone"`
	Text     string `json:"text"`
	// uncovered: shunt trace refused the connection, of a family the settings program no rules for.
	uncovered bool
}

// errUncovered is the end of shunt trace's error for a connection of a family the settings program
// no rules for (trace.ErrFamilyNotCovered).
const errUncovered = "address family not covered by the plan"

// shuntTrace runs `shunt trace --json` of the settings s (with the variant's backend, native nftables
// or iptables), not of any namespace's rules, for c.
func (p *tracePod) shuntTrace(shunt string, s *randconfig.Settings, c *traceConn) (traceReport, error) {
	var args []string
	if p.variant == native {
		args = append(args, "--native-nftables")
	}
	args = slices.Concat([]string{"trace", "--json"}, args, s.Args, c.args(p.podAddrs()))
	cmd := exec.Command(shunt, args...)
	cmd.Env = append(os.Environ(), s.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return parseTrace(stdout.Bytes(), stderr.Bytes(), err, args)
}

// parseTrace returns the report of a run of `shunt trace --json` that printed stdout and stderr and
// ended with err.
func parseTrace(stdout, stderr []byte, err error, args []string) (traceReport, error) {
	var rep traceReport
	if err != nil {
		if bytes.Contains(stderr, []byte(errUncovered)) || strings.Contains(err.Error(), errUncovered) {
			rep.Verdict.uncovered = true
			rep.Verdict.Text = "not covered: no rules"
			return rep, nil
		}
		return rep, fmt.Errorf("shunt %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr))
	}
	if err := json.Unmarshal(stdout, &rep); err != nil {
		return rep, fmt.Errorf("shunt %s: %w:\n%s", strings.Join(args, " "), err, stdout)
	}
	return rep, nil
}

// traceAll runs shuntTrace for every case, a few at a time: the traces of the settings need no
// namespace, and their process starts overlap with each other.
func (p *tracePod) traceAll(t *testing.T, s *randconfig.Settings, cases []traceCase) []traceReport {
	t.Helper()
	shunt := bins.Path(t, pkgShunt)
	reps := make([]traceReport, len(cases))
	errs := make([]error, len(cases))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range cases {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			reps[i], errs[i] = p.shuntTrace(shunt, s, &cases[i].conn)
			<-sem
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return reps
}

// checkConfig applies s and checks random connections against `shunt trace`.
func (p *tracePod) checkConfig(t *testing.T, r *rand.Rand, seed uint64, i int, s randconfig.Settings, count func(string)) {
	t.Helper()
	if out, err := p.shuntErr(t, s.Env, slices.Concat([]string{"iptables"}, s.Args, []string{"--reconcile"})...); err != nil {
		t.Fatalf("seed %d config %d: %s shunt iptables %s --reconcile: %v\n%s", seed, i, strings.Join(s.Env, " "), shellQuote(s.Args), err, out)
	}
	loopback := p.waitLoopbackAddrs(t)
	// Connections of earlier configurations must not decide the NAT of these.
	if err := p.nl.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
	cases := p.randomCases(r, &s, loopback, *traceConns)
	reps := p.traceAll(t, &s, cases)
	for range reps {
		count("runs of shunt trace")
	}
	p.crossCheck(t, seed, i, &s, cases, reps, count)
	failures := 0
	for ci := range cases {
		tc, v := &cases[ci], reps[ci].Verdict
		if v.uncovered {
			v = uncaptured(&tc.conn)
		}
		want, err := expect(&tc.conn, v, s.DropInvalid)
		if err != nil {
			t.Fatalf("seed %d config %d: %s: %v", seed, i, tc, err)
		}
		got := exchange(tc.from, tc)
		fam := "ipv4"
		if tc.conn.dst.Addr().Is6() {
			fam = "ipv6"
		}
		dir := "out"
		if tc.conn.in {
			dir = "in"
		}
		listener, _, _ := strings.Cut(v.Listener, " ")
		count(fmt.Sprintf("%s/%s/%s/%s", p.variant, s.Mode, fam, dir))
		if tc.conn.iface == "kv0" && tc.conn.in && slices.Contains(s.KubeVirtInterfaces, "kv0") {
			count("in on a kube-virt interface, " + v.Kind + " " + listener)
		}
		if p.variant == native && !s.IPv6 && fam == "ipv6" {
			count("native nftables with --ipv6=false, IPv6 " + v.Kind)
		}
		count(strings.TrimSpace("verdict " + v.Kind + " " + listener))
		if want.accepts(got) {
			continue
		}
		failures++
		if failures > 3 {
			continue
		}
		// The walk for people: shunt trace without --json.
		args := slices.Concat([]string{"trace"}, s.Args, tc.conn.args(p.podAddrs()))
		if p.variant == native {
			args = append(args, "--native-nftables")
		}
		cmd := exec.Command(bins.Path(t, pkgShunt), args...)
		cmd.Env = append(os.Environ(), s.Env...)
		walk, err := cmd.CombinedOutput()
		report := fmt.Sprintf("$ %s shunt %s\n%s", strings.Join(s.Env, " "), shellQuote(args), walk)
		if err != nil {
			report += err.Error() + "\n"
		}
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
					report += fmt.Sprintf("\n$ %s (%s)\n%s%v", argv, ns.Name, out, err)
				}
			}
		}
		t.Errorf("seed %d, config %d: %s shunt iptables %s --reconcile\n%s:\n kernel: %s\n  trace: %s\n%s",
			seed, i, strings.Join(s.Env, " "), shellQuote(slices.Concat(p.variant.args(), s.Args)), tc, got, want, report)
	}
}

// crossCheck runs `shunt trace --network-namespace` of the rules the pod holds for the first case
// the settings cover, and wants the same path and verdict as the trace of the settings: the rules
// the pod holds are those of the settings, and both traces see them alike.
func (p *tracePod) crossCheck(t *testing.T, seed uint64, i int, s *randconfig.Settings, cases []traceCase, reps []traceReport, count func(string)) {
	t.Helper()
	ci := slices.IndexFunc(reps, func(r traceReport) bool { return !r.Verdict.uncovered })
	if ci < 0 {
		return
	}
	args := slices.Concat([]string{"trace", "--json", "--network-namespace", p.ns.Path()}, s.Args, cases[ci].conn.args(p.podAddrs()))
	out, err := p.shuntErr(t, s.Env, args...)
	live, err := parseTrace([]byte(out), nil, err, args)
	count("runs of shunt trace")
	if err != nil {
		t.Fatalf("seed %d config %d: %s: %v", seed, i, &cases[ci], err)
	}
	if want := reps[ci]; live.Verdict != want.Verdict || !slices.Equal(live.Path, want.Path) {
		t.Errorf("seed %d config %d: %s: shunt trace --network-namespace %s (the rules the pod holds) disagrees with the trace of the settings %s (env %q):\n"+
			"  live: %s, path %s\n  settings: %s, path %s",
			seed, i, &cases[ci], p.ns.Path(), shellQuote(s.Args), s.Env, live.Verdict.Text, live.Path, want.Verdict.Text, want.Path)
		return
	}
	count("live trace agrees (--network-namespace)")
}

// waitLoopbackAddrs waits until every address on lo (those shunt adds, ::6, among them) is usable,
// and returns them: shunt adds its addresses without IFA_F_NODAD, and an address is tentative,
// refusing bind(2), until the kernel's DAD work has run, even on lo where it skips the probing.
func (p *tracePod) waitLoopbackAddrs(t *testing.T) []netip.Prefix {
	t.Helper()
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
		var out []netip.Prefix
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				out = nil
				break
			}
			if pa, ok := netip.AddrFromSlice(a.IP); ok {
				ones, _ := a.Mask.Size()
				out = append(out, netip.PrefixFrom(pa.Unmap(), ones))
			}
		}
		if len(out) > 0 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("lo holds a tentative address after 5s: %v", addrs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exchangeAs runs on a locked thread of the namespace: it takes on cred for this thread only (the
// socket's owner is who creates it), which then never runs anything else, and makes the exchange with
// blocking system calls bounded by timeouts.
func exchangeAs(tc *traceCase) (string, error) {
	cred, proto, dst := tc.cred, tc.conn.proto, tc.conn.dst
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
	if src := tc.conn.src.Addr(); !tc.conn.in && src.IsValid() {
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
	// A connect with SO_SNDTIMEO is not restarted after a signal handler ran (signal(7)): the
	// test binary gets SIGCHLD from the other tests' processes. The connection goes on; wait for
	// its outcome for what is left of the timeout, as a timed-out connect reports (EINPROGRESS).
	started := time.Now()
	if err := unix.Connect(fd, sa); errors.Is(err, unix.EINTR) {
		err = sockwait.Connected(fd, 1500*time.Millisecond-time.Since(started))
		if err != nil {
			return "", fmt.Errorf("connect %s: %w", dst, err)
		}
	} else if err != nil {
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
		if errors.Is(err, unix.EINTR) {
			continue // a signal, as for connect: read on (the timeout starts again: only longer)
		}
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

// expectation is what the verdict of `shunt trace` allows the kernel to do with the real connection.
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

// listenerOf names the reference sidecar's listener on a port: outbound 15001, inbound 15006, DNS
// 15053 (Istio's ports, the defaults of shunt's settings that randconfig keeps).
var listenerOf = map[uint16]string{15001: "outbound", 15006: "inbound", 15053: "dns"}

// expect returns what v, the verdict for c, allows.
func expect(c *traceConn, v traceVerdict, dropInvalid bool) (expectation, error) {
	e := expectation{verdict: v.Text}
	addrPort := func(field, s string) (netip.AddrPort, error) {
		if s == "" {
			return netip.AddrPort{}, nil
		}
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return ap, fmt.Errorf("verdict %q: %s: %w", v.Text, field, err)
		}
		return ap, nil
	}
	orig, err := addrPort("orig_dst", v.OrigDst)
	if err != nil {
		return e, err
	}
	dst, err := addrPort("dst", v.Dst)
	if err != nil {
		return e, err
	}
	// The port unreachable error for a UDP flow in a conntrack zone is looked up in zone 0, found
	// INVALID, and dropped by --drop-invalid: no refusal comes back.
	lostRefusal := c.proto == "udp" && v.Zone != 0 && dropInvalid
	switch v.Kind {
	case "captured", "TPROXYed":
		e.listener, e.orig = listenerOf[v.Port], orig
		if e.listener == "" {
			e.listener = "port " + strconv.Itoa(int(v.Port))
		}
	case "delivered":
		e.servers, e.local, e.mute = []string{"pod"}, dst, lostRefusal
	case "passed through":
		e.servers, e.local = []string{"remote"}, dst
		// The remote's DNS server listens on the wildcard address: it answers a query to an address
		// of its lo from the address of its interface, which the client's connected socket ignores.
		// Nothing answers for an address the remote does not have.
		e.mute = c.proto == "udp" && slices.Contains(traceRemoteAddrs[familyIndex(dst.Addr())], dst.Addr()) ||
			!remoteHas(dst.Addr()) || lostRefusal
	case "dropped":
		e.timeout = true
	default:
		return e, fmt.Errorf("verdict %q: unknown kind %q", v.Text, v.Kind)
	}
	return e, nil
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

// uncaptured is the verdict for a connection of a family the settings program no rules for, which
// shunt trace refuses to walk: no rules at all. The kernel delivers what is for the pod's own
// addresses (or, out, loopback ones), passes the pod's other connections through by their route and
// drops what arrives for an address not the pod's, which does not forward.
func uncaptured(c *traceConn) traceVerdict {
	dst := c.dst.Addr()
	local := dst.IsLoopback()
	for _, l := range traceLinks {
		local = local || slices.Contains(l.pod[:], dst)
	}
	v := traceVerdict{Kind: "dropped", Dst: c.dst.String(), uncovered: true}
	switch {
	case local:
		v.Kind = "delivered"
	case !c.in:
		v.Kind, v.Iface = "passed through", c.iface
	}
	v.Text = v.Kind + " to " + c.dst.String() + " (the settings program no rules for its family)"
	return v
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
