package randconfig

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Settings is a random configuration as a black-box test hands it to shunt: the flags and
// environment of its settings, and the values the test draws connections from.
type Settings struct {
	// Args and Env make `shunt iptables` (and `shunt trace`, `shunt graph`) program the
	// configuration; see Flags.
	Args, Env []string
	Mode      string // REDIRECT or TPROXY
	IPv6      bool
	// DropInvalid: --drop-invalid.
	DropInvalid bool
	// Ports are the ports the settings name: inbound, inbound excluded, outbound, outbound excluded.
	Ports []uint16
	// DNSServers are --dns-servers.
	DNSServers []netip.Addr
	// KubeVirtInterfaces are -k.
	KubeVirtInterfaces []string
}

// Draw returns the Settings of Config(r, redirect.DefaultConfig()) in mode (REDIRECT or TPROXY). It
// draws from r what Config draws.
func Draw(r *rand.Rand, mode string) Settings {
	cfg := Config(r, redirect.DefaultConfig())
	cfg.Mode = redirect.Mode(mode)
	args, env := Flags(cfg)
	return Settings{
		Args: args, Env: env, Mode: string(cfg.Mode), IPv6: cfg.IPv6, DropInvalid: cfg.DropInvalid,
		Ports:              slices.Concat(cfg.InboundPorts.Ports, cfg.InboundPortsExclude, cfg.OutboundPorts, cfg.OutboundPortsExclude),
		DNSServers:         slices.Clone(cfg.DNSServers),
		KubeVirtInterfaces: slices.Clone(cfg.KubeVirtInterfaces),
	}
}

// Flags returns the flags and environment that spell cfg's settings for `shunt iptables`, `shunt
// trace` and `shunt graph`: every setting, given explicitly. The backend is not among them
// (cfg.NativeNFTables): the caller adds --native-nftables or --force-iptables-binary, and for
// `shunt iptables` --reconcile or --dry-run as it needs.
func Flags(cfg redirect.Config) (args, env []string) {
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
		"--ipv6=" + strconv.FormatBool(cfg.IPv6), "--dns-servers=" + list(servers),
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
