//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// variant is how shunt programs the rules: through an iptables binary it is
// forced to use, iptables-nft ("nft") or iptables-legacy ("legacy"), or
// natively over netlink ("native", --native-nftables: Istio's inet tables
// istio-proxy-nat, istio-proxy-mangle and istio-proxy-raw).
type variant string

const native variant = "native"

// variants are every way shunt programs the rules.
var variants = []variant{"nft", "legacy", native}

// args are the flags that make shunt program the rules the variant's way.
func (v variant) args() []string {
	if v == native {
		return []string{"--native-nftables"}
	}
	return []string{"--force-iptables-binary", string(v)}
}

// title names v for people: iptables-nft, iptables-legacy or native
// nftables.
func (v variant) title() string {
	if v == native {
		return "native nftables"
	}
	return "iptables-" + string(v)
}

// iptables is the iptables variant whose tables the tests read and load
// foreign rules into: v's own, or for native iptables-nft, as other
// software next to shunt's inet tables would use it.
func (v variant) iptables() string {
	if v == native {
		return "nft"
	}
	return string(v)
}

// listing is a command that lists the rules a variant programs.
type listing struct {
	what string // IPv4, IPv6 or inet
	argv []string
}

// listings are the commands that list the rules v programs: iptables-save
// of both families, or the whole nftables ruleset. With counters they show
// the counters (and nft the handles too); without, nothing that traffic
// changes.
func (v variant) listings(counters bool) []listing {
	if v == native {
		flag := "-s"
		if counters {
			flag = "-a"
		}
		return []listing{{"inet", []string{"nft", flag, "list", "ruleset"}}}
	}
	var ls []listing
	for _, v6 := range []bool{false, true} {
		l := listing{"IPv4", []string{saveCommand(string(v), v6)}}
		if v6 {
			l.what = "IPv6"
		}
		if counters {
			l.argv = append(l.argv, "-c")
		}
		ls = append(ls, l)
	}
	return ls
}

// chain returns how v's listings name the engine chain name (ISTIO_OUTPUT):
// as iptables does, or as Istio's native mode does (istio-output).
func (v variant) chain(name string) string {
	if v == native {
		return strings.ReplaceAll(strings.ToLower(name), "_", "-")
	}
	return name
}

// modes are the inbound interception modes.
var modes = []string{"REDIRECT", "TPROXY"}

// family is one IP family's addresses in the test topology.
type family struct {
	name string
	bits int // prefix length of the veth subnets
	// pod and remote sit on eth0, the pod's primary interface; pod1 and
	// remote1 on eth1, a second interface.
	pod, remote, pod1, remote1 netip.Addr
	// far sits on the remote's lo, reached through the pod's default route.
	far    netip.Addr
	farNet netip.Prefix
	// localhost is 127.0.0.1 or ::1; passthrough the inbound passthrough
	// source, 127.0.0.6 or ::6.
	localhost, passthrough netip.Addr
	// selfVIP is a service whose endpoint is the pod's own app (pod:8080),
	// remoteVIP one whose endpoint is remote:8080.
	selfVIP, remoteVIP netip.AddrPort
}

var (
	ipv4 = family{
		name: "ipv4", bits: 24,
		pod: ip("10.213.0.1"), remote: ip("10.213.0.2"),
		pod1: ip("10.215.0.1"), remote1: ip("10.215.0.2"),
		far: ip("10.99.0.2"), farNet: netip.MustParsePrefix("10.99.0.0/16"),
		localhost: ip("127.0.0.1"), passthrough: ip("127.0.0.6"),
		selfVIP:   netip.MustParseAddrPort("10.96.0.10:80"),
		remoteVIP: netip.MustParseAddrPort("10.96.0.20:80"),
	}
	ipv6 = family{
		name: "ipv6", bits: 64,
		pod: ip("fd00:213::1"), remote: ip("fd00:213::2"),
		pod1: ip("fd00:215::1"), remote1: ip("fd00:215::2"),
		far: ip("fd00:99::2"), farNet: netip.MustParsePrefix("fd00:99::/64"),
		localhost: ip("::1"), passthrough: ip("::6"),
		selfVIP:   netip.MustParseAddrPort("[fd00:96::10]:80"),
		remoteVIP: netip.MustParseAddrPort("[fd00:96::20]:80"),
	}
	families = []family{ipv4, ipv6}
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// Ports of the apps: the pod serves appPorts on every address and TCP 53 on
// its pod IPs; the remote serves 8080 and 9090, and DNS on 53.
const (
	appPort   = 8080
	otherPort = 9090
	dnsPort   = 53
)

var appPorts = []uint16{appPort, 8081, 8082, otherPort, 15008, 15020, 15021, 15090}

// The identities processes run as. The proxy runs as proxyUser in REDIRECT
// mode and as tproxyUser (uid 0, gid 1337) in TPROXY mode, like Istio's
// injector makes it.
var (
	root       = testutil.Cred{}
	appUser    = testutil.Cred{UID: 1000, GID: 1000}
	otherGroup = testutil.Cred{UID: 1000, GID: 2000}
	proxyUser  = testutil.Cred{UID: 1337, GID: 1337}
	proxyUID   = testutil.Cred{UID: 1337, GID: 1000}
	proxyGID   = testutil.Cred{UID: 1000, GID: 1337}
	tproxyUser = testutil.Cred{UID: 0, GID: 1337}
)

// pod is a meshed pod's network namespace and the remote end of its links.
type pod struct {
	variant    variant
	ns, remote *testutil.NetNS
}

// forEachPod runs test for every variant and inbound mode, each in a
// parallel subtest VARIANT/MODE with a fresh pod.
func forEachPod(t *testing.T, test func(t *testing.T, p *pod, mode string)) {
	t.Helper()
	for _, variant := range variants {
		for _, mode := range modes {
			t.Run(string(variant)+"/"+mode, func(t *testing.T) {
				t.Parallel()
				test(t, newPod(t, variant), mode)
			})
		}
	}
}

// newPod builds the topology: pod eth0 <-> remote eth0 and pod eth1 <->
// remote eth1, both families, the pod's default routes through eth0; the
// pod's apps (as appUser) and the remote's apps and DNS server run and are
// ready. The rules of v are logged if t fails.
func newPod(t *testing.T, v variant) *pod {
	t.Helper()
	p := &pod{variant: v, ns: testutil.NewNetNS(t), remote: testutil.NewNetNS(t)}
	// Distinct ifindexes on the two ends make the kernel treat the carrier
	// change as urgent instead of batching it for up to a second.
	for i, link := range []string{"eth0", "eth1"} {
		p.ns.Run(t, "ip", "link", "add", link, "index", fmt.Sprint(10+i), "type", "veth",
			"peer", "name", link, "index", fmt.Sprint(20+i), "netns", p.remote.Name)
	}
	for _, f := range families {
		addAddr(t, p.ns, "eth0", f.pod, f.bits)
		addAddr(t, p.ns, "eth1", f.pod1, f.bits)
		addAddr(t, p.remote, "eth0", f.remote, f.bits)
		addAddr(t, p.remote, "eth1", f.remote1, f.bits)
		addAddr(t, p.remote, "lo", f.far, f.far.BitLen())
	}
	// No link-local addresses: they come up asynchronously (after the
	// carrier and DAD) and would make state comparisons racy; neighbour
	// discovery works from the global addresses.
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		for _, link := range []string{"eth0", "eth1"} {
			ns.Run(t, "ip", "link", "set", link, "addrgenmode", "none", "up")
		}
	}
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		for _, link := range []string{"eth0", "eth1"} {
			ns.WaitLinkUp(t, link)
		}
	}
	for _, f := range families {
		p.ns.Run(t, "ip", familyFlag(f), "route", "add", "default", "via", f.remote.String(), "dev", "eth0")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pod %s state at failure:\n%s", p.ns.Name, p.dump(t))
		}
	})

	echo := bins.Path(t, pkgEchoserver)
	var ports []string
	for _, port := range appPorts {
		ports = append(ports, fmt.Sprint(port))
	}
	// An app on port 53 of the pod IPs only, leaving loopback addresses to
	// local resolvers; the app's uid may bind it.
	p.ns.Run(t, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0")
	for _, f := range families {
		ports = append(ports, addr(f.pod, dnsPort).String())
	}
	p.ns.Start(t, &appUser, echo, "serve", "-name", "pod", "-tcp", strings.Join(ports, ","))
	p.remote.Start(t, &root, echo, "serve", "-name", "remote",
		"-tcp", fmt.Sprintf("%d,%d", appPort, otherPort), "-dns", fmt.Sprint(dnsPort))
	return p
}

func addAddr(t *testing.T, ns *testutil.NetNS, dev string, a netip.Addr, bits int) {
	t.Helper()
	args := []string{"ip", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", dev}
	if a.Is6() {
		args = append(args, "nodad")
	}
	ns.Run(t, args...)
}

func familyFlag(f family) string {
	if f.pod.Is6() {
		return "-6"
	}
	return "-4"
}

// capture runs `shunt iptables VARIANT-ARGS args...` in the pod with env
// added to its environment, and returns its output.
func (p *pod) capture(t *testing.T, env []string, args ...string) string {
	t.Helper()
	return p.shunt(t, env, append([]string{"iptables"}, args...)...)
}

// uncapture runs `shunt cleanup VARIANT-ARGS` in the pod.
func (p *pod) uncapture(t *testing.T) {
	t.Helper()
	p.shunt(t, nil, "cleanup")
}

// shunt is shuntErr that fails t on error.
func (p *pod) shunt(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := p.shuntErr(t, env, args...)
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s", err, out)
	}
	return out
}

// shuntErr runs `shunt SUBCOMMAND VARIANT-ARGS ARGS...` in the pod and
// returns its output and error.
func (p *pod) shuntErr(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	return shuntIn(t, p.ns, p.variant, env, args...)
}

// shuntIn runs `shunt SUBCOMMAND VARIANT-ARGS ARGS...` in ns with env added
// to its environment and returns its output and error.
func shuntIn(t *testing.T, ns *testutil.NetNS, v variant, env []string, args ...string) (string, error) {
	t.Helper()
	argv := append(append([]string{bins.Path(t, pkgShunt), args[0]}, v.args()...), args[1:]...)
	out, err := ns.Exec(nil, env, argv...)
	return string(out), err
}

// injectorArgs are the flags Istio's sidecar injector passes to its init
// container, for mode. The proxy's gid is the default, the uid.
func injectorArgs(mode string) []string {
	return []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", mode,
		"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"}
}

// startProxy starts the reference sidecar in the pod as Istio runs it in
// mode, with selfVIP and remoteVIP of both families as services and
// dnsUpstreams, then the remote, as DNS upstreams (the first of a family
// serves it).
func (p *pod) startProxy(t *testing.T, mode string, dnsUpstreams ...netip.AddrPort) {
	t.Helper()
	cred := proxyCred(mode)
	args := []string{bins.Path(t, pkgRefproxy), "-mode", mode}
	for _, u := range dnsUpstreams {
		args = append(args, "-dns-upstream", u.String())
	}
	for _, f := range families {
		args = append(args,
			"-service", f.selfVIP.String()+"="+netip.AddrPortFrom(f.pod, appPort).String(),
			"-service", f.remoteVIP.String()+"="+netip.AddrPortFrom(f.remote, appPort).String(),
			"-dns-upstream", netip.AddrPortFrom(f.remote, dnsPort).String())
	}
	p.ns.Start(t, &cred, args...)
}

// proxyCred returns the identity the sidecar runs as in mode.
func proxyCred(mode string) testutil.Cred {
	if mode == "TPROXY" {
		return tproxyUser
	}
	return proxyUser
}

func saveCommand(variant string, v6 bool) string {
	if v6 {
		return "ip6tables-" + variant + "-save"
	}
	return "iptables-" + variant + "-save"
}

// dump returns the pod's rules (with counters), policy routing and lo
// addresses, for failure reports.
func (p *pod) dump(t *testing.T) string {
	var b strings.Builder
	var argvs [][]string
	for _, l := range p.variant.listings(true) {
		argvs = append(argvs, l.argv)
	}
	for _, argv := range append(argvs, routingCommands...) {
		out, err := p.ns.Exec(nil, nil, argv...)
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "%v\n", err)
		}
	}
	return b.String()
}

// probe is one request and the reply that proves the path it took.
type probe struct {
	name    string
	from    *testutil.NetNS
	as      testutil.Cred
	network string // "tcp" or "udp"
	to      netip.AddrPort
	want    string
}

// runProbes runs each probe as a subtest.
func runProbes(t *testing.T, probes []probe) {
	t.Helper()
	for _, pr := range probes {
		t.Run(pr.name, func(t *testing.T) {
			got := query(t, pr.from, pr.as, pr.network, pr.to)
			if got != pr.want {
				t.Errorf("%s %s -> %s as %v:\n got: %s\nwant: %s", pr.network, pr.from.Name, pr.to, pr.as, got, pr.want)
			}
		})
	}
}

// query sends one request from ns as cred to addr and returns the reply with
// the peers' ephemeral ports removed, or the client's error.
func query(t *testing.T, ns *testutil.NetNS, cred testutil.Cred, network string, to netip.AddrPort) string {
	t.Helper()
	out, err := ns.Exec(&cred, nil, bins.Path(t, pkgEchoserver), "client", "-"+network, to.String())
	if err != nil {
		return fmt.Sprintf("ERROR %v (read %q)", err, out)
	}
	return peerPort.ReplaceAllString(strings.TrimSpace(string(out)), "peer=$1")
}

var peerPort = regexp.MustCompile(`peer=(\[[0-9a-f:.]+\]|[0-9.]+):[0-9]+`)

// The tags of the replies (see refproxy and echoserver).

func viaOutbound(orig netip.AddrPort) string { return fmt.Sprintf("proxy=outbound orig=%s;", orig) }

func viaInbound(orig netip.AddrPort) string { return fmt.Sprintf("proxy=inbound orig=%s;", orig) }

func app(name string, peer netip.Addr, local netip.AddrPort) string {
	return fmt.Sprintf("app=%s peer=%s local=%s", name, host(peer), local)
}

func dnsAnswer(name string, peer netip.Addr) string {
	return fmt.Sprintf("dns=%s peer=%s", name, host(peer))
}

func host(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

func addr(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
