package capture

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/redirect"
)

// istioFlags are istio-iptables' flags and environment variables, plus shunt's additions.
type istioFlags struct {
	fs *pflag.FlagSet

	envoyPort, inboundPort, tunnelPort     string
	proxyUID, proxyGID, mode               string
	inboundPorts, inboundExclude           string
	serviceCIDR, serviceExcludeCIDR        string
	outboundPorts, outboundExclude         string
	excludeIfaces, kubeVirtIfaces          string
	tproxyMark, tproxyTable                string
	dryRun, redirectDNS, captureAllDNS     bool
	dropInvalid, dualStack, reconcile      bool
	cleanupOnly, forceApply, runValidation bool
	skipRuleApply                          bool
	probePort                              string
	probeTimeout                           time.Duration
	netns, forceBinary                     string
	ipv6, dnsServers, pod                  string
	explain, nativeNFT                     bool
	logLevel                               string
	logJSON                                bool
}

// Flags of istioFlags by what they serve; each command registers the ones it honours.
var (
	// ruleFlags shape the rules; --pod takes their place.
	ruleFlags = []string{
		"envoy-port", "inbound-capture-port", "inbound-tunnel-port", "proxy-uid", "proxy-gid",
		"istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude",
		"istio-exclude-interfaces", "kube-virt-interfaces", "istio-inbound-tproxy-mark",
		"istio-inbound-tproxy-route-table", "redirect-dns", "capture-all-dns", "drop-invalid", "dns-servers", "ipv6",
		"dual-stack",
	}
	// validationRuleFlags are the ruleFlags the validation uses: it listens on the capture ports,
	// connects as the proxy's uid and gid, and probes IPv6 when the namespace has it.
	validationRuleFlags = []string{"envoy-port", "inbound-capture-port", "proxy-uid", "proxy-gid", "ipv6", "dual-stack"}
	// dataPathRuleFlags are the ruleFlags the eBPF data path reads (ebpf.PodFromConfig): outbound
	// capture, the proxy's ports and identity, DNS and the families. Inbound capture (-b -d -e -k -m -t
	// -r) and --drop-invalid stay with the iptables rules; -c is refused there with the reason.
	dataPathRuleFlags = []string{"envoy-port", "inbound-capture-port", "proxy-uid", "proxy-gid", "istio-service-cidr",
		"istio-service-exclude-cidr", "istio-outbound-ports", "istio-local-outbound-ports-exclude", "istio-exclude-interfaces",
		"redirect-dns", "capture-all-dns", "dns-servers", "ipv6", "dual-stack"}
	// backendFlags choose what programs the rules.
	backendFlags = []string{"native-nftables", "force-iptables-binary"}
	// probeFlags tune the validation.
	probeFlags = []string{"iptables-probe-port", "probe-timeout"}
	logFlags   = []string{"log_output_level", "log_as_json"}
)

// newIstioFlags registers on fs the istio-iptables flags named in groups; the others keep their
// defaults and are neither parsed nor read from the environment.
func newIstioFlags(fs *pflag.FlagSet, groups ...[]string) *istioFlags {
	f := &istioFlags{fs: fs}
	all := pflag.NewFlagSet("istio-iptables", pflag.ContinueOnError)
	f.register(all)
	for _, group := range groups {
		for _, name := range group {
			fl := all.Lookup(name)
			if fl == nil {
				panic("no istio-iptables flag " + name)
			}
			fs.AddFlag(fl)
		}
	}
	return f
}

func (f *istioFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.envoyPort, "envoy-port", "p", "15001", "port the outbound listener of the proxy listens on")
	fs.StringVarP(&f.inboundPort, "inbound-capture-port", "z", "15006", "port inbound TCP is redirected to")
	fs.StringVarP(&f.tunnelPort, "inbound-tunnel-port", "e", "15008", "tunnel port, never captured")
	fs.StringVarP(&f.proxyUID, "proxy-uid", "u", "1337", "comma list of uids whose traffic is not captured (the proxy's)")
	fs.StringVarP(&f.proxyGID, "proxy-gid", "g", "", "comma list of gids whose traffic is not captured (default: the uids)")
	fs.StringVarP(&f.mode, "istio-inbound-interception-mode", "m", "REDIRECT", "inbound interception mode: REDIRECT or TPROXY")
	fs.StringVarP(&f.inboundPorts, "istio-inbound-ports", "b", "*", "inbound ports to capture, '*' for all, '' for none")
	fs.StringVarP(&f.inboundExclude, "istio-local-exclude-ports", "d", "15090,15021,15020", "inbound ports not captured when -b is '*'")
	fs.StringVarP(&f.serviceCIDR, "istio-service-cidr", "i", "*", "outbound CIDRs to capture, '*' for all, '' for none")
	fs.StringVarP(&f.serviceExcludeCIDR, "istio-service-exclude-cidr", "x", "", "outbound CIDRs never captured")
	fs.StringVarP(&f.outboundPorts, "istio-outbound-ports", "q", "", "outbound ports always captured")
	fs.StringVarP(&f.outboundExclude, "istio-local-outbound-ports-exclude", "o", "", "outbound ports never captured")
	fs.StringVarP(&f.excludeIfaces, "istio-exclude-interfaces", "c", "", "interfaces whose traffic is never captured")
	fs.StringVarP(&f.kubeVirtIfaces, "kube-virt-interfaces", "k", "", "virtual interfaces whose inbound traffic is treated as outbound")
	fs.StringVarP(&f.tproxyMark, "istio-inbound-tproxy-mark", "t", "1337", "TPROXY packet mark")
	fs.StringVarP(&f.tproxyTable, "istio-inbound-tproxy-route-table", "r", "133", "TPROXY routing table")
	fs.BoolVarP(&f.dryRun, "dry-run", "n", false, "print the iptables-restore input and change nothing")
	fs.BoolVar(&f.redirectDNS, "redirect-dns", false, "capture DNS to the agent's DNS proxy on :15053 (default $ISTIO_META_DNS_CAPTURE)")
	fs.BoolVar(&f.captureAllDNS, "capture-all-dns", false, "capture DNS to any server, not only --dns-servers")
	fs.BoolVar(&f.dropInvalid, "drop-invalid", false, "drop conntrack-invalid packets (default $INVALID_DROP)")
	fs.BoolVar(&f.dualStack, "dual-stack", false, "detect IPv6 from any address, not only the first (default $ISTIO_DUAL_STACK)")
	fs.BoolVar(&f.reconcile, "reconcile", false, "replace differing rules of ours atomically instead of failing")
	fs.BoolVar(&f.cleanupOnly, "cleanup-only", false, "remove everything shunt or istio-iptables installed, then exit")
	fs.BoolVar(&f.forceApply, "force-apply", false, "apply even when the rules are already in place")
	fs.BoolVar(&f.runValidation, "run-validation", false, "after applying, prove in the namespace that capture works")
	fs.BoolVar(&f.skipRuleApply, "skip-rule-apply", false, "with --run-validation: apply no rules, validate only")
	fs.StringVar(&f.probePort, "iptables-probe-port", "15002", "with --run-validation (or validate): port of the probe")
	fs.DurationVar(&f.probeTimeout, "probe-timeout", 5*time.Second, "with --run-validation (or validate): how long validation may take")
	fs.StringVar(&f.netns, "network-namespace", "", "path of the network namespace to program (default: the current one)")
	fs.StringVar(&f.forceBinary, "force-iptables-binary", "", "iptables variant to use: nft or legacy (default: detected)")
	fs.BoolVar(&f.nativeNFT, "native-nftables", false, "program nftables' inet tables over netlink (Istio's native nftables mode) instead of iptables")
	fs.StringVar(&f.ipv6, "ipv6", "", "program IPv6 too: true or false (default: detected from the namespace's addresses)")
	fs.StringVar(&f.dnsServers, "dns-servers", "", "DNS servers whose traffic is captured (default: /etc/resolv.conf); empty for none")
	fs.StringVar(&f.pod, "pod", "", "program the rules the CNI plugin would for this Pod manifest (file, or - for stdin)")
	fs.BoolVar(&f.explain, "explain", false, "with --dry-run: annotate every rule with the flow it serves")
	fs.StringVar(&f.logLevel, "log_output_level", "", "log level, Istio style (default:info) or debug|info|warn|error")
	fs.BoolVar(&f.logJSON, "log_as_json", false, "log JSON lines")
}

// ExclusiveFlags are the pairs of flags of which a command would honour only one, and why. check
// refuses a pair from any source; each pair a command has is also a cobra mutually exclusive group
// there, for completion and as a backstop.
var ExclusiveFlags = []struct{ A, B, Why string }{
	{"dry-run", "cleanup-only", "a dry run only prints the rules"},
	{"dry-run", "reconcile", "a dry run only prints the rules"},
	{"dry-run", "force-apply", "a dry run only prints the rules"},
	{"dry-run", "run-validation", "a dry run only prints the rules"},
	{"dry-run", "skip-rule-apply", "a dry run only prints the rules"},
	{"dry-run", "force-iptables-binary", "a dry run prints the same rules for either iptables variant"},
	{"cleanup-only", "reconcile", "a cleanup only removes what is installed"},
	{"cleanup-only", "force-apply", "a cleanup only removes what is installed"},
	{"cleanup-only", "run-validation", "a cleanup only removes what is installed"},
	{"cleanup-only", "skip-rule-apply", "a cleanup only removes what is installed"},
	// --native-nftables is accepted with --skip-rule-apply: Istio's injector passes both (with istio-cni).
	{"skip-rule-apply", "reconcile", "no rules are applied"},
	{"skip-rule-apply", "force-apply", "no rules are applied"},
	{"skip-rule-apply", "force-iptables-binary", "no rules are applied"},
	{"reconcile", "force-apply", "--force-apply replaces differing rules too"},
	{"native-nftables", "force-iptables-binary", "native nftables uses no iptables binary"},
}

// markExclusive makes each pair of ExclusiveFlags that cmd has a cobra mutually exclusive group.
func markExclusive(cmd *cobra.Command) {
	for _, p := range ExclusiveFlags {
		if cmd.Flags().Lookup(p.A) != nil && cmd.Flags().Lookup(p.B) != nil {
			cmd.MarkFlagsMutuallyExclusive(p.A, p.B)
		}
	}
}

// prepare fills the flags not given from the environment and refuses every combination in which the
// command would ignore a flag. It has no side effects: commands call it before they change anything
// (cobra's PreRunE).
func (f *istioFlags) prepare(getenv func(string) string) error {
	if err := f.applyEnv(getenv); err != nil {
		return err
	}
	return f.check()
}

// check refuses the combinations in which the command would ignore a flag; it looks at the flags the
// command has. A flag given on the command line that the combination ignores is an error; a value from
// the environment is not (the injector sets variables for every container it starts), except for
// flags that choose what the command does, which conflict from any source.
func (f *istioFlags) check() error {
	var errs []error
	given := f.fs.Changed
	has := func(name string) bool { return f.fs.Lookup(name) != nil }
	refuse := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	for _, p := range ExclusiveFlags {
		if f.set(p.A) && f.set(p.B) {
			refuse("%s and %s exclude each other: %s", f.name(p.A), f.name(p.B), p.Why)
		}
	}
	if given("explain") && !f.dryRun {
		refuse("--explain only with --dry-run: it annotates the rules printed")
	}
	if has("run-validation") {
		for _, name := range probeFlags {
			if given(name) && !f.runValidation {
				refuse("--%s only with --run-validation: it tunes the validation", name)
			}
		}
		if f.skipRuleApply && !f.runValidation {
			refuse("%s only with --run-validation: alone it does nothing", f.name("skip-rule-apply"))
		}
	}
	if f.cleanupOnly {
		if drop := f.givenOf(append([]string{"pod"}, ruleFlags...)); len(drop) > 0 {
			refuse("%s removes what is installed, whatever the rules: drop %s", f.name("cleanup-only"), strings.Join(drop, ", "))
		}
	}
	if f.pod != "" {
		if drop := f.givenOf(ruleFlags); len(drop) > 0 {
			refuse("--pod takes the settings from the Pod; drop %s", strings.Join(drop, ", "))
		}
	} else if given("dual-stack") && given("ipv6") {
		refuse("--dual-stack only changes how IPv6 is detected, and --ipv6 decides it; drop one")
	}
	if f.dryRun && given("network-namespace") && (given("ipv6") || f.pod != "") {
		refuse("--network-namespace with --dry-run only serves to detect IPv6, which --ipv6 or --pod decides; drop it")
	}
	switch iptables.Variant(f.forceBinary) {
	case "", iptables.VariantNFT, iptables.VariantLegacy:
	default:
		errs = append(errs, &redirect.FieldError{Field: f.name("force-iptables-binary"), Value: f.forceBinary, Err: errors.New("want nft or legacy")})
	}
	return errors.Join(errs...)
}

// set reports whether flag name has a value, from the command line or the environment.
func (f *istioFlags) set(name string) bool {
	fl := f.fs.Lookup(name)
	return fl != nil && (fl.Changed || fl.Value.String() != fl.DefValue)
}

// name is how the user gave flag name: "--name", or "--name ($NAME)" when its value came from the
// environment.
func (f *istioFlags) name(flag string) string {
	if fl := f.fs.Lookup(flag); fl != nil && !fl.Changed && fl.Value.String() != fl.DefValue {
		return "--" + flag + " ($" + EnvName(flag) + ")"
	}
	return "--" + flag
}

// givenOf returns, as "--name", the flags of names given on the command line.
func (f *istioFlags) givenOf(names []string) []string {
	var given []string
	for _, name := range names {
		if f.fs.Changed(name) {
			given = append(given, "--"+name)
		}
	}
	return given
}

// EnvName is the environment variable istio-iptables reads for flag name.
func EnvName(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv fills every flag not given on the command line from its environment variable, as Istio does:
// the upper-cased flag name, and for a few flags the variable the sidecar injector sets. Empty variables
// count as unset.
func (f *istioFlags) applyEnv(getenv func(string) string) error {
	var errs []error
	aliases := map[string][]string{
		"redirect-dns": {"REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"},
		"drop-invalid": {"DROP_INVALID", "INVALID_DROP"},
		"dual-stack":   {"DUAL_STACK", "ISTIO_DUAL_STACK", "ISTIO_AGENT_DUAL_STACK"},
	}
	f.fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == "pod" || fl.Name == "explain" || fl.Name == "dns-servers" || fl.Name == "ipv6" {
			return
		}
		names := aliases[fl.Name]
		if names == nil {
			names = []string{EnvName(fl.Name)}
		}
		for _, name := range names {
			v := getenv(name)
			if v == "" {
				continue
			}
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, &redirect.FieldError{Field: name, Value: v, Err: errors.New(cleanPflagErr(err))})
			}
			return
		}
	})
	return errors.Join(errs...)
}

func cleanPflagErr(err error) string {
	msg := err.Error()
	if strings.Contains(msg, "ParseBool") {
		return "not a boolean: want true or false"
	}
	if strings.Contains(msg, "time: ") {
		return "not a duration such as 5s"
	}
	return msg
}

// config turns the flags into a redirect.Config, reporting every bad value at once. readFile reads
// /etc/resolv.conf and /etc/group when they are needed; detectIPv6 says whether the namespace is IPv6
// when --ipv6 is not given.
func (f *istioFlags) config(getenv func(string) string, readFile func(string) ([]byte, error), detectIPv6 func(dualStack bool) (bool, error)) (redirect.Config, error) {
	cfg := redirect.DefaultConfig()
	var errs []error
	field := func(flag, value string, err error) {
		if err != nil {
			name := "--" + flag
			if f.fs.Lookup(flag) != nil && !f.fs.Lookup(flag).Changed {
				name += " ($" + EnvName(flag) + ")"
			}
			errs = append(errs, &redirect.FieldError{Field: name, Value: value, Err: err})
		}
	}
	port := func(flag, s string) uint16 {
		p, err := redirect.ParsePort(strings.TrimSpace(s))
		field(flag, s, err)
		return p
	}
	ports := func(flag, s string) []uint16 {
		ps, err := redirect.ParsePorts(s)
		field(flag, s, err)
		return ps
	}
	var err error
	cfg.ProxyPort = port("envoy-port", f.envoyPort)
	cfg.InboundCapturePort = port("inbound-capture-port", f.inboundPort)
	cfg.InboundTunnelPort = port("inbound-tunnel-port", f.tunnelPort)
	cfg.ProxyUIDs, err = redirect.ParseIDs(f.proxyUID)
	field("proxy-uid", f.proxyUID, err)
	if strings.TrimSpace(f.proxyGID) == "" {
		cfg.ProxyGIDs = cfg.ProxyUIDs
	} else {
		cfg.ProxyGIDs, err = redirect.ParseIDs(f.proxyGID)
		field("proxy-gid", f.proxyGID, err)
	}
	if strings.TrimSpace(f.mode) != "" {
		cfg.Mode, err = redirect.ParseMode(f.mode)
		field("istio-inbound-interception-mode", f.mode, err)
	}
	cfg.InboundPorts, err = redirect.ParsePortList(f.inboundPorts)
	field("istio-inbound-ports", f.inboundPorts, err)
	cfg.InboundPortsExclude = ports("istio-local-exclude-ports", f.inboundExclude)
	cfg.OutboundIPRanges, err = redirect.ParsePrefixList(f.serviceCIDR)
	field("istio-service-cidr", f.serviceCIDR, err)
	cfg.OutboundIPRangesExclude, err = redirect.ParsePrefixes(f.serviceExcludeCIDR)
	field("istio-service-exclude-cidr", f.serviceExcludeCIDR, err)
	cfg.OutboundPorts = ports("istio-outbound-ports", f.outboundPorts)
	cfg.OutboundPortsExclude = ports("istio-local-outbound-ports-exclude", f.outboundExclude)
	cfg.ExcludeInterfaces, err = redirect.ParseInterfaces(f.excludeIfaces)
	field("istio-exclude-interfaces", f.excludeIfaces, err)
	cfg.KubeVirtInterfaces, err = redirect.ParseInterfaces(f.kubeVirtIfaces)
	field("kube-virt-interfaces", f.kubeVirtIfaces, err)
	cfg.TProxyMark, err = redirect.ParseUint32(f.tproxyMark)
	field("istio-inbound-tproxy-mark", f.tproxyMark, err)
	cfg.TProxyRouteTable, err = redirect.ParseUint32(f.tproxyTable)
	field("istio-inbound-tproxy-route-table", f.tproxyTable, err)
	cfg.RedirectDNS = f.redirectDNS
	cfg.CaptureAllDNS = f.captureAllDNS
	cfg.DropInvalid = f.dropInvalid

	include, exclude := getenv("ISTIO_OUTBOUND_OWNER_GROUPS"), getenv("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")
	if include != "" || exclude != "" {
		var groups map[string]uint32
		if needsGroupFile(include) || needsGroupFile(exclude) {
			data, rerr := readFile("/etc/group")
			if rerr != nil {
				errs = append(errs, fmt.Errorf("resolve owner groups: %w", rerr))
			}
			groups = redirect.ParseGroupFile(data)
		}
		cfg.OwnerGroups, err = redirect.ParseGroupFilter(include, exclude, groups)
		if err != nil {
			errs = append(errs, err) // a *FieldError naming the variable
		}
	}
	if v := getenv("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"); v != "" {
		cfg.HostIPv4LoopbackCIDR, err = redirect.ParsePrefix(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, &redirect.FieldError{Field: "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", Value: v, Err: err})
		}
	}
	if f.fs.Changed("dns-servers") {
		cfg.DNSServers, err = redirect.ParseAddrs(f.dnsServers)
		field("dns-servers", f.dnsServers, err)
	} else if cfg.RedirectDNS && !cfg.CaptureAllDNS {
		data, rerr := readFile("/etc/resolv.conf")
		if rerr != nil {
			errs = append(errs, fmt.Errorf("read DNS servers (give --dns-servers to skip): %w", rerr))
		}
		cfg.DNSServers = redirect.ParseResolvConf(data)
	}
	if f.fs.Changed("ipv6") {
		cfg.IPv6, err = redirect.ParseBool(f.ipv6)
		field("ipv6", f.ipv6, err)
	} else if detectIPv6 != nil {
		cfg.IPv6, err = detectIPv6(f.dualStack)
		if err != nil {
			errs = append(errs, fmt.Errorf("detect IPv6 (give --ipv6 to skip): %w", err))
		}
	}
	if len(errs) == 0 {
		if verr := cfg.Validate(); verr != nil {
			errs = append(errs, relabel(verr, f.fs))
		}
	}
	return cfg, errors.Join(errs...)
}

// relabel renames the fields of Validate's errors from flag names to "--flag".
func relabel(err error, fs *pflag.FlagSet) error {
	var out []error
	for _, e := range unjoin(err) {
		var fe *redirect.FieldError
		if errors.As(e, &fe) && fs.Lookup(fe.Field) != nil {
			fe.Field = "--" + fe.Field
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func needsGroupFile(list string) bool {
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item != "" && item != "*" && (item[0] < '0' || item[0] > '9') {
			return true
		}
	}
	return false
}

// DataPathFlags are the istio-iptables settings the eBPF data path reads — outbound capture, the
// proxy's ports and identity, DNS, the families — with --pod, --network-namespace and the log flags:
// `shunt ebpf join` takes them, and nothing else of istio-iptables.
type DataPathFlags struct{ f *istioFlags }

// NewDataPathFlags registers the data path's flags on fs.
func NewDataPathFlags(fs *pflag.FlagSet) DataPathFlags {
	return DataPathFlags{newIstioFlags(fs, dataPathRuleFlags, []string{"pod", "network-namespace"}, logFlags)}
}

// Prepare fills the flags not given from the environment and refuses conflicting ones.
func (d DataPathFlags) Prepare(getenv func(string) string) error { return d.f.prepare(getenv) }

// Config is the capture Config of the flags, or of the Pod given with --pod.
func (d DataPathFlags) Config(env Env) (redirect.Config, error) { return d.f.buildConfig(env) }

// NetNS is --network-namespace.
func (d DataPathFlags) NetNS() string { return d.f.netns }

// Logger is the logger of the log flags.
func (d DataPathFlags) Logger(env Env) *slog.Logger { return env.Logger(d.f.logLevel, d.f.logJSON) }
