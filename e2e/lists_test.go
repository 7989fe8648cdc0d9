//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestCaptureLists proves F7: every include and exclude list (ports, CIDRs,
// interfaces, owner groups, proxy gids) captures exactly what it lists, in
// both families, for each variant and, where inbound capture differs, each
// mode. Each case's flags follow the injector's, so the last one given wins,
// as with istio-iptables.
func TestCaptureLists(t *testing.T) {
	testutil.RequireRoot(t)
	both := modes
	cases := []struct {
		name     string
		modes    []string  // REDIRECT when nil
		variants []variant // every variant when nil
		env      []string
		args     []string
		probes   func(p *pod, f family, mode string) []probe
	}{
		{
			name: "exclude_inbound_ports", modes: both,
			args: []string{"-d", "15090,15021,15020,8081"},
			probes: func(p *pod, f family, mode string) []probe {
				return []probe{
					p.inboundProbe("excluded", mode, addr(f.pod, 8081), f.remote, false),
					p.inboundProbe("other", mode, addr(f.pod, appPort), f.remote, true),
				}
			},
		},
		{
			name: "include_inbound_ports", modes: both,
			args: []string{"-b", "8080"},
			probes: func(p *pod, f family, mode string) []probe {
				return []probe{
					p.inboundProbe("included", mode, addr(f.pod, appPort), f.remote, true),
					p.inboundProbe("other", mode, addr(f.pod, 8082), f.remote, false),
				}
			},
		},
		{
			name: "no_inbound_ports", modes: both,
			args: []string{"-b", ""},
			probes: func(p *pod, f family, mode string) []probe {
				return []probe{
					p.inboundProbe("inbound", mode, addr(f.pod, appPort), f.remote, false),
					p.outboundProbe("outbound", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			name: "exclude_outbound_ports",
			args: []string{"-o", "9090"},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("excluded", appUser, addr(f.remote, otherPort), f.pod, false),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			name: "include_outbound_ports",
			args: []string{"-i", "", "-q", "9090"},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("included", appUser, addr(f.remote, otherPort), f.pod, true),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, false),
				}
			},
		},
		{
			name: "exclude_cidrs",
			args: []string{"-x", ipv4.farNet.String() + "," + ipv6.farNet.String()},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("excluded", appUser, addr(f.far, appPort), f.pod, false),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			name: "include_cidrs",
			args: []string{"-i", ipv4.farNet.String() + "," + ipv6.farNet.String()},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("included", appUser, addr(f.far, appPort), f.pod, true),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, false),
				}
			},
		},
		{
			name: "exclude_interfaces", modes: both,
			args: []string{"-c", "eth1"},
			probes: func(p *pod, f family, mode string) []probe {
				return []probe{
					p.inboundProbe("inbound_excluded", mode, addr(f.pod1, appPort), f.remote1, false),
					p.inboundProbe("inbound_other", mode, addr(f.pod, appPort), f.remote, true),
					p.outboundProbe("outbound_excluded", appUser, addr(f.remote1, appPort), f.pod1, false),
					p.outboundProbe("outbound_other", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			// Inbound traffic from a kube-virt interface is outbound traffic:
			// the proxy then calls the pod itself, which hairpins to 15006.
			// REDIRECT only: in TPROXY mode mangle PREROUTING hands such a
			// SYN to the inbound listener before nat PREROUTING redirects it
			// to 15001 (mangle has no "-i IFACE -j RETURN"): Istio's rules,
			// kept (TestIstioQuirkTProxyKubeVirtInterface).
			name: "kube_virt_interfaces",
			args: []string{"-k", "eth1"},
			probes: func(p *pod, f family, mode string) []probe {
				to := addr(f.pod1, appPort)
				return []probe{
					{"virt", p.remote, root, "tcp", to, viaOutbound(to) + viaInbound(to) + app("pod", f.passthrough, to)},
					p.inboundProbe("other", mode, addr(f.pod, appPort), f.remote, true),
				}
			},
		},
		{
			name: "outbound_owner_groups",
			env:  []string{"ISTIO_OUTBOUND_OWNER_GROUPS=1000"},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("included", appUser, addr(f.remote, appPort), f.pod, true),
					p.outboundProbe("other", otherGroup, addr(f.remote, appPort), f.pod, false),
				}
			},
		},
		{
			name: "outbound_owner_groups_exclude",
			env:  []string{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=2000"},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("excluded", otherGroup, addr(f.remote, appPort), f.pod, false),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			name: "proxy_uids_and_gids",
			args: []string{"-u", "1337,3000", "-g", "1337,2000"},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					p.outboundProbe("listed_uid", testutil.Cred{UID: 3000, GID: 1000}, addr(f.remote, appPort), f.pod, false),
					p.outboundProbe("listed_gid", otherGroup, addr(f.remote, appPort), f.pod, false),
					p.outboundProbe("other", appUser, addr(f.remote, appPort), f.pod, true),
				}
			},
		},
		{
			// Every DNS server is captured, not only --dns-servers; the proxy's
			// own queries still are not.
			name: "capture_all_dns", modes: both,
			args: []string{"--redirect-dns", "--capture-all-dns", "--dns-servers="},
			probes: func(p *pod, f family, _ string) []probe {
				return []probe{
					{"app_udp", p.ns, appUser, "udp", addr(f.remote1, dnsPort), "dns=proxy;" + dnsAnswer("remote", f.pod)},
					{"app_tcp", p.ns, appUser, "tcp", addr(f.remote1, dnsPort),
						fmt.Sprintf("dns=proxy orig=%s;", addr(f.remote1, dnsPort)) + dnsAnswer("remote", f.pod)},
					{"proxy_udp", p.ns, proxyUser, "udp", addr(f.remote1, dnsPort), dnsAnswer("remote", f.pod1)},
				}
			},
		},
		{
			// Not native: Istio's native mode captures IPv6 without IPv6
			// too (TestIstioQuirkNativeIPv6Disabled).
			name: "ipv6_disabled", variants: []variant{"nft", "legacy"},
			args: []string{"--ipv6=false"},
			probes: func(p *pod, f family, mode string) []probe {
				on := f.name == ipv4.name
				return []probe{
					p.inboundProbe("inbound", mode, addr(f.pod, appPort), f.remote, on),
					p.outboundProbe("outbound", appUser, addr(f.remote, appPort), f.pod, on),
				}
			},
		},
	}
	for _, tc := range cases {
		caseVariants := tc.variants
		if caseVariants == nil {
			caseVariants = variants
		}
		for _, variant := range caseVariants {
			caseModes := tc.modes
			if caseModes == nil {
				caseModes = []string{"REDIRECT"}
			}
			for _, mode := range caseModes {
				t.Run(tc.name+"/"+string(variant)+"/"+mode, func(t *testing.T) {
					t.Parallel()
					p := newPod(t, variant)
					args := append(injectorArgs(mode), "--ipv6=true")
					p.capture(t, tc.env, append(args, tc.args...)...)
					p.startProxy(t, mode)
					for _, f := range families {
						t.Run(f.name, func(t *testing.T) { runProbes(t, tc.probes(p, f, mode)) })
					}
				})
			}
		}
	}
}

// inboundProbe connects from the remote (source from) to the pod address
// to and expects the inbound listener on the path when captured.
func (p *pod) inboundProbe(name, mode string, to netip.AddrPort, from netip.Addr, captured bool) probe {
	want := app("pod", from, to)
	if captured {
		peer := ipv4.passthrough
		if to.Addr().Is6() {
			peer = ipv6.passthrough
		}
		if mode == "TPROXY" {
			peer = from
		}
		want = viaInbound(to) + app("pod", peer, to)
	}
	return probe{name, p.remote, root, "tcp", to, want}
}

// outboundProbe connects from the pod as cred to the remote app at to,
// leaving from src, and expects the outbound listener on the path when
// captured.
func (p *pod) outboundProbe(name string, as testutil.Cred, to netip.AddrPort, src netip.Addr, captured bool) probe {
	want := app("remote", src, to)
	if captured {
		want = viaOutbound(to) + want
	}
	return probe{name, p.ns, as, "tcp", to, want}
}
