package trace

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/redirect"
)

var (
	pod4     = netip.MustParseAddr("10.0.0.5")
	pod6     = netip.MustParseAddr("fd00::5")
	remote4  = netip.MustParseAddr("10.1.0.9")
	remote6  = netip.MustParseAddr("fd01::9")
	podAddrs = []netip.Addr{pod4, pod6}
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// shape is how a plan is built: per-family iptables plans or one native nftables inet plan.
type shape struct {
	name   string
	native bool
}

var shapes = []shape{{"iptables", false}, {"nftables", true}}

func mustBuild(t testing.TB, cfg redirect.Config) *redirect.Plan {
	t.Helper()
	p, err := redirect.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

// flowConfig is the injector's configuration with DNS capture of remote4 and remote6 and IPv6, in mode.
func flowConfig(mode redirect.Mode, native bool) redirect.Config {
	c := redirect.DefaultConfig()
	c.Mode, c.IPv6, c.NativeNFTables = mode, true, native
	c.RedirectDNS, c.DNSServers = true, []netip.Addr{remote4, remote6}
	return c
}

func out(proto string, dst netip.AddrPort, uid, gid uint32) Conn {
	return Conn{Dir: Out, Proto: proto, Dst: dst, UID: uid, GID: gid, PodAddrs: podAddrs}
}

func in(dst netip.AddrPort) Conn {
	src := remote4
	if dst.Addr().Is6() {
		src = remote6
	}
	return Conn{Dir: In, Proto: "tcp", Src: ap(src, 40000), Dst: dst, PodAddrs: podAddrs}
}

// want is the part of a Verdict a case checks.
type want struct {
	kind     VerdictKind
	listener string // Captured, TProxied
	mark     uint32
	zone     uint16
}

func expect(t *testing.T, plan *redirect.Plan, c Conn, w want) {
	t.Helper()
	res, err := Walk(plan, c)
	if err != nil {
		t.Fatalf("Walk(%+v): %v", c, err)
	}
	v := res.Verdict
	if v.Kind != w.kind || v.Listener != w.listener || v.Mark != w.mark || v.Zone != w.zone {
		t.Errorf("Walk(%s %s %s uid %d gid %d) = %s (listener %q), want %s (listener %q, mark %d, zone %d)\n%s",
			c.Dir, c.Proto, c.Dst, c.UID, c.GID, v, v.Listener, w.kind, w.listener, w.mark, w.zone, Format(plan, res))
	}
	if (v.Kind == Captured || v.Kind == TProxied) && v.OrigDst != c.Dst {
		t.Errorf("OrigDst = %s, want %s", v.OrigDst, c.Dst)
	}
	for _, ref := range res.Path {
		if plan.Rule(ref) == nil {
			t.Errorf("Path names %s, which the plan lacks", ref)
		}
	}
}

var (
	outbound = "outbound :15001"
	inbound  = "inbound :15006"
	dns      = "dns :15053"
)

// TestFlows walks one connection of each flow F1–F9 of docs/flows.md in both families, for both plan
// shapes and both modes.
func TestFlows(t *testing.T) {
	for _, sh := range shapes {
		for _, mode := range []redirect.Mode{redirect.ModeRedirect, redirect.ModeTProxy} {
			t.Run(sh.name+"/"+string(mode), func(t *testing.T) {
				plan := mustBuild(t, flowConfig(mode, sh.native))
				tproxy := mode == redirect.ModeTProxy
				proxy := [2]uint32{1337, 1337}
				if tproxy {
					proxy = [2]uint32{0, 1337}
				}
				for _, f := range []struct {
					name                       string
					pod, remote, loopback, pth netip.Addr
				}{
					{"ipv4", pod4, remote4, netip.MustParseAddr("127.0.0.1"), redirect.PassthroughV4},
					{"ipv6", pod6, remote6, netip.IPv6Loopback(), redirect.PassthroughV6},
				} {
					t.Run(f.name, func(t *testing.T) {
						t.Run("F1/inbound", func(t *testing.T) {
							if tproxy {
								expect(t, plan, in(ap(f.pod, 8080)), want{kind: TProxied, listener: inbound, mark: 1337})
							} else {
								expect(t, plan, in(ap(f.pod, 8080)), want{kind: Captured, listener: inbound})
							}
						})
						t.Run("F1/passthrough_to_app", func(t *testing.T) {
							c := out("tcp", ap(f.pod, 8080), proxy[0], proxy[1])
							w := want{kind: Delivered}
							if tproxy {
								// Transparent: from the client's address, with the mark.
								c.Src, c.Mark = ap(f.remote, 40000), 1337
								w.mark = 1337
							} else {
								c.Src = ap(f.pth, 0)
							}
							expect(t, plan, c, w)
						})
						t.Run("F2/outbound", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.remote, 80), 1000, 1000), want{kind: Captured, listener: outbound})
						})
						t.Run("F2/proxy_upstream", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.remote, 80), proxy[0], proxy[1]), want{kind: PassedThrough})
						})
						for _, port := range []uint16{15020, 15021, 15090} {
							t.Run("F3/agent_port", func(t *testing.T) {
								expect(t, plan, in(ap(f.pod, port)), want{kind: Delivered})
							})
						}
						t.Run("F3/tunnel", func(t *testing.T) {
							if tproxy {
								// Istio's mangle rules do not return 15008 (TestIstioQuirkTProxyTunnelPort).
								expect(t, plan, in(ap(f.pod, 15008)), want{kind: TProxied, listener: inbound, mark: 1337})
							} else {
								expect(t, plan, in(ap(f.pod, 15008)), want{kind: Delivered})
							}
						})
						t.Run("F4/proxy_to_own_pod", func(t *testing.T) {
							if tproxy {
								// The proxy (uid 0) is returned by nat's "-o lo ! --uid-owner 1337" before
								// the gid hairpin rule; mangle marks it 1338 and TPROXYs it on lo.
								expect(t, plan, out("tcp", ap(f.pod, 8080), proxy[0], proxy[1]), want{kind: TProxied, listener: inbound, mark: 1337})
							} else {
								expect(t, plan, out("tcp", ap(f.pod, 8080), proxy[0], proxy[1]), want{kind: Captured, listener: inbound})
							}
						})
						t.Run("F4/app_to_own_pod", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.pod, 8080), 1000, 1000), want{kind: Delivered})
						})
						t.Run("F5/localhost", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.loopback, 8080), 1000, 1000), want{kind: Delivered})
						})
						t.Run("F6/uid", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.remote, 80), 1337, 1000), want{kind: PassedThrough})
						})
						t.Run("F6/gid", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.remote, 80), 1000, 1337), want{kind: PassedThrough})
						})
						t.Run("F9/app_udp", func(t *testing.T) {
							expect(t, plan, out("udp", ap(f.remote, 53), 1000, 1000), want{kind: Captured, listener: dns, zone: 2})
						})
						t.Run("F9/app_tcp", func(t *testing.T) {
							expect(t, plan, out("tcp", ap(f.remote, 53), 1000, 1000), want{kind: Captured, listener: dns})
						})
						t.Run("F9/proxy_udp", func(t *testing.T) {
							expect(t, plan, out("udp", ap(f.remote, 53), 1337, 1337), want{kind: PassedThrough, zone: 1})
						})
						t.Run("F9/unlisted_server", func(t *testing.T) {
							other := f.remote.Next()
							expect(t, plan, out("udp", ap(other, 53), 1000, 1000), want{kind: PassedThrough})
						})
					})
				}
			})
		}
	}
}

// TestExclusions walks F7: the include and exclude lists.
func TestExclusions(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			c := redirect.DefaultConfig()
			c.IPv6, c.NativeNFTables = true, sh.native
			c.OutboundPortsExclude = []uint16{9090}
			c.OutboundIPRangesExclude = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
			c.InboundPortsExclude = append(c.InboundPortsExclude, 8081)
			c.ExcludeInterfaces = []string{"veth+"}
			c.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{888}}
			plan := mustBuild(t, c)
			expect(t, plan, out("tcp", ap(remote6, 9090), 1000, 1000), want{kind: PassedThrough})
			expect(t, plan, out("tcp", ap(remote6, 9091), 1000, 1000), want{kind: Captured, listener: outbound})
			expect(t, plan, out("tcp", ap(remote4, 80), 1000, 1000), want{kind: PassedThrough})
			expect(t, plan, out("tcp", ap(remote4.Prev().Prev(), 80), 1000, 888), want{kind: PassedThrough})
			expect(t, plan, in(ap(pod4, 8081)), want{kind: Delivered})
			veth := out("tcp", ap(remote6, 80), 1000, 1000)
			veth.OutIface = "veth3"
			expect(t, plan, veth, want{kind: PassedThrough})
			vin := in(ap(pod6, 8080))
			vin.InIface = "veth3"
			expect(t, plan, vin, want{kind: Delivered})

			c = redirect.DefaultConfig()
			c.NativeNFTables = sh.native
			c.InboundPorts = redirect.PortList{Ports: []uint16{8080}}
			c.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
			c.OutboundPorts = []uint16{7000}
			c.OwnerGroups = redirect.GroupFilter{Include: []uint32{4242, 202}}
			plan = mustBuild(t, c)
			expect(t, plan, in(ap(pod4, 8080)), want{kind: Captured, listener: inbound})
			expect(t, plan, in(ap(pod4, 8082)), want{kind: Delivered})
			expect(t, plan, out("tcp", ap(remote4, 80), 1000, 202), want{kind: Captured, listener: outbound})
			expect(t, plan, out("tcp", ap(remote4, 80), 1000, 4242), want{kind: Captured, listener: outbound})
			expect(t, plan, out("tcp", ap(remote4, 80), 1000, 1000), want{kind: PassedThrough})
			expect(t, plan, out("tcp", ap(netip.MustParseAddr("192.168.0.1"), 80), 1000, 202), want{kind: PassedThrough})
			expect(t, plan, out("tcp", ap(netip.MustParseAddr("192.168.0.1"), 7000), 1000, 202), want{kind: Captured, listener: outbound})
		})
	}
}

// TestKubeVirt: traffic from a virtual machine's interface is captured as outbound.
func TestKubeVirt(t *testing.T) {
	for _, sh := range shapes {
		c := redirect.DefaultConfig()
		c.NativeNFTables = sh.native
		c.KubeVirtInterfaces = []string{"kv0"}
		plan := mustBuild(t, c)
		vm := in(ap(remote4, 80))
		vm.InIface = "kv0"
		expect(t, plan, vm, want{kind: Captured, listener: outbound})
	}
}

// TestDropInvalid: a first packet is never conntrack-INVALID.
func TestDropInvalid(t *testing.T) {
	for _, sh := range shapes {
		c := redirect.DefaultConfig()
		c.NativeNFTables, c.DropInvalid = sh.native, true
		expect(t, mustBuild(t, c), in(ap(pod4, 8080)), want{kind: Captured, listener: inbound})
	}
}

func TestWalkErrors(t *testing.T) {
	plan := mustBuild(t, redirect.DefaultConfig())
	cases := []struct {
		name  string
		c     Conn
		field string
		is    error
	}{
		{"no direction", Conn{Proto: "tcp", Dst: ap(remote4, 80)}, "conn.Dir", ErrInvalidConn},
		{"icmp", Conn{Dir: Out, Proto: "icmp", Dst: ap(remote4, 80)}, `conn.Proto: "icmp"`, ErrInvalidConn},
		{"no destination", Conn{Dir: Out, Proto: "tcp"}, "conn.Dst", ErrInvalidConn},
		{"no port", Conn{Dir: Out, Proto: "tcp", Dst: ap(remote4, 0)}, "conn.Dst", ErrInvalidConn},
		{"mixed families", Conn{Dir: Out, Proto: "tcp", Src: ap(pod6, 0), Dst: ap(remote4, 80)}, "conn.Src", ErrInvalidConn},
		{"in without source", Conn{Dir: In, Proto: "tcp", Dst: ap(pod4, 80)}, "conn.Src", ErrInvalidConn},
		{"in on lo", Conn{Dir: In, Proto: "tcp", Src: ap(remote4, 1), Dst: ap(pod4, 80), InIface: "lo"}, "conn.InIface", ErrInvalidConn},
		{"in with owner", Conn{Dir: In, Proto: "tcp", Src: ap(remote4, 1), Dst: ap(pod4, 80), UID: 3}, "conn.UID", ErrInvalidConn},
		{"ipv6 without ipv6 rules", out("tcp", ap(remote6, 80), 1000, 1000), "fd01::9", ErrFamilyNotCovered},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Walk(plan, tc.c)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Walk = %v, want %v naming %q", err, tc.is, tc.field)
			}
		})
	}
}

// TestInetWithoutIPv6: native nftables' inet tables without IPv6 still capture IPv6 with their rules
// that match no address (the kernel agrees: e2e TestTraceProperty); per-family plans have no IPv6
// rules at all.
func TestInetWithoutIPv6(t *testing.T) {
	c := redirect.DefaultConfig()
	c.NativeNFTables = true
	res, err := Walk(mustBuild(t, c), out("tcp", ap(remote6, 80), 1000, 1000))
	if err != nil || res.Verdict.Kind != Captured || res.Verdict.Listener != outbound {
		t.Errorf("inet plan without IPv6: Walk = %v, %v; want captured by %s", res.Verdict, err, outbound)
	}
	c.NativeNFTables = false
	if _, err := Walk(mustBuild(t, c), out("tcp", ap(remote6, 80), 1000, 1000)); !errors.Is(err, ErrFamilyNotCovered) {
		t.Errorf("IPv4-only plan: Walk = %v, want ErrFamilyNotCovered", err)
	}
}

// TestTransparentUpstreamHairpin: in TPROXY mode with an included loopback range (which leaves out the
// "-o lo ! --uid-owner" RETURNs), the proxy's transparent upstream to the app (uid 0, gid 1337, mark
// 1337, from the client's address) meets the gid hairpin rule and is REDIRECTed to the inbound
// listener. The kernel agrees (its SYN-ACK, from ::1/127.0.0.1 to the client, then has no route).
func TestTransparentUpstreamHairpin(t *testing.T) {
	for _, sh := range shapes {
		c := redirect.DefaultConfig()
		c.Mode, c.NativeNFTables = redirect.ModeTProxy, sh.native
		c.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{netip.MustParsePrefix("127.1.2.3/32")}}
		conn := out("tcp", ap(pod4, 8080), 0, 1337)
		conn.Src, conn.Mark = ap(remote4, 0), 1337
		expect(t, mustBuild(t, c), conn, want{kind: Captured, listener: inbound, mark: 1337})
	}
}

// TestKubeVirtTProxy: in TPROXY mode a virtual machine's connection through the pod meets mangle's
// TPROXY before nat's capture as outbound: it lands on the inbound listener.
func TestKubeVirtTProxy(t *testing.T) {
	for _, sh := range shapes {
		c := redirect.DefaultConfig()
		c.Mode, c.NativeNFTables = redirect.ModeTProxy, sh.native
		c.KubeVirtInterfaces = []string{"kv0"}
		vm := in(ap(netip.MustParseAddr("10.219.0.9"), 80))
		vm.InIface = "kv0"
		expect(t, mustBuild(t, c), vm, want{kind: TProxied, listener: inbound, mark: 1337})
	}
}
