// Package doctor reports, changing nothing, what shunt would do in a network namespace and what the
// namespace and the kernel hold: the backend backend.Select picks and the evidence it sees (the legacy
// tables /proc lists, the nft tables a netlink dump returns, the netfilter modules loaded), what of
// shunt's each backend holds and what other programs hold in the same tables, the kernel features the
// capture modes need, and warnings about states that break capture or surprise an operator.
//
// Reading creates no table and loads no module: legacy tables are only listed (/proc), never opened;
// nft tables are dumped; kernel features are read from /proc/net/*_tables_targets, /proc/modules and
// the kernel's configuration (/proc/config.gz or /boot/config-RELEASE). Only the eBPF probe (ebpf.Probe)
// loads throwaway programs, which it unloads.
package doctor

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// ErrNotSupported is returned by Collect where network namespaces and netfilter do not exist.
var ErrNotSupported = errors.New("shunt doctor needs Linux")

// Options say where Collect looks.
type Options struct {
	// NetNS is the path of the network namespace; "" is the current one.
	NetNS string
	// Mode is the inbound interception mode the namespace is to get (REDIRECT or TPROXY); empty when
	// unknown, and then a kernel without TPROXY is warned about whatever the mode.
	Mode redirect.Mode
}

// Report is what Collect found. Its JSON (`shunt doctor --json`) is stable: fields are added, never
// renamed or removed; lists are empty, not null.
type Report struct {
	// NetNS is the network namespace's path; "" is the namespace doctor ran in.
	NetNS string `json:"network_namespace"`
	// Kernel is the running kernel's release (uname -r).
	Kernel string `json:"kernel"`
	// Decision is the backend shunt's iptables commands would use here, for IPv4 and IPv6 alike (one
	// variant a namespace), exactly as backend.Select decides it; --native-nftables uses "nftables".
	Decision Decision `json:"decision"`
	// Families is the evidence of the decision per address family: IPv4, then IPv6.
	Families []Family `json:"families"`
	// OtherNFTTables are the nft tables of the other families (inet, arp, bridge, netdev): shunt's
	// native tables are inet tables.
	OtherNFTTables []Table `json:"other_nft_tables"`
	// Modules is what /proc/modules says of the netfilter modules.
	Modules Modules `json:"modules"`
	// Installed is what of shunt's each backend holds, one entry per backend, family and table.
	Installed []Installed `json:"installed"`
	// TProxyRouting is shunt's TPROXY policy routing in the namespace (ip rules marked proto 83).
	TProxyRouting []string `json:"tproxy_routing"`
	// Features are the kernel features capture uses, in a fixed order (see the Feature* names).
	Features []Feature `json:"features"`
	// Warnings are the states that break capture or surprise an operator, one sentence each.
	Warnings []string `json:"warnings"`
}

// Decision is the backend picked and why.
type Decision struct {
	Backend string `json:"backend"` // "iptables-nft" or "iptables-legacy"; "" when it could not be decided
	Reason  string `json:"reason"`
}

// Family is the evidence of one address family.
type Family struct {
	Family string `json:"family"` // "IPv4" or "IPv6"
	// ProcListed says whether /proc lists this family's legacy tables at all (its ip_tables or
	// ip6_tables is in the kernel and /proc is mounted).
	ProcListed bool `json:"proc_listed"`
	// LegacyTables are the legacy tables /proc/net/ip_tables_names (ip6_tables_names) lists, with
	// what they hold (read with IPT_SO_GET_ENTRIES; chains and rules are -1 when that failed). Their
	// Family is "ip" or "ip6", as for nft tables.
	LegacyTables []Table `json:"legacy_tables"`
	// NFTTables are the nft tables of the family (ip, ip6): iptables-nft's and any other program's.
	NFTTables []Table `json:"nft_tables"`
}

// Table is one table, nft or legacy, and what it holds.
type Table struct {
	Family string `json:"family"` // ip, ip6 (legacy tables too), inet, arp, bridge, netdev
	Name   string `json:"name"`
	Chains int    `json:"chains"`
	Rules  int    `json:"rules"`
	// Shunt says the table holds shunt's chains (ISTIO_* in ip/ip6 nat, mangle, raw; an inet
	// istio-proxy-* table is shunt's whole).
	Shunt bool `json:"shunt"`
	// ShuntRules are the rules of shunt's in the table; OtherRules the rest, other programs'.
	ShuntRules int `json:"shunt_rules"`
	OtherRules int `json:"other_rules"`
}

// Modules is what /proc/modules says.
type Modules struct {
	// Loadable is false when the kernel has no /proc/modules: what it has is built in.
	Loadable bool `json:"loadable"`
	// Loaded are the netfilter modules of interest that are loaded: iptables-legacy's (ip_tables,
	// iptable_nat, ...), nf_tables and its expressions, x_tables' targets.
	Loaded []string `json:"loaded"`
}

// Installed is what of shunt's one backend holds in one family's table.
type Installed struct {
	Backend string   `json:"backend"` // "nftables", "iptables-nft", "iptables-legacy"
	Family  string   `json:"family"`  // "IPv4", "IPv6"; "inet" for native nftables
	Table   string   `json:"table"`   // the plan's table: nat, mangle, raw
	Chains  []string `json:"chains"`  // shunt's chains, and the built-in chains holding shunt's rules
	Rules   int      `json:"rules"`
}

// Feature is one kernel feature and whether capture can use it.
type Feature struct {
	Name   string `json:"name"`   // one of the Feature* names
	State  State  `json:"state"`  // see State
	Detail string `json:"detail"` // the evidence, or what is missing
}

// State is a feature's availability.
type State string

const (
	// Available: in the kernel now (built in, module loaded, or listed by /proc).
	Available State = "available"
	// Loadable: a module the kernel loads on first use, not loaded yet.
	Loadable State = "loadable"
	// Missing: the kernel has it neither built in nor as a module.
	Missing State = "missing"
	// Unknown: nothing doctor may read tells.
	Unknown State = "unknown"
)

// The names of Report.Features, in their order.
const (
	FeatureNFTables       = "nftables"
	FeatureLegacy         = "iptables_legacy"
	FeatureTProxyIptables = "iptables_tproxy"
	FeatureTProxyNFT      = "nftables_tproxy"
	FeatureCTZoneIptables = "iptables_ct_zone"
	FeatureCTZoneNFT      = "nftables_ct_zone"
	FeatureCgroup2        = "cgroup2"
	FeatureBPF            = "ebpf_data_path"
)

// Feature returns the feature named name, and false when the report has none.
func (r *Report) Feature(name string) (Feature, bool) {
	i := slices.IndexFunc(r.Features, func(f Feature) bool { return f.Name == name })
	if i < 0 {
		return Feature{}, false
	}
	return r.Features[i], true
}

// WriteText writes r as sections of one fact a line; warnings last, each prefixed "warning: ".
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	ns := r.NetNS
	if ns == "" {
		ns = "the current one"
	}
	line("network namespace: %s", ns)
	line("kernel: %s", r.Kernel)
	line("")
	line("backend")
	if r.Decision.Backend == "" {
		line("  IPv4, IPv6: undecided (%s)", r.Decision.Reason)
	} else {
		line("  IPv4, IPv6: %s (%s)", r.Decision.Backend, r.Decision.Reason)
	}
	for _, f := range r.Families {
		switch {
		case !f.ProcListed:
			line("  %s legacy tables: not listed by /proc", f.Family)
		case len(f.LegacyTables) == 0:
			line("  %s legacy tables: none", f.Family)
		}
		for _, t := range f.LegacyTables {
			line("  %s legacy table %s", f.Family, t.text())
		}
		if len(f.NFTTables) == 0 {
			line("  %s nft tables: none", f.Family)
		}
		for _, t := range f.NFTTables {
			line("  %s nft table %s", f.Family, t.text())
		}
	}
	for _, t := range r.OtherNFTTables {
		line("  nft table %s", t.text())
	}
	if !r.Modules.Loadable {
		line("  kernel modules: none loadable (no /proc/modules): netfilter is built in")
	} else if len(r.Modules.Loaded) == 0 {
		line("  netfilter modules loaded: none")
	} else {
		line("  netfilter modules loaded: %s", strings.Join(r.Modules.Loaded, ", "))
	}
	line("")
	line("installed by shunt")
	if len(r.Installed) == 0 {
		line("  rules: none")
	}
	for _, in := range r.Installed {
		line("  %s %s %s: %d rules in %s", in.Backend, in.Family, in.Table, in.Rules, strings.Join(in.Chains, ", "))
	}
	if len(r.TProxyRouting) == 0 {
		line("  TPROXY routing: none")
	}
	for _, rt := range r.TProxyRouting {
		line("  TPROXY routing: %s", rt)
	}
	line("")
	line("kernel features")
	for _, f := range r.Features {
		line("  %s: %s (%s)", f.Name, f.State, f.Detail)
	}
	if len(r.Warnings) > 0 {
		line("")
	}
	for _, wn := range r.Warnings {
		line("warning: %s", wn)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (t Table) text() string {
	s := fmt.Sprintf("%s %s: %d chains, %d rules", t.Family, t.Name, t.Chains, t.Rules)
	if t.Rules < 0 {
		s = fmt.Sprintf("%s %s: unread", t.Family, t.Name)
	}
	if t.Shunt {
		s += fmt.Sprintf(" (shunt's: %d rules; other programs': %d)", t.ShuntRules, t.OtherRules)
	}
	return s
}

// facts is what Collect reads, before it is judged: the tests build it by hand.
type facts struct {
	netns, kernel string
	mode          redirect.Mode
	choice        backend.Choice
	choiceErr     error
	// procNet says /proc/thread-self/net exists in the namespace; legacy[i] is the list of family i
	// (IPv4, IPv6), nil when the list does not exist.
	procNet bool
	legacy  [2][]string
	// legacyRead[i] holds the tables of legacy[i] read with IPT_SO_GET_ENTRIES; legacyErr why some
	// could not be.
	legacyRead [2]map[string]legacyTable
	legacyErr  error
	nft        []nftTable
	nftErr     error
	found      []backend.Found
	// foundErr is the error of reading what shunt installed.
	foundErr   error
	routing    []string
	routingErr error
	// modules is /proc/modules' names, nil without /proc/modules.
	modules map[string]bool
	// config is the kernel configuration (CONFIG_X → "y", "m"; absent = not set), nil when unread.
	config map[string]string
	// targets[i] are the x_tables targets of family i (/proc/net/ip_tables_targets).
	targets [2][]string
	cgroup2 string // the cgroup2 mount point; "" none
	mounts  bool   // /proc/mounts was read
	bpfErr  error  // ebpf.Probe's
}

// nftTable is a table as the netlink dumps return it.
type nftTable struct {
	family string // ip, ip6, inet, ...
	name   string
	chains []string
	rules  int
}

// netfilterModules are the modules whose being loaded Report.Modules tells.
var netfilterModules = []string{
	"x_tables", "ip_tables", "ip6_tables",
	"iptable_nat", "iptable_mangle", "iptable_raw", "iptable_filter",
	"ip6table_nat", "ip6table_mangle", "ip6table_raw", "ip6table_filter",
	"xt_TPROXY", "xt_CT", "xt_REDIRECT", "nf_tproxy_ipv4", "nf_tproxy_ipv6",
	"nf_tables", "nft_compat", "nft_tproxy", "nft_ct", "nft_redir", "nft_nat",
}

// build judges f.
func build(f *facts) *Report {
	r := &Report{
		NetNS:          f.netns,
		Kernel:         f.kernel,
		Decision:       Decision{Backend: f.choice.Backend, Reason: f.choice.Reason},
		OtherNFTTables: []Table{},
		Installed:      []Installed{},
		TProxyRouting:  append([]string{}, f.routing...),
		Warnings:       []string{},
	}
	if f.choiceErr != nil {
		r.Decision = Decision{Reason: f.choiceErr.Error()}
		r.warn("the backend could not be decided: %v", f.choiceErr)
	}
	if !f.procNet {
		r.warn("/proc is not mounted (no /proc/thread-self/net): legacy tables cannot be listed, and the decision cannot see them")
	}
	ours := ourRules(f.found)
	for i, fam := range []struct{ name, nft string }{{"IPv4", "ip"}, {"IPv6", "ip6"}} {
		rf := Family{Family: fam.name, ProcListed: f.legacy[i] != nil, LegacyTables: []Table{}, NFTTables: []Table{}}
		for _, name := range f.legacy[i] {
			lt, ok := f.legacyRead[i][name]
			if !ok {
				lt = legacyTable{rules: -1}
			}
			rf.LegacyTables = append(rf.LegacyTables, judgeTable("iptables-legacy", fam.nft, name, lt.chains, lt.rules, ours))
		}
		for _, t := range f.nft {
			if t.family == fam.nft {
				rf.NFTTables = append(rf.NFTTables, t.judge(ours))
			}
		}
		r.Families = append(r.Families, rf)
	}
	for _, t := range f.nft {
		if t.family != "ip" && t.family != "ip6" {
			r.OtherNFTTables = append(r.OtherNFTTables, t.judge(ours))
		}
	}
	if f.legacyErr != nil {
		r.warn("the legacy tables could not all be read: %v", f.legacyErr)
	}
	if f.nftErr != nil {
		r.warn("the nft tables could not be dumped: %v", f.nftErr)
	}
	r.Modules = Modules{Loadable: f.modules != nil, Loaded: []string{}}
	for _, m := range netfilterModules {
		if f.modules[m] {
			r.Modules.Loaded = append(r.Modules.Loaded, m)
		}
	}
	r.installed(f)
	r.features(f)
	r.judge(f)
	return r
}

// warn adds a warning, on one line.
func (r *Report) warn(format string, args ...any) {
	r.Warnings = append(r.Warnings, strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", "; "))
}

// ourRules counts shunt's rules per backend, table family and table name, as the kernel names them:
// iptables-nft's and iptables-legacy's ("ip", "nat"), native nftables' ("inet", "istio-proxy-nat").
func ourRules(found []backend.Found) map[[3]string]int {
	n := map[[3]string]int{}
	for _, fd := range found {
		for _, c := range fd.Chains {
			fam, table := "ip", c.Table
			switch {
			case fd.Backend == "nftables":
				fam, table = "inet", nftables.TableName(c.Table)
			case c.Family == redirect.IPv6:
				fam = "ip6"
			}
			n[[3]string{fd.Backend, fam, table}] += len(c.Rules)
		}
	}
	return n
}

func (t nftTable) judge(ours map[[3]string]int) Table {
	b := "iptables-nft"
	if t.family == "inet" {
		b = "nftables"
	}
	return judgeTable(b, t.family, t.name, t.chains, t.rules, ours)
}

// judgeTable returns a table of backend b holding chains and rules (-1: unread), and which are shunt's:
// ISTIO_* chains in an ip or ip6 table, an inet istio-proxy-* table whole, and every rule shunt's
// backends read back.
func judgeTable(b, family, name string, chains []string, rules int, ours map[[3]string]int) Table {
	out := Table{Family: family, Name: name, Chains: len(chains), Rules: rules}
	if rules < 0 {
		out.Chains, out.OtherRules = -1, -1
	}
	switch family {
	case "inet":
		out.Shunt = strings.HasPrefix(name, nftables.TableName(""))
	case "ip", "ip6":
		out.Shunt = slices.ContainsFunc(chains, redirect.IsOwned)
	}
	n := ours[[3]string{b, family, name}]
	out.Shunt = out.Shunt || n > 0
	if rules >= 0 {
		out.ShuntRules = min(n, rules)
		out.OtherRules = rules - out.ShuntRules
	} else {
		out.ShuntRules = n
	}
	return out
}

// installed fills r.Installed from what the backends read.
func (r *Report) installed(f *facts) {
	for _, fd := range f.found {
		for _, c := range fd.Chains {
			i := slices.IndexFunc(r.Installed, func(in Installed) bool {
				return in.Backend == fd.Backend && in.Family == c.Family.String() && in.Table == c.Table
			})
			if i < 0 {
				r.Installed = append(r.Installed, Installed{Backend: fd.Backend, Family: c.Family.String(), Table: c.Table, Chains: []string{}})
				i = len(r.Installed) - 1
			}
			r.Installed[i].Chains = append(r.Installed[i].Chains, c.Chain)
			r.Installed[i].Rules += len(c.Rules)
		}
	}
	if f.foundErr != nil {
		r.warn("what shunt installed could not all be read: %v", f.foundErr)
	}
	if f.routingErr != nil {
		r.warn("the policy routing could not be read: %v", f.routingErr)
	}
}

// backends are the backends holding shunt's rules, in Installed's order.
func (r *Report) backends() []string {
	var bs []string
	for _, in := range r.Installed {
		if !slices.Contains(bs, in.Backend) {
			bs = append(bs, in.Backend)
		}
	}
	return bs
}

// usesTProxy reports whether a rule of shunt's installed in f is a TPROXY rule.
func usesTProxy(f *facts) bool {
	for _, fd := range f.found {
		for _, c := range fd.Chains {
			if slices.ContainsFunc(c.Rules, func(rule string) bool { return strings.Contains(strings.ToLower(rule), "tproxy") }) {
				return true
			}
		}
	}
	return false
}

// judge adds the warnings about what the namespace holds.
func (r *Report) judge(f *facts) {
	if bs := r.backends(); len(bs) > 1 {
		r.warn("shunt's rules are installed by more than one backend (%s): both apply to every packet; run `shunt cleanup` and install again with one",
			strings.Join(bs, ", "))
	}
	var legacy []string
	for i, fam := range r.Families {
		if len(f.legacy[i]) > 0 {
			legacy = append(legacy, fam.Family+" "+strings.Join(f.legacy[i], ", "))
		}
	}
	var nft []string
	for _, t := range f.nft {
		nft = append(nft, t.family+" "+t.name)
	}
	switch {
	case len(legacy) > 0 && r.Decision.Backend == "iptables-nft":
		r.warn("legacy iptables tables exist (%s) while iptables-nft is chosen: their rules still apply, and iptables-nft does not show them",
			strings.Join(legacy, "; "))
	case len(nft) > 0 && r.Decision.Backend == "iptables-legacy":
		r.warn("nft tables exist (%s) while iptables-legacy is chosen: their rules still apply, and iptables-legacy does not show them",
			strings.Join(nft, ", "))
	case len(legacy) > 0 && r.Decision.Backend == "iptables-legacy":
		r.warn("legacy iptables tables exist (%s), so shunt follows them with iptables-legacy, which newer kernels and distributions drop (RHEL 10, EKS 1.33, Bottlerocket): move the programs writing them to iptables-nft",
			strings.Join(legacy, "; "))
	}
	tproxyRules := usesTProxy(f)
	if len(f.routing) > 0 && !tproxyRules {
		r.warn("shunt's TPROXY routing is in place without TPROXY rules of shunt's: left over from an earlier install; `shunt cleanup` removes it")
	}
	for _, in := range r.backends() {
		name := FeatureTProxyIptables
		if in == "nftables" {
			name = FeatureTProxyNFT
		}
		if ft, _ := r.Feature(name); tproxyRules && ft.State == Missing {
			r.warn("shunt's %s rules use TPROXY, which this kernel lacks (%s)", in, ft.Detail)
		}
	}
	if r.Decision.Backend != "" && f.mode != redirect.ModeRedirect {
		if ft, _ := r.Feature(FeatureTProxyIptables); ft.State == Missing {
			what := "TPROXY inbound interception cannot work"
			if f.mode == redirect.ModeTProxy {
				what = "the TPROXY mode asked for cannot work"
			}
			r.warn("%s with %s on this kernel (%s): use REDIRECT mode", what, r.Decision.Backend, ft.Detail)
		}
	}
	if ft, _ := r.Feature(FeatureNFTables); ft.State == Missing && r.Decision.Backend == "iptables-nft" {
		r.warn("iptables-nft is chosen but the kernel has no nf_tables (%s)", ft.Detail)
	}
}
