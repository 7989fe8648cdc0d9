package ebpf

import (
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/redirect"
)

// TestDecideConnectMirrorsC ties DecideConnect to redirect.c: the values of enum verdict, and the
// order of decide()'s tests, read as the verdict each returns. A change to decide() in C fails here
// until DecideConnect (and this list) follow it.
func TestDecideConnectMirrorsC(t *testing.T) {
	src, err := os.ReadFile("redirect.c")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	for name, want := range map[string]ConnectVerdict{"VERDICT_PASS": ConnectPass, "VERDICT_PROXY": ConnectProxy, "VERDICT_DNS": ConnectDNS} {
		m := regexp.MustCompile(`\b` + name + ` = (\d+),`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("redirect.c: no %s in enum verdict", name)
		}
		if got, _ := strconv.Atoi(m[1]); ConnectVerdict(got) != want {
			t.Errorf("redirect.c: %s = %d, DecideConnect's is %d", name, got, want)
		}
	}
	start := strings.Index(text, "static __always_inline enum verdict decide(")
	if start < 0 {
		t.Fatal("redirect.c: no decide()")
	}
	body := text[start:]
	body = body[:strings.Index(body, "\n}\n")]
	var got []string
	for _, m := range regexp.MustCompile(`return (VERDICT_\w+);`).FindAllStringSubmatch(body, -1) {
		got = append(got, m[1])
	}
	// DecideConnect's cases, in order, by the C test they mirror (uid and gid are one test in C,
	// and the owner groups' include and exclude tests are an if/else there).
	want := []string{
		"VERDICT_PASS",  // IPv6 without POD_IPV6
		"VERDICT_PASS",  // SET_PORT_EXCLUDE
		"VERDICT_PASS",  // bound to the passthrough source
		"VERDICT_PASS",  // proxy uid or gid
		"VERDICT_PASS",  // local destination
		"VERDICT_PASS",  // gid not included
		"VERDICT_PASS",  // gid excluded
		"VERDICT_DNS",   // DNS
		"VERDICT_PASS",  // host loopback range
		"VERDICT_PASS",  // IPv6 loopback
		"VERDICT_PASS",  // CIDR_EXCLUDE
		"VERDICT_PROXY", // SET_PORT_INCLUDE
		"VERDICT_PROXY", // POD_INCLUDE_ALL or CIDR_INCLUDE
		"VERDICT_PASS",  // nothing included
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decide() in redirect.c returns in another order than DecideConnect mirrors (-mirrored +redirect.c):\n%s", diff)
	}
}

// TestDecideConnect: the connect hook's decisions for the pods of a few configurations, each case
// the test of decide() it stops at, and the DNS hooks' for UDP.
func TestDecideConnect(t *testing.T) {
	pod := func(edit func(*redirect.Config)) *Pod {
		t.Helper()
		cfg := redirect.DefaultConfig()
		if edit != nil {
			edit(&cfg)
		}
		p, err := PodFromConfig(1, &cfg, []netip.Addr{netip.MustParseAddr("10.0.0.2")})
		if err != nil {
			t.Fatal(err)
		}
		return &p
	}
	def := pod(nil)
	excluded := pod(func(c *redirect.Config) {
		c.OutboundIPRangesExclude = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		c.OutboundPortsExclude = []uint16{5432}
		c.OutboundPorts = []uint16{10443}
	})
	dns := pod(func(c *redirect.Config) {
		c.RedirectDNS, c.DNSServers = true, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
		c.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}}
	})
	conn := func(dst string, uid, gid uint32) Connect {
		return Connect{Dst: netip.MustParseAddrPort(dst), UID: uid, GID: gid}
	}
	udp := func(dst string, uid, gid uint32) Connect {
		c := conn(dst, uid, gid)
		c.UDP = true
		return c
	}
	for _, tc := range []struct {
		name string
		pod  *Pod
		c    Connect
		want ConnectVerdict
		port uint16
		why  string
	}{
		{"remote", def, conn("1.2.3.4:443", 1000, 1000), ConnectProxy, 15001, "every destination"},
		{"mapped", def, conn("[::ffff:1.2.3.4]:443", 1000, 1000), ConnectProxy, 15001, "every destination"},
		{"ipv6 off", def, conn("[2001:db8::1]:443", 1000, 1000), ConnectPass, 0, "IPv6"},
		{"proxy uid", def, conn("1.2.3.4:443", 1337, 0), ConnectPass, 0, "uid 1337"},
		{"proxy gid", def, conn("1.2.3.4:443", 0, 1337), ConnectPass, 0, "gid 1337"},
		{"own ip", def, conn("10.0.0.2:8080", 0, 0), ConnectPass, 0, "local"},
		{"localhost", def, conn("127.0.0.1:8080", 0, 0), ConnectPass, 0, "local"},
		{"passthrough src", def, Connect{Dst: netip.MustParseAddrPort("1.2.3.4:80"), Src: netip.MustParseAddr("127.0.0.6")}, ConnectPass, 0, "passthrough"},
		{"excluded cidr", excluded, conn("10.1.2.3:443", 0, 0), ConnectPass, 0, "excluded range"},
		{"excluded port", excluded, conn("1.2.3.4:5432", 0, 0), ConnectPass, 0, "port 5432"},
		{"included port in excluded cidr", excluded, conn("10.1.2.3:10443", 0, 0), ConnectPass, 0, "excluded range"},
		{"included port", excluded, conn("1.2.3.4:10443", 0, 0), ConnectProxy, 15001, "always captured"},
		{"dns", dns, conn("10.96.0.10:53", 0, 0), ConnectDNS, 15053, "DNS"},
		{"dns other server", dns, conn("8.8.8.8:53", 0, 0), ConnectPass, 0, "no captured range"},
		{"included range", dns, conn("172.20.0.1:80", 0, 0), ConnectProxy, 15001, "captured range"},
		// An id the pod's user namespace does not map is no one's, though unused id slots hold it.
		{"unmapped uid", def, conn("1.2.3.4:443", NoID, NoID), ConnectProxy, 15001, "every destination"},
		{"udp dns", dns, udp("10.96.0.10:53", 1000, 1000), ConnectDNS, 15053, "DNS over UDP"},
		{"udp dns mapped", dns, udp("[::ffff:10.96.0.10]:53", 1000, 1000), ConnectDNS, 15053, "DNS over UDP"},
		{"udp dns proxy uid", dns, udp("10.96.0.10:53", 1337, 1337), ConnectPass, 0, "uid 1337"},
		{"udp dns other server", dns, udp("8.8.8.8:53", 0, 0), ConnectPass, 0, "no captured range"},
		{"udp dns in captured range", dns, udp("172.20.0.1:53", 0, 0), ConnectPass, 0, "not a captured DNS server"},
		{"udp other port", dns, udp("10.96.0.10:443", 0, 0), ConnectPass, 0, "port 53"},
		{"udp without dns capture", def, udp("10.96.0.10:53", 0, 0), ConnectPass, 0, "--redirect-dns"},
	} {
		got := DecideConnect(tc.pod, tc.c)
		if got.Verdict != tc.want || got.Port != tc.port || !strings.Contains(got.Reason, tc.why) {
			t.Errorf("%s: %+v, want %v port %d, a reason with %q", tc.name, got, tc.want, tc.port, tc.why)
		}
	}
}
