package doctor

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"slices"
	"strings"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
)

// parseModules returns the names /proc/modules lists ("name size refcount deps state offset").
func parseModules(data []byte) map[string]bool {
	mods := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) > 0 {
			mods[f[0]] = true
		}
	}
	return mods
}

// parseConfig returns the options a kernel configuration (the text of /proc/config.gz, unzipped)
// sets, CONFIG_ prefix dropped: "NFT_TPROXY" → "m". Options not set are absent.
func parseConfig(data []byte) map[string]string {
	cfg := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || !strings.HasPrefix(name, "CONFIG_") || value == "n" {
			continue
		}
		cfg[strings.TrimPrefix(name, "CONFIG_")] = value
	}
	return cfg
}

// parseList returns the words of a /proc list (ip_tables_names, ip_tables_targets), sorted, once each.
func parseList(data []byte) []string {
	words := strings.Fields(string(data))
	slices.Sort(words)
	return slices.Compact(words)
}

// cgroup2Point returns the mount point of the first cgroup2 file system in /proc/mounts' text.
func cgroup2Point(mounts []byte) string {
	for line := range strings.Lines(string(mounts)) {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return strings.ReplaceAll(f[1], `\040`, " ")
		}
	}
	return ""
}

// need is what a feature takes: configuration options that must all be set, the module providing it
// and, when /proc lists it in x_tables' targets, the target's name.
type need struct {
	name    string
	options []string
	module  string
	target  string
}

var needs = []need{
	{name: FeatureNFTables, options: []string{"NF_TABLES"}, module: "nf_tables"},
	{name: FeatureLegacy, options: []string{"IP_NF_IPTABLES"}, module: "ip_tables"},
	{name: FeatureTProxyIptables, options: []string{"NETFILTER_XT_TARGET_TPROXY"}, module: "xt_TPROXY", target: "TPROXY"},
	{name: FeatureTProxyNFT, options: []string{"NF_TABLES", "NFT_TPROXY"}, module: "nft_tproxy"},
	{name: FeatureCTZoneIptables, options: []string{"NETFILTER_XT_TARGET_CT", "NF_CONNTRACK_ZONES"}, module: "xt_CT", target: "CT"},
	{name: FeatureCTZoneNFT, options: []string{"NF_TABLES", "NFT_CT", "NF_CONNTRACK_ZONES"}, module: "nft_ct"},
}

// state judges n from f: what /proc lists or a loaded module first, then the configuration.
func (n need) state(f *facts) (State, string) {
	for _, o := range n.options {
		if f.config != nil && f.config[o] == "" {
			return Missing, "CONFIG_" + o + " is not set"
		}
	}
	if n.target != "" && slices.Contains(f.targets[0], n.target) {
		return Available, n.target + " in /proc/net/ip_tables_targets"
	}
	if f.modules[n.module] {
		return Available, "module " + n.module + " loaded"
	}
	if n.name == FeatureLegacy && f.legacy[0] != nil {
		return Available, "/proc/net/ip_tables_names exists"
	}
	if f.config == nil {
		return Unknown, "no kernel configuration to read (/proc/config.gz, /boot/config-" + f.kernel + ")"
	}
	var set []string
	loadable := false
	for _, o := range n.options {
		set = append(set, "CONFIG_"+o+"="+f.config[o])
		loadable = loadable || f.config[o] == "m"
	}
	if !loadable {
		return Available, "built in: " + strings.Join(set, ", ")
	}
	if f.modules == nil {
		return Unknown, "configured as a module (" + strings.Join(set, ", ") + ") but the kernel loads none"
	}
	return Loadable, "module " + n.module + " not loaded; the kernel loads it on first use (" + strings.Join(set, ", ") + ")"
}

// features fills r.Features.
func (r *Report) features(f *facts) {
	for _, n := range needs {
		s, detail := n.state(f)
		r.Features = append(r.Features, Feature{Name: n.name, State: s, Detail: detail})
	}
	cg := Feature{Name: FeatureCgroup2, State: Available, Detail: "mounted at " + f.cgroup2}
	switch {
	case !f.mounts:
		cg.State, cg.Detail = Unknown, "/proc/mounts could not be read"
	case f.cgroup2 == "":
		cg.State, cg.Detail = Missing, "no cgroup2 file system mounted"
	}
	r.Features = append(r.Features, cg)
	bpf := Feature{Name: FeatureBPF, State: Available, Detail: "ebpf.Probe found the program and map types, helpers, cgroup v2 and bpffs"}
	var me *shuntebpf.MissingError
	switch {
	case f.bpfErr == nil:
	case errors.As(f.bpfErr, &me):
		bpf.State, bpf.Detail = Missing, strings.Join(me.Missing, ", ")
	case errors.Is(f.bpfErr, shuntebpf.ErrNotSupported):
		bpf.State, bpf.Detail = Missing, f.bpfErr.Error()
	case errors.Is(f.bpfErr, os.ErrPermission):
		bpf.State, bpf.Detail = Unknown, "probing loads programs, which needs root or CAP_BPF"
	default:
		first, _, _ := strings.Cut(f.bpfErr.Error(), "\n")
		bpf.State, bpf.Detail = Unknown, "probe: "+first
	}
	r.Features = append(r.Features, bpf)
}
