package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/internal/sorted"
	"github.com/shuntmesh/shunt/redirect"
)

// tablesPresent reports, per family, whether the namespace holds tables of variant v. It costs no
// command: legacy tables are listed in /proc, nft tables are asked for over netlink.
func tablesPresent(v Variant) (v4, v6 bool) {
	t := lookTables(v)
	return t.present[0], t.present[1]
}

// seenTables is what one look at a namespace found of a variant's tables, per family (IPv4, IPv6):
// whether it holds any and, when the look could tell, their names, so that the family's read need
// not ask again.
type seenTables struct {
	present [2]bool
	names   [2][]string
}

// of returns fam's part.
func (t *seenTables) of(fam redirect.Family) (present bool, names []string) {
	i := 0
	if fam == redirect.IPv6 {
		i = 1
	}
	return t.present[i], t.names[i]
}

// lookTables is tablesPresent with the names of the tables, where it could tell them. Without /proc
// (a chroot, a container whose runtime mounted none) it cannot tell the legacy tables, and says there
// are some: the read that follows then fails (readLegacyNames) rather than take tables it cannot see
// for absent.
func lookTables(v Variant) seenTables {
	var t seenTables
	if v == VariantLegacy {
		for i, list := range []string{"ip_tables_names", "ip6_tables_names"} {
			data, err := readLegacyNames(list)
			t.names[i] = strings.Fields(string(data))
			t.present[i] = err != nil || len(t.names[i]) > 0
			if err != nil {
				t.names[i] = nil
			}
		}
		return t
	}
	t, _ = nftTables()
	return t
}

// nftTables asks, with one netlink dump, which nft tables of the ip and ip6 families exist, and
// whether the kernel has nf_tables at all. When it cannot tell, it says the tables exist (their names
// unknown): the rules are then read rather than assumed absent. A kernel without nf_tables (no
// nfnetlink: EPROTONOSUPPORT; no nf_tables subsystem: EINVAL) holds none.
func nftTables() (t seenTables, kernel bool) {
	unknown := seenTables{present: [2]bool{true, true}}
	sock, err := nfnl.Open()
	if errors.Is(err, unix.EPROTONOSUPPORT) {
		return seenTables{}, false
	}
	if err != nil {
		return unknown, true
	}
	defer sock.Close()
	msgs, err := sock.DumpTables(unix.AF_UNSPEC)
	if errors.Is(err, unix.EINVAL) {
		return seenTables{}, false
	}
	if err != nil {
		return unknown, true
	}
	named := [2]bool{true, true}
	for _, m := range msgs {
		if len(m.Data) == 0 {
			continue
		}
		i := 0
		switch m.Data[0] {
		case unix.NFPROTO_IPV4:
		case unix.NFPROTO_IPV6:
			i = 1
		default:
			continue
		}
		t.present[i] = true
		name := ""
		if ad, err := nftAttrs(m); err == nil {
			for ad.Next() {
				if ad.Type() == unix.NFTA_TABLE_NAME {
					name = ad.String()
				}
			}
			if ad.Err() != nil {
				name = ""
			}
		}
		if name == "" {
			named[i] = false // the family's read asks for the tables itself
		}
		t.names[i] = append(t.names[i], name)
	}
	for i := range named {
		if !named[i] {
			t.names[i] = nil
		}
	}
	return t, true
}

// errNoProc is returned when the legacy tables cannot be listed because /proc is not mounted: opening
// a table to find out would create it.
var errNoProc = errors.New("/proc is not mounted: the legacy iptables tables of this namespace cannot be listed")

// readLegacyNames reads /proc's list of legacy tables name (ip_tables_names, ip6_tables_names); a
// list that does not exist, the module not being loaded, is empty.
func readLegacyNames(name string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join("/proc/thread-self/net", name))
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat("/proc/thread-self/net"); serr != nil {
			return nil, errNoProc
		}
		return nil, nil
	}
	return data, err
}

// ChooseVariant picks the iptables variant for the namespace at netnsPath (the current one when
// empty), from what it holds, and says why: the variant already holding tables, else nft when the kernel
// has nf_tables, else legacy: no tool is looked for. Reading creates no table.
func ChooseVariant(netnsPath string) (v Variant, why string, err error) {
	err = netns.Do(netnsPath, func() error {
		v, why = chooseVariant()
		return nil
	})
	return v, why, err
}

func chooseVariant() (Variant, string) {
	// Legacy tables that cannot be listed (no /proc) do not decide the variant: nft is the default.
	known := func(name string) bool {
		data, err := readLegacyNames(name)
		return err == nil && strings.TrimSpace(string(data)) != ""
	}
	l4, l6 := known("ip_tables_names"), known("ip6_tables_names")
	n, kernelNFT := nftTables()
	legacy, nft := l4 || l6, n.present[0] || n.present[1]
	switch {
	case nft && !legacy:
		return VariantNFT, "the namespace already holds nft tables"
	case legacy && !nft:
		return VariantLegacy, "the namespace already holds legacy tables"
	case legacy && nft:
		return VariantNFT, "the namespace holds both nft and legacy tables; nft preferred"
	}
	if !kernelNFT {
		return VariantLegacy, "no tables yet and this kernel has no nf_tables"
	}
	return VariantNFT, "no tables yet; nft is the default"
}

// variant is opts' variant, or the one chooseVariant picks (logged) when opts leaves it open.
func (o *Options) variant() Variant {
	if o.Variant != "" {
		return o.Variant
	}
	v, why := chooseVariant()
	o.logger().Info("iptables variant chosen", "variant", v, "reason", why)
	return v
}

// lockEnv returns the xtables lock of legacy writes into o.NetNS, as the environment of legacy iptables
// commands: a lock file of this namespace's own when programming another namespace from the host's
// filesystem, so that pods do not queue on the host lock behind kube-proxy's restores of the host's
// tables, which the pod's do not share. Without tools this process takes it itself; the tools
// (Options.UseTools) honour XTABLES_LOCKFILE from iptables 1.8.6 on, and older ones keep the host lock.
// done removes the file. (Writers that take another lock are caught by the kernel as far as it can:
// IPT_SO_SET_REPLACE refuses a replacement whose table changed its number of entries, and the splice
// starts again.)
func (o *Options) lockEnv(v Variant) (env []string, done func()) {
	netnsPath := o.NetNS
	if v != VariantLegacy || netnsPath == "" || o.UseTools && !lockFileSupported() {
		return nil, func() {}
	}
	var st unix.Stat_t
	if err := unix.Stat(netnsPath, &st); err != nil {
		return nil, func() {}
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("shunt-xtables-%d-%d.lock", st.Dev, st.Ino))
	return []string{"XTABLES_LOCKFILE=" + path}, func() { os.Remove(path) }
}

// lockFileSupported probes, once, whether the legacy tools are iptables >= 1.8.6.
var lockFileSupported = sync.OnceValue(func() bool {
	out, err := exec.Command("iptables-legacy", "--version").Output()
	if err != nil {
		return false
	}
	v := parseVersion(string(out))
	return v[0] > 1 || v[0] == 1 && (v[1] > 8 || v[1] == 8 && v[2] >= 6)
})

// parseVersion reads "iptables v1.8.9 (legacy)" as {1, 8, 9}; anything else is {0, 0, 0}. (Not
// coreos/go-iptables' GetIptablesVersion: that package compiles a regexp at initialisation, which
// every start of the init container would pay for.)
func parseVersion(out string) [3]int {
	var v [3]int
	_, rest, ok := strings.Cut(out, " v")
	if !ok {
		return v
	}
	rest, _, _ = strings.Cut(rest, " ")
	parts := strings.SplitN(strings.TrimSpace(rest), ".", 3)
	if len(parts) != 3 {
		return v
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || p[0] < '0' || p[0] > '9' {
			return [3]int{}
		}
		v[i] = n
	}
	return v
}

// Apply programs plan: iptables rules per family from this process (one nft transaction per family,
// one legacy table replacement per table; with opts.UseTools, shared tables through iptables-restore),
// then the TPROXY routes and IPv6 loopback address. A second Apply of the same plan changes nothing.
// When rules of ours differ from the plan, Apply fails naming the differences, unless opts.Reconcile,
// which replaces them in one transaction per table. When a step fails, families installed by this call
// are removed again.
func Apply(ctx context.Context, plan *redirect.Plan, opts Options) error {
	return netns.Do(opts.NetNS, func() error { return apply(ctx, plan, &opts) })
}

func apply(ctx context.Context, plan *redirect.Plan, opts *Options) error {
	if plan.Family(redirect.Inet) != nil {
		return errors.New("the plan is for nftables (--native-nftables): apply it with the nftables backend")
	}
	log := opts.logger()
	r := opts.runner()
	v := opts.variant()
	env, unlock := opts.lockEnv(v)
	defer unlock()
	seen := lookTables(v)
	program := opts.programmer(v, env)
	var fresh []redirect.Family
	rollback := func(cause error) error {
		for _, fam := range fresh {
			// Read back rather than render from the plan: rules are then deleted by number.
			have, err := readState(ctx, opts, v, fam, true)
			if err == nil {
				err = removeOurs(ctx, opts, v, fam, have, env)
			}
			if err != nil {
				return errors.Join(cause, fmt.Errorf("roll back %s rules: %w", fam, err))
			}
		}
		return cause
	}
	// Rules of ours in a family the plan leaves out (IPv6 after --ipv6=false) differ from it too: drift,
	// checked before anything changes; with Reconcile they are removed once the plan is in place.
	var extra []Installed
	for _, f := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		present, names := seen.of(f)
		if plan.Family(f) != nil || !present {
			continue
		}
		k, err := readFamily(ctx, opts, v, f, true, names...)
		if err != nil {
			return err
		}
		have := OwnedState(k.tables)
		if have.Empty() {
			continue
		}
		if !opts.Reconcile && !opts.Force {
			return fmt.Errorf("%s: %w (run with --reconcile to remove them):\n  %s",
				f, ErrDrift, strings.Join(Diff(have, State{}), "\n  "))
		}
		extra = append(extra, Installed{Variant: v, Family: f, State: have})
	}
	for i := range plan.Families {
		fp := &plan.Families[i]
		present, names := seen.of(fp.Family)
		k, err := readFamily(ctx, opts, v, fp.Family, present, names...)
		if err != nil {
			return rollback(err)
		}
		tables := k.tables
		have := OwnedState(tables)
		var diff []string
		if !have.Empty() {
			diff = Diff(have, PlanState(fp))
		}
		switch {
		case !have.Empty() && len(diff) == 0 && !opts.Force:
			log.Info("rules already in place", "family", fp.Family.String())
			continue
		case len(diff) > 0 && !opts.Reconcile && !opts.Force:
			return rollback(fmt.Errorf("%s: %w (run with --reconcile to replace them):\n  %s",
				fp.Family, ErrDrift, strings.Join(diff, "\n  ")))
		}
		// When the tables involved hold nothing but ours (always so in a fresh pod namespace), build them
		// from this process: no tool to start, and libxtables' owner parser, which looks up a user or
		// group name for every --uid-owner/--gid-owner even when given a number, never runs. Tables
		// shared with other programs' rules are spliced, from this process too unless opts.UseTools.
		involved := involvedTables(have, fp)
		if onlyOurs(tables, involved) {
			err := program(fp, existing(tables, involved))
			if err == nil {
				if have.Empty() {
					fresh = append(fresh, fp.Family)
				}
				log.Info("rules programmed", "family", fp.Family.String(), "variant", string(v), "via", "kernel API", "replaced", len(diff))
				continue
			}
			log.Warn("programming the tables whole failed, splicing", "family", fp.Family.String(), "error", err.Error())
			// Legacy replaces table by table: a failure may leave earlier tables programmed.
			if k, err = readFamily(ctx, opts, v, fp.Family, true); err != nil {
				return rollback(err)
			}
			have = OwnedState(k.tables)
			involved = involvedTables(have, fp)
		}
		if !opts.UseTools {
			if err := opts.splicer()(v, fp.Family, fp, involved, env, k); err != nil {
				return rollback(fmt.Errorf("program %s rules: %w", fp.Family, err))
			}
			if have.Empty() {
				fresh = append(fresh, fp.Family)
			}
			log.Info("rules programmed", "family", fp.Family.String(), "variant", string(v), "via", "kernel API splice", "replaced", len(diff))
			continue
		}
		input := Render(fp, RenderOptions{})
		if !have.Empty() {
			log.Info("replacing rules", "family", fp.Family.String(), "differences", len(diff))
			input = RenderReplace(have, fp, RenderOptions{})
		}
		log.Debug("iptables-restore input", "family", fp.Family.String(), "input", string(input))
		if err := restore(ctx, r, v, fp.Family, input, env); err != nil {
			return rollback(err)
		}
		if have.Empty() {
			fresh = append(fresh, fp.Family)
		}
		log.Info("rules programmed", "family", fp.Family.String())
	}
	for _, in := range extra {
		if err := removeOurs(ctx, opts, v, in.Family, in.State, env); err != nil {
			return rollback(fmt.Errorf("remove %s rules this configuration leaves out: %w", in.Family, err))
		}
		log.Info("rules removed", "family", in.Family.String(), "reason", "not part of this configuration")
	}
	if err := podroute.Sync(plan); err != nil {
		return rollback(err)
	}
	return nil
}

// programmer returns how o programs a family plan from this process in variant v: programNFT, or
// programLegacy holding the xtables lock of env.
func (o *Options) programmer(v Variant, env []string) func(fp *redirect.FamilyPlan, drop []string) error {
	if o.program != nil {
		return o.program
	}
	if v == VariantLegacy {
		return func(fp *redirect.FamilyPlan, drop []string) error {
			return withXtablesLock(env, func() error { return programLegacy(fp, drop) })
		}
	}
	return programNFT
}

// removeOurs removes have, our part of family fam's rules in variant v. When the tables holding it
// hold nothing but ours, it rebuilds them from this process with their built-in chains left empty, as
// the restore tool would leave them; otherwise (another program's rules share a table) it splices ours
// out, from this process too unless o.UseTools (then with the restore tool).
func removeOurs(ctx context.Context, o *Options, v Variant, fam redirect.Family, have State, env []string) error {
	k, err := readFamily(ctx, o, v, fam, true)
	if err != nil {
		return err
	}
	if tables, names := k.tables, existing(k.tables, sorted.Keys(have)); onlyOurs(tables, names) {
		fp := &redirect.FamilyPlan{Family: fam}
		for _, name := range names {
			t := redirect.Table{Name: name}
			for _, c := range tables[name].Chains {
				if redirect.IsBuiltin(c) && len(tables[name].Rules[c]) > 0 {
					t.Chains = append(t.Chains, redirect.Chain{Name: c, Builtin: true})
				}
			}
			fp.Tables = append(fp.Tables, t)
		}
		err := o.programmer(v, env)(fp, names)
		if err == nil {
			return nil
		}
		o.logger().Warn("emptying the tables whole failed, splicing", "family", fam.String(), "error", err.Error())
		if k, err = readFamily(ctx, o, v, fam, true); err != nil {
			return err
		}
		have = OwnedState(k.tables)
	}
	if !o.UseTools {
		if err := o.splicer()(v, fam, nil, sorted.Keys(have), env, k); err != nil {
			return fmt.Errorf("remove %s rules: %w", fam, err)
		}
		return nil
	}
	return restore(ctx, o.runner(), v, fam, RenderReplace(have, nil, RenderOptions{}), env)
}

// involvedTables names the tables a replacement of have by fp changes.
func involvedTables(have State, fp *redirect.FamilyPlan) []string {
	var names []string
	for _, t := range fp.Tables {
		names = append(names, t.Name)
	}
	for _, name := range sorted.Keys(have) {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// existing returns the names of those that tables holds.
func existing(tables map[string]*SavedTable, names []string) []string {
	var out []string
	for _, n := range names {
		if tables[n] != nil {
			out = append(out, n)
		}
	}
	return out
}

// Check compares the rules of ours in the namespace with plan, family by family, and returns an error
// wrapping ErrDrift that names every difference (a missing chain, a rule too many or too few). It
// changes nothing.
func Check(ctx context.Context, plan *redirect.Plan, opts Options) error {
	return netns.Do(opts.NetNS, func() error {
		v := opts.variant()
		seen := lookTables(v)
		var diff []string
		for _, f := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
			present, names := seen.of(f)
			fp := plan.Family(f)
			if fp == nil && !present {
				continue
			}
			k, err := readFamily(ctx, &opts, v, f, present, names...)
			if err != nil {
				return err
			}
			have := OwnedState(k.tables)
			want := State{} // a family the plan leaves out holds no rules of ours
			if fp != nil {
				want = PlanState(fp)
			}
			for _, d := range Diff(have, want) {
				diff = append(diff, f.String()+" "+d)
			}
		}
		if len(diff) > 0 {
			return fmt.Errorf("%w (%s):\n  %s", ErrDrift, v, strings.Join(diff, "\n  "))
		}
		return nil
	})
}

// Cleanup removes, from what the namespace holds rather than from any configuration, every chain of
// ours and every rule of ours in built-in chains (in every variant present unless opts.Variant is set),
// then the TPROXY policy routing and the IPv6 passthrough address shunt added. Foreign chains, rules,
// routes and addresses stay.
func Cleanup(ctx context.Context, opts Options) error {
	_, err := Remove(ctx, opts)
	return errors.Join(err, netns.Do(opts.NetNS, func() error {
		_, err := podroute.Cleanup()
		return err
	}))
}

// Find returns our rules in every variant and family the namespace holds tables of (only
// opts.Variant when set), changing nothing. Tables that do not exist are not read, so that reading
// creates none.
func Find(ctx context.Context, opts Options) ([]Installed, error) {
	var found []Installed
	err := netns.Do(opts.NetNS, func() error {
		var err error
		found, err = find(ctx, &opts)
		return err
	})
	return found, err
}

func find(ctx context.Context, opts *Options) ([]Installed, error) {
	variants := []Variant{VariantNFT, VariantLegacy}
	if opts.Variant != "" {
		variants = []Variant{opts.Variant}
	}
	var found []Installed
	var errs []error
	for _, v := range variants {
		seen := lookTables(v)
		for _, f := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
			present, names := seen.of(f)
			if !present {
				continue
			}
			k, err := readFamily(ctx, opts, v, f, true, names...)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if have := OwnedState(k.tables); !have.Empty() {
				found = append(found, Installed{Variant: v, Family: f, State: have})
			}
		}
	}
	return found, errors.Join(errs...)
}

// Remove deletes every chain of ours and every rule of ours in built-in chains, in every variant and
// family present (only opts.Variant when set), in one transaction per family (nft) or table (legacy),
// and returns what it removed. Policy routing and addresses stay: see Cleanup.
func Remove(ctx context.Context, opts Options) ([]Installed, error) {
	var removed []Installed
	err := netns.Do(opts.NetNS, func() error {
		log := opts.logger()
		found, err := find(ctx, &opts)
		errs := []error{err}
		for _, in := range found {
			env, unlock := opts.lockEnv(in.Variant)
			err := removeOurs(ctx, &opts, in.Variant, in.Family, in.State, env)
			unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("clean up %s %s: %w", in.Variant, in.Family, err))
				continue
			}
			removed = append(removed, in)
			log.Info("rules removed", "variant", in.Variant, "family", in.Family.String())
		}
		return errors.Join(errs...)
	})
	return removed, err
}

// withXtablesLock runs fn holding the lock legacy iptables tools take (XTABLES_LOCKFILE from env or
// the process environment, else /run/xtables.lock), waiting for it up to 30 s like --wait=30.
func withXtablesLock(env []string, fn func() error) error {
	path := "/run/xtables.lock"
	if p := os.Getenv("XTABLES_LOCKFILE"); p != "" {
		path = p
	}
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "XTABLES_LOCKFILE="); ok {
			path = p
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		// The init image holds one file and no /run: nothing else in this file system can hold the
		// lock either. Make its directory, as the legacy tools would need it.
		if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			f, err = os.OpenFile(path, os.O_CREATE|os.O_RDONLY|unix.O_CLOEXEC, 0o600)
		}
	}
	if err != nil {
		return fmt.Errorf("open xtables lock %s: %w", path, err)
	}
	defer f.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fn()
}

// KernelHasNFT reports whether this kernel has nf_tables: what decides the variant of a namespace that
// holds no tables yet (a new pod's).
func KernelHasNFT() bool {
	_, kernel := nftTables()
	return kernel
}
