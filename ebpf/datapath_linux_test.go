//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestRedirect sends the app's connections through the proxy in both families, with every
// payload size, and checks what is not captured: excluded ports and ranges, the app's own pod IP,
// localhost, the proxy's uid and gid, and a namespace that is not registered.
func TestRedirect(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")

	for _, fam := range []struct {
		name                     string
		pod, remote, excl, local netip.Addr
	}{
		{"IPv4", podIP4, remoteIP4, excludedIP4, netip.MustParseAddr("127.0.0.1")},
		{"IPv6", podIP6, remoteIP6, excludedIP6, netip.MustParseAddr("::1")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			before := e.stats()
			remote := ap(fam.remote, echoPort).String()
			want := []expect{
				{target: remote, redirected: true, orig: ap(fam.remote, echoPort), server: "remote"},
				{target: ap(fam.remote, excludedPort).String(), server: "remote"},
				{target: ap(fam.excl, echoPort).String(), server: "remote"},
				{target: ap(fam.pod, echoPort).String(), server: "self"},
				{target: ap(fam.local, echoPort).String(), server: "self"},
			}
			targets := make([]string, len(want))
			for i, w := range want {
				targets[i] = w.target
			}
			if fam.name == "IPv4" {
				mapped := "mapped:" + ap(fam.remote, echoPort).String()
				want = append(want, expect{target: mapped, redirected: true, orig: ap(fam.remote, echoPort), server: "remote"})
				targets = append(targets, mapped)
			}
			check(t, e.app(e.pod, appCred, targets...), want)
			redirected := uint64(1)
			if fam.name == "IPv4" {
				redirected = 2
			}

			// The proxy's identities are never captured.
			check(t, e.app(e.pod, proxyCred, remote), []expect{{target: remote, server: "remote"}})
			check(t, e.app(e.pod, gidCred, remote), []expect{{target: remote, server: "remote"}})

			d := statsDelta(before, e.stats())
			// Go's dialer calls getpeername(2) too.
			if d.ConnectsRedirected != redirected || d.OrigDstAnswered != redirected || d.PeerNamesAnswered < redirected {
				t.Errorf("stats %+v: want %d connects redirected and original destinations answered, and peer names", d, redirected)
			}
			if d.SocketsPaired != 2*redirected || d.MessagesRedirected == 0 || d.RedirectMisses != 0 || d.MessagesFallback != 0 {
				t.Errorf("stats %+v: want %d sockets paired, messages redirected, no misses", d, 2*redirected)
			}
			// Every payload crossed app→proxy and proxy→app by sk_msg, plus the greetings.
			var payload uint64
			for _, s := range payloadSizes {
				payload += uint64(s)
			}
			if d.BytesRedirected < 2*redirected*payload {
				t.Errorf("stats %+v: want at least %d bytes redirected", d, 2*redirected*payload)
			}
		})
	}

	t.Run("UnregisteredNamespace", func(t *testing.T) {
		before := e.stats()
		target := ap(otherIP4, echoPort).String()
		check(t, e.app(e.other, appCred, target), []expect{{target: target, server: "other"}})
		if d := statsDelta(before, e.stats()); d.ConnectsRedirected != 0 || d.SocketsPaired != 0 {
			t.Errorf("stats %+v: the unregistered namespace was touched", d)
		}
	})

	t.Run("SocketsRemovedOnClose", func(t *testing.T) {
		// While a redirected connection is open, both of its loopback sockets are in the
		// socket hash; the app end's original destination went from shunt_origkey to the proxy
		// end's storage when the proxy end was established.
		target := ap(remoteIP4, echoPort).String()
		finish := e.startHeld(e.pod, appCred, target)
		nh, err1 := countKeys[redirectPairKey](e.node.maps.ShuntSockhash)
		no, err2 := countKeys[redirectPeerKey](e.node.maps.ShuntOrigkey)
		if err := errors.Join(err1, err2); err != nil || nh != 2 || no != 0 {
			t.Errorf("with one connection open: %d sockets in %s, %d entries in %s (%v); want 2 and 0",
				nh, redirectMapShuntSockhash, no, redirectMapShuntOrigkey, err)
		}
		finish()
		// The app has exited; the proxy closes its side when its relay ends.
		err := waitFor(10*time.Second, func() (bool, error) {
			nh, err := countKeys[redirectPairKey](e.node.maps.ShuntSockhash)
			return nh == 0 && err == nil, fmt.Errorf("%d sockets in %s (%v)", nh, redirectMapShuntSockhash, err)
		})
		if err != nil {
			t.Error(err)
		}
	})
}

// TestPassthrough checks that the proxy's inbound passthrough connection, from 127.0.0.6 / ::6
// to the app's server on the pod IP, is paired and its bytes go by sk_msg.
func TestPassthrough(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, appCred, "server", "-listen", fmt.Sprintf("[::]:%d", appPort), "-name", "app")
	for _, c := range []struct {
		name string
		src  string
		dst  netip.AddrPort
	}{
		{"IPv4", "127.0.0.6", ap(podIP4, appPort)},
		{"IPv6", "::6", ap(podIP6, appPort)},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.stats()
			results := e.app(e.pod, proxyCred, "-bind", c.src, c.dst.String())
			check(t, results, []expect{{target: c.dst.String(), server: "app"}})
			r := results[c.dst.String()]
			_, peer, _ := strings.Cut(strings.Join(r.Lines, ""), " peer=")
			if got, err := netip.ParseAddrPort(peer); err != nil || got.Addr().Unmap() != netip.MustParseAddr(c.src) {
				t.Errorf("the app saw %q, want a peer at %s", r.Lines, c.src)
			}
			d := statsDelta(before, e.stats())
			if d.ConnectsRedirected != 0 || d.SocketsPaired != 2 || d.MessagesRedirected == 0 || d.RedirectMisses != 0 {
				t.Errorf("stats %+v: want no connect redirected, 2 sockets paired, messages redirected, no misses", d)
			}
		})
	}
}

// TestPeerNotPaired checks the fallback of a paired socket whose peer is not in the socket hash
// (here the pod's server outside the test cgroup, which the programs never see): its first
// message misses, every later one goes through TCP, and the bytes arrive intact and in order.
func TestPeerNotPaired(t *testing.T) {
	e := newEnv(t)
	before := e.stats()
	target := ap(podIP4, echoPort).String()
	check(t, e.app(e.pod, proxyCred, "-bind", "127.0.0.6", target), []expect{{target: target, server: "self"}})
	d := statsDelta(before, e.stats())
	if d.SocketsPaired != 1 || d.MessagesRedirected != 0 || d.RedirectMisses != 1 || d.MessagesFallback == 0 {
		t.Errorf("stats %+v: want 1 socket paired, 1 miss, then messages through TCP", d)
	}
}

// TestNoSockMsg checks the pod opt-out: connections still go through the proxy with their
// original destination, but no socket is paired and no message redirected.
func TestNoSockMsg(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	e.addPod(e.cfg, true)
	before := e.stats()
	targets := []string{ap(remoteIP4, echoPort).String(), ap(remoteIP6, echoPort).String()}
	check(t, e.app(e.pod, appCred, targets...), []expect{
		{target: targets[0], redirected: true, orig: ap(remoteIP4, echoPort), server: "remote"},
		{target: targets[1], redirected: true, orig: ap(remoteIP6, echoPort), server: "remote"},
	})
	d := statsDelta(before, e.stats())
	if d.ConnectsRedirected != 2 || d.OrigDstAnswered != 2 || d.SocketsPaired != 0 || d.MessagesRedirected != 0 {
		t.Errorf("stats %+v: want 2 connects redirected and answered, nothing paired or redirected", d)
	}
}

// TestCaptureRules checks the rules beyond the default config's: TCP DNS to a listed server goes
// to the DNS proxy, owner groups include and exclude, and an included loopback range captures the
// app's connections to its own pod IP.
func TestCaptureRules(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15053", "-name", "dns")
	remote, dns := ap(remoteIP4, echoPort), ap(remoteIP4, 53)
	otherDNS := ap(remote2IP4, 53) // not a listed DNS server

	t.Run("DNS", func(t *testing.T) {
		cfg := testConfig()
		cfg.RedirectDNS = true
		cfg.DNSServers = []netip.Addr{remoteIP4}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, dns.String(), otherDNS.String(), remote.String()), []expect{
			{target: dns.String(), redirected: true, via: "dns", orig: dns, server: "remote"},
			{target: otherDNS.String(), redirected: true, orig: otherDNS, server: "remote"}, // to the outbound proxy
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
		// The agent's own queries are not captured.
		check(t, e.app(e.pod, proxyCred, dns.String()), []expect{{target: dns.String(), server: "remote"}})
	})

	t.Run("OwnerGroupsInclude", func(t *testing.T) {
		cfg := testConfig()
		cfg.OwnerGroups = redirect.GroupFilter{Include: []uint32{2000}}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, remote.String()), []expect{{target: remote.String(), server: "remote"}})
		check(t, e.app(e.pod, &testutil.Cred{UID: 1002, GID: 2000}, remote.String()), []expect{
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
	})

	t.Run("OwnerGroupsExclude", func(t *testing.T) {
		cfg := testConfig()
		cfg.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{uint32(appCred.GID)}}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, remote.String()), []expect{{target: remote.String(), server: "remote"}})
		check(t, e.app(e.pod, &testutil.Cred{UID: 1002, GID: 2000}, remote.String()), []expect{
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
	})

	t.Run("IncludedLoopbackRange", func(t *testing.T) {
		// istio-iptables then has no "-o lo ! --uid-owner 1337 RETURN": the app calling its
		// own pod IP is captured when the pod IP is included, localhost still is not.
		cfg := testConfig()
		cfg.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/8"), netip.PrefixFrom(podIP4, 32),
		}}
		e.addPod(cfg, false)
		self, local := ap(podIP4, echoPort), ap(netip.MustParseAddr("127.0.0.1"), echoPort)
		check(t, e.app(e.pod, appCred, self.String(), local.String(), remote.String()), []expect{
			{target: self.String(), redirected: true, orig: self, server: "self"},
			{target: local.String(), server: "self"},
			{target: remote.String(), server: "remote"},
		})
	})
}
