//go:build linux

package e2e

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// The tests in this file pin down, with real packets, four behaviours of
// Istio's rules that shunt keeps bit for bit because its rules must be
// Istio's (the compatibility checker compares them rule by rule). Each is a
// path docs/flows.md would want otherwise; each test says what the better rule
// would be. A change to the engine that alters one of these paths fails
// here: it is then no longer Istio's behaviour, and this file, docs/flows.md and
// the compatibility notes must change with it, on purpose.

// quirkProbe is a probe whose reply must equal want or, when prefix is set,
// start with it (the rest of the path belongs to another quirk).
type quirkProbe struct {
	probe
	prefix bool
}

func runQuirkProbes(t *testing.T, probes []quirkProbe) {
	t.Helper()
	for _, pr := range probes {
		t.Run(pr.name, func(t *testing.T) {
			got := query(t, pr.from, pr.as, pr.network, pr.to)
			if got != pr.want && !(pr.prefix && strings.HasPrefix(got, pr.want)) {
				what := "want"
				if pr.prefix {
					what = "want a reply starting with"
				}
				t.Errorf("%s %s -> %s as %v:\n got: %s\n%s: %s", pr.network, pr.from.Name, pr.to, pr.as, got, what, pr.want)
			}
		})
	}
}

// forEachTProxyPod runs test for every variant in TPROXY mode,
// each in a parallel subtest VARIANT with a fresh pod.
func forEachTProxyPod(t *testing.T, test func(t *testing.T, p *pod)) {
	t.Helper()
	for _, variant := range variants {
		t.Run(string(variant), func(t *testing.T) {
			t.Parallel()
			test(t, newPod(t, variant))
		})
	}
}

// TestIstioQuirkTProxyKubeVirtInterface: in TPROXY mode, traffic arriving
// on a kube-virt interface (-k) is captured as inbound, not outbound.
//
// Istio's rule: -k IFACE adds "-I PREROUTING 1 -i IFACE -j ISTIO_REDIRECT"
// to nat (to :15001, as outbound traffic of the VM) but nothing to mangle.
// mangle PREROUTING runs before nat PREROUTING, and its ISTIO_INBOUND
// TPROXYs the SYN to the inbound listener :15006 first, so the connection
// takes the inbound path and the app sees the VM's own address. In
// REDIRECT mode the same flags take the outbound path (TestCaptureLists,
// kube_virt_interfaces). The better rule: "-A ISTIO_INBOUND -i IFACE -j
// RETURN" at the top of mangle's ISTIO_INBOUND.
func TestIstioQuirkTProxyKubeVirtInterface(t *testing.T) {
	testutil.RequireRoot(t)
	forEachTProxyPod(t, func(t *testing.T, p *pod) {
		p.capture(t, nil, append(injectorArgs("TPROXY"), "--ipv6=true", "-k", "eth1")...)
		p.startProxy(t, "TPROXY")
		for _, f := range families {
			virt := addr(f.pod1, appPort)
			runQuirkProbes(t, []quirkProbe{
				{probe: probe{f.name + "/from_kube_virt_interface", p.remote, root, "tcp", virt,
					viaInbound(virt) + app("pod", f.remote1, virt)}},
			})
		}
	})
}

// TestIstioQuirkGIDHairpinPort53: with DNS capture, a process whose gid (but
// not uid) is the proxy's, calling its own pod IP on TCP port 53, is
// hairpinned to the inbound listener; one with the proxy's uid is not.
//
// Istio's rules: with --redirect-dns the uid hairpin rule reads "-o lo ! -d
// 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner
// 1337 -j ISTIO_IN_REDIRECT", but the gid one only "! --dport 15008". In
// TPROXY mode the proxy runs as uid 0 with gid 1337, so its own inbound
// passthrough to an app on port 53 is hairpinned back to :15006, a loop.
// The better rule: "-m multiport ! --dports 53,15008" on the gid hairpin
// rule too.
func TestIstioQuirkGIDHairpinPort53(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		p.capture(t, nil, append(injectorArgs(mode), "--ipv6=true", "--redirect-dns",
			"--dns-servers="+ipv4.remote.String()+","+ipv6.remote.String())...)
		p.startProxy(t, mode)
		for _, f := range families {
			port53 := addr(f.pod, dnsPort)
			loop := viaInbound(port53) + "proxy=inbound-loop orig=" + port53.String()
			var probes []quirkProbe
			if mode == "REDIRECT" {
				probes = []quirkProbe{
					{probe: probe{"gid_1337_to_own_53", p.ns, proxyGID, "tcp", port53,
						viaInbound(port53) + app("pod", f.passthrough, port53)}},
					// The uid rule's exception, for contrast.
					{probe: probe{"uid_1337_to_own_53", p.ns, proxyUID, "tcp", port53,
						app("pod", f.pod, port53)}},
				}
			} else {
				// Whatever brings it to the inbound listener first (here
				// the gid rule itself), the passthrough loops.
				probes = []quirkProbe{
					{probe: probe{"gid_1337_to_own_53", p.ns, proxyGID, "tcp", port53, loop}},
				}
				if f == ipv6 {
					// From the remote too. Not in IPv4: there the hairpin
					// REDIRECT rewrites the passthrough's destination to
					// 127.0.0.1, which its source, the remote's address,
					// cannot reach; the proxy's dial only times out.
					probes = append(probes, quirkProbe{probe: probe{"remote_to_53", p.remote, root, "tcp", port53, loop}})
				}
			}
			t.Run(f.name, func(t *testing.T) { runQuirkProbes(t, probes) })
		}
	})
}

// TestIstioQuirkTProxyTunnelPort: in TPROXY mode the tunnel port 15008 is
// captured inbound, from outside and from the proxy's own uid and gid, and
// the proxy's uid calling its own pod IP on TCP port 53 is too, despite DNS
// capture; REDIRECT mode captures none of them (TestFlows).
//
// Istio's rules: the "-p tcp --dport 15008 -j RETURN" that keeps the tunnel
// port out of capture is in nat's ISTIO_INBOUND, which TPROXY mode does not
// jump to; mangle's ISTIO_INBOUND has no such rule and TPROXYs 15008 to
// :15006. And mangle OUTPUT marks every connection of the proxy's uid or
// gid to its own pod over lo ("! -d 127.0.0.1/32 -o lo -p tcp -m owner
// --uid-owner 1337 -j MARK --set-xmark 0x53a"), excluding neither 15008 nor
// 53 as the nat hairpin rules do; mark 1338 makes mangle's ISTIO_INBOUND
// TPROXY the connection when it comes back in on lo. The better rules:
// "-p tcp --dport 15008 -j RETURN" at the top of mangle's ISTIO_INBOUND,
// and the nat hairpin rules' "! --dport 15008" (with DNS capture "-m
// multiport ! --dports 53,15008") on the MARK rules.
func TestIstioQuirkTProxyTunnelPort(t *testing.T) {
	testutil.RequireRoot(t)
	forEachTProxyPod(t, func(t *testing.T, p *pod) {
		p.capture(t, nil, append(injectorArgs("TPROXY"), "--ipv6=true", "--redirect-dns",
			"--dns-servers="+ipv4.remote.String()+","+ipv6.remote.String())...)
		p.startProxy(t, "TPROXY")
		for _, f := range families {
			tunnel := addr(f.pod, 15008)
			fromPod := func(name string, as testutil.Cred, to netip.AddrPort) quirkProbe {
				return quirkProbe{probe: probe{name, p.ns, as, "tcp", to, viaInbound(to) + app("pod", f.pod, to)}}
			}
			port53 := fromPod("uid_1337_to_own_53", proxyUID, addr(f.pod, dnsPort))
			// What follows the inbound listener is TestIstioQuirkGIDHairpinPort53's loop.
			port53.want, port53.prefix = viaInbound(port53.to), true
			t.Run(f.name, func(t *testing.T) {
				runQuirkProbes(t, []quirkProbe{
					{probe: probe{"remote_to_15008", p.remote, root, "tcp", tunnel,
						viaInbound(tunnel) + app("pod", f.remote, tunnel)}},
					fromPod("proxy_to_own_15008", tproxyUser, tunnel),
					fromPod("uid_1337_to_own_15008", proxyUID, tunnel),
					port53,
				})
			})
		}
	})
}

// TestIstioQuirkNativeIPv6Disabled: in native nftables mode, --ipv6=false
// does not keep IPv6 out of capture. An app's IPv6 connections go to the
// outbound listener, and in REDIRECT mode remote IPv6 connections go to the
// inbound listener, which then cannot pass them on: the passthrough source
// ::6 is not on lo (only IPv6 on adds it), so the proxy's dial to the app
// fails with "bind ::6: cannot assign requested address". In TPROXY mode
// inbound IPv6 is not captured (the only TPROXY rule matches "ip daddr").
//
// Istio's rules: the tables are inet, for both families, and IPv6 off only
// leaves out the rules that match an IPv6 address; the rules that match no
// address, "meta l4proto tcp jump istio-inbound" in prerouting, "meta
// l4proto tcp jump istio-in-redirect" in istio-inbound and "jump
// istio-redirect" at the end of istio-output, match IPv6 packets as well.
// The iptables variants, which leave ip6tables alone, capture no IPv6
// (TestCaptureLists, ipv6_disabled). The better rules: "meta nfproto ipv4"
// on those rules, or "meta nfproto ipv6 return" first in every base chain,
// when IPv6 is off.
func TestIstioQuirkNativeIPv6Disabled(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			p := newPod(t, native)
			p.capture(t, nil, append(injectorArgs(mode), "--ipv6=false")...)
			if lo := p.ns.Run(t, "ip", "-br", "addr", "show", "dev", "lo"); strings.Contains(lo, " ::6/128") {
				t.Fatalf("::6 on lo with --ipv6=false: %s", lo)
			}
			// So that the proxy can pass captured IPv6 connections on, and
			// the reply shows the path the rules gave them (without, the
			// proxy's error races its closing of the connection).
			p.ns.Run(t, "ip", "addr", "add", "::6/128", "dev", "lo")
			p.startProxy(t, mode)
			f := ipv6
			podApp, remoteApp := addr(f.pod, appPort), addr(f.remote, appPort)
			inbound := app("pod", f.remote, podApp)
			if mode == "REDIRECT" {
				inbound = viaInbound(podApp) + app("pod", f.passthrough, podApp)
			}
			runQuirkProbes(t, []quirkProbe{
				{probe: probe{"ipv6_outbound", p.ns, appUser, "tcp", remoteApp,
					viaOutbound(remoteApp) + app("remote", f.pod, remoteApp)}},
				{probe: probe{"ipv6_inbound", p.remote, root, "tcp", podApp, inbound}},
				// IPv4 as --ipv6=false wants it, for contrast.
				{probe: p.inboundProbe("ipv4_inbound", mode, addr(ipv4.pod, appPort), ipv4.remote, true)},
				{probe: p.outboundProbe("ipv4_outbound", appUser, addr(ipv4.remote, appPort), ipv4.pod, true)},
			})
		})
	}
}
