package ebpf

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/shuntmesh/shunt/redirect"
)

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var cmpPod = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func TestPodFromConfigDefault(t *testing.T) {
	cfg := redirect.DefaultConfig()
	ips := []netip.Addr{mustAddr(t, "10.0.0.5"), mustAddr(t, "::ffff:10.0.0.6"), mustAddr(t, "fd00::5")}
	got, err := PodFromConfig(7, &cfg, ips)
	if err != nil {
		t.Fatal(err)
	}
	want := Pod{
		Cookie:       7,
		ProxyPort:    15001,
		InboundPort:  15006,
		ProxyUIDs:    []uint32{1337},
		ProxyGIDs:    []uint32{1337},
		IPs:          []netip.Addr{mustAddr(t, "10.0.0.5"), mustAddr(t, "10.0.0.6"), mustAddr(t, "fd00::5")},
		IncludeAll:   true,
		HostLoopback: mustPrefix(t, "127.0.0.1/32"),
		OwnerGroups:  redirect.GroupFilter{All: true},
	}
	if diff := cmp.Diff(want, got, cmpPod); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

func TestPodFromConfigLists(t *testing.T) {
	cfg := redirect.DefaultConfig()
	cfg.IPv6 = true
	cfg.ProxyUIDs = []uint32{1337, 0}
	cfg.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{mustPrefix(t, "10.96.0.1/12"), mustPrefix(t, "fd00:96::/64")}}
	cfg.OutboundIPRangesExclude = []netip.Prefix{mustPrefix(t, "10.96.5.0/24")}
	cfg.OutboundPorts = []uint16{8080}
	cfg.OutboundPortsExclude = []uint16{3306, 5432}
	cfg.OwnerGroups = redirect.GroupFilter{Include: []uint32{100, 200}}
	cfg.HostIPv4LoopbackCIDR = mustPrefix(t, "127.0.0.1/8")
	cfg.RedirectDNS = true
	cfg.DNSServers = []netip.Addr{mustAddr(t, "10.96.0.10")}
	got, err := PodFromConfig(7, &cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Pod{
		Cookie:       7,
		ProxyPort:    15001,
		InboundPort:  15006,
		ProxyUIDs:    []uint32{1337, 0},
		ProxyGIDs:    []uint32{1337},
		IPv6:         true,
		Include:      []netip.Prefix{mustPrefix(t, "10.96.0.0/12"), mustPrefix(t, "fd00:96::/64")},
		Exclude:      []netip.Prefix{mustPrefix(t, "10.96.5.0/24")},
		Ports:        []uint16{8080},
		PortsExclude: []uint16{3306, 5432},
		HostLoopback: mustPrefix(t, "127.0.0.0/8"),
		OwnerGroups:  redirect.GroupFilter{Include: []uint32{100, 200}},
		DNSPort:      redirect.DNSProxyPort,
		DNSServers:   []netip.Addr{mustAddr(t, "10.96.0.10")},
	}
	if diff := cmp.Diff(want, got, cmpPod); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if got.CaptureLocal {
		t.Error("CaptureLocal without a loopback include range")
	}
	// As configured: 127.0.0.1/4 masks to 112.0.0.0/4, but the engine leaves out the lo RETURN for it.
	for _, p := range []string{"127.0.0.0/8", "127.0.0.1/4", "::1/127"} {
		c := cfg
		c.OutboundIPRanges.Prefixes = append(slices.Clone(cfg.OutboundIPRanges.Prefixes), mustPrefix(t, p))
		if got, _ := PodFromConfig(7, &c, nil); !got.CaptureLocal {
			t.Errorf("no CaptureLocal with the include range %s", p)
		}
	}
}

// TestPodFromConfigIsOutbound: the pod holds the engine's decisions of ISTIO_OUTPUT, as they are.
func TestPodFromConfigIsOutbound(t *testing.T) {
	cfg := redirect.DefaultConfig()
	cfg.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{mustPrefix(t, "10.96.0.1/12"), mustPrefix(t, "127.1.2.3/32")}}
	cfg.OutboundIPRangesExclude = []netip.Prefix{mustPrefix(t, "fd00::5/64")}
	cfg.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{5}}
	cfg.RedirectDNS, cfg.DNSServers = true, []netip.Addr{mustAddr(t, "10.96.0.10")}
	p, err := PodFromConfig(3, &cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Outbound()
	got := redirect.Outbound{
		ProxyPort: p.ProxyPort, InboundPort: p.InboundPort, TunnelPort: o.TunnelPort, ProxyUIDs: p.ProxyUIDs, ProxyGIDs: p.ProxyGIDs,
		IncludeAll: p.IncludeAll, Include: p.Include, Exclude: p.Exclude, Ports: p.Ports, PortsExclude: p.PortsExclude,
		HostLoopback: p.HostLoopback, IncludesLoopback: p.CaptureLocal, OwnerGroups: p.OwnerGroups,
		DNSPort: p.DNSPort, DNSAll: p.DNSAll, DNSServers: p.DNSServers,
	}
	if diff := cmp.Diff(o, got, cmpPod); diff != "" {
		t.Errorf("(-outbound +pod)\n%s", diff)
	}
}

func TestPodFromConfigDNS(t *testing.T) {
	for _, c := range []struct {
		name     string
		redirect bool
		all      bool
		servers  []netip.Addr
		port     uint16
	}{
		{"off", false, true, nil, 0},
		{"no servers", true, false, nil, 0}, // as redirect.Build: nothing to capture
		{"all", true, true, []netip.Addr{netip.MustParseAddr("10.0.0.10")}, redirect.DNSProxyPort},
		{"servers", true, false, []netip.Addr{netip.MustParseAddr("10.0.0.10")}, redirect.DNSProxyPort},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := redirect.DefaultConfig()
			cfg.RedirectDNS, cfg.CaptureAllDNS, cfg.DNSServers = c.redirect, c.all, c.servers
			p, err := PodFromConfig(1, &cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if p.DNSPort != c.port || p.DNSAll != (c.port != 0 && c.all) {
				t.Errorf("DNS port %d all %v, want %d %v", p.DNSPort, p.DNSAll, c.port, c.port != 0 && c.all)
			}
			if c.all && len(p.DNSServers) > 0 {
				t.Errorf("servers %v kept with --capture-all-dns", p.DNSServers)
			}
		})
	}
}

func TestPodFromConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name   string
		modify func(*redirect.Config)
		ips    []netip.Addr
		fields []string // FieldError fields, or
		text   string   // a piece of the message
	}{
		{name: "too many uids", modify: func(c *redirect.Config) { c.ProxyUIDs = []uint32{1, 2, 3, 4, 5} }, fields: []string{"proxy-uid"}},
		{name: "too many gids", modify: func(c *redirect.Config) { c.ProxyGIDs = []uint32{1, 2, 3, 4, 5} }, fields: []string{"proxy-gid"}},
		{name: "exclude interfaces", modify: func(c *redirect.Config) { c.ExcludeInterfaces = []string{"eth1", "eth2"} },
			fields: []string{"istio-exclude-interfaces", "istio-exclude-interfaces"}},
		{name: "all at once", modify: func(c *redirect.Config) {
			c.ProxyUIDs = []uint32{1, 2, 3, 4, 5}
			c.ExcludeInterfaces = []string{"eth1"}
		}, fields: []string{"proxy-uid", "istio-exclude-interfaces"}},
		{name: "invalid config", modify: func(c *redirect.Config) { c.ProxyPort = 0 }, fields: []string{"envoy-port"}},
		{name: "invalid pod IP", ips: []netip.Addr{{}}, text: "pod IP"},
		{name: "zoned pod IP", ips: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, text: "pod IP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := redirect.DefaultConfig()
			if c.modify != nil {
				c.modify(&cfg)
			}
			_, err := PodFromConfig(1, &cfg, c.ips)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not mention %q", err, c.text)
			}
			var fields []string
			for _, e := range unjoin(err) {
				var fe *redirect.FieldError
				if errors.As(e, &fe) {
					fields = append(fields, fe.Field)
				}
			}
			if diff := cmp.Diff(c.fields, fields, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("fields of %q (-want +got)\n%s", err, diff)
			}
		})
	}
}

// unjoin returns the errors joined in err, or err itself.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestPodValidate(t *testing.T) {
	valid := func() Pod {
		return Pod{Cookie: 1, ProxyPort: 15001, InboundPort: 15006, ProxyUIDs: []uint32{1337},
			HostLoopback: netip.MustParsePrefix("127.0.0.1/32"), OwnerGroups: redirect.GroupFilter{All: true}}
	}
	if p := valid(); p.Validate() != nil {
		t.Fatalf("valid pod: %v", p.Validate())
	}
	for _, c := range []struct {
		name   string
		modify func(*Pod)
	}{
		{"cookie 0", func(p *Pod) { p.Cookie = 0 }},
		{"proxy port 0", func(p *Pod) { p.ProxyPort = 0 }},
		{"inbound port 0", func(p *Pod) { p.InboundPort = 0 }},
		{"five uids", func(p *Pod) { p.ProxyUIDs = []uint32{1, 2, 3, 4, 5} }},
		{"invalid uid", func(p *Pod) { p.ProxyUIDs = []uint32{redirect.InvalidID} }},
		{"no proxy ids", func(p *Pod) { p.ProxyUIDs = nil }},
		{"invalid IP", func(p *Pod) { p.IPs = []netip.Addr{{}} }},
		{"invalid prefix", func(p *Pod) { p.Exclude = []netip.Prefix{{}} }},
		{"port 0", func(p *Pod) { p.Ports = []uint16{0} }},
		{"loopback not in 127/8", func(p *Pod) { p.HostLoopback = netip.MustParsePrefix("10.0.0.0/8") }},
		{"no loopback", func(p *Pod) { p.HostLoopback = netip.Prefix{} }},
		{"no group included", func(p *Pod) { p.OwnerGroups = redirect.GroupFilter{} }},
		{"DNS servers without port", func(p *Pod) { p.DNSAll = true }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := valid()
			c.modify(&p)
			if err := p.Validate(); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestMissingError(t *testing.T) {
	err := error(&MissingError{Missing: []string{"program type sk_msg", "bpffs"}})
	if !errors.Is(err, ErrNotSupported) {
		t.Error("not ErrNotSupported")
	}
	if got, want := err.Error(), "eBPF fast path: missing program type sk_msg, bpffs"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}
