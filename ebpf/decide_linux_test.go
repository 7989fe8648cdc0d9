//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestDecideConnectKernel: DecideConnect says what the connect hook the kernel runs does, for the
// app, the proxy and a process with the proxy's gid dialing every kind of destination of the test
// topology, with the pod entry of two configurations.
func TestDecideConnectKernel(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	include := testConfig()
	include.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{netip.PrefixFrom(remote2IP4, 32), netip.PrefixFrom(remoteIP6, 128)}}
	include.OutboundPorts = []uint16{includedPort}
	localhost4, localhost6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	targets := []netip.AddrPort{
		ap(remoteIP4, echoPort), ap(remote2IP4, echoPort), ap(remoteIP4, excludedPort), ap(remoteIP4, includedPort),
		ap(excludedIP4, echoPort), ap(excludedIP4, includedPort), ap(podIP4, echoPort), ap(localhost4, echoPort),
		ap(remoteIP6, echoPort), ap(remoteIP6, excludedPort), ap(excludedIP6, echoPort), ap(podIP6, echoPort), ap(localhost6, echoPort),
	}
	names := make([]string, len(targets))
	for i, a := range targets {
		names[i] = a.String()
	}
	for _, c := range []struct {
		name string
		cfg  redirect.Config
	}{{"ExcludeLists", testConfig()}, {"IncludeLists", include}} {
		t.Run(c.name, func(t *testing.T) {
			e.addPod(c.cfg, false)
			pod, err := PodFromConfig(e.cookie, &c.cfg, []netip.Addr{podIP4, podIP6})
			if err != nil {
				t.Fatal(err)
			}
			seen := map[bool]int{}
			for _, cred := range []*testutil.Cred{appCred, proxyCred, gidCred} {
				results := e.app(e.pod, cred, names...)
				for _, dst := range targets {
					r, ok := results[dst.String()]
					if !ok || r.Err != "" {
						t.Errorf("%s as %s: %+v", dst, cred, r)
						continue
					}
					kernel := len(r.Lines) > 1 && strings.HasPrefix(r.Lines[0], "proxy orig=")
					seen[kernel]++
					d := DecideConnect(&pod, Connect{Dst: dst, UID: uint32(cred.UID), GID: uint32(cred.GID)})
					if kernel != (d.Verdict == ConnectProxy) {
						t.Errorf("%s as %s: the kernel redirected %v, DecideConnect says %v (%s)", dst, cred, kernel, d.Verdict, d.Reason)
					}
				}
			}
			if seen[true] == 0 || seen[false] == 0 {
				t.Errorf("%d connections redirected, %d not: want both", seen[true], seen[false])
			}
		})
	}
}
