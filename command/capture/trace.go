package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/graph"
	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/trace"
)

// traceCmd is `shunt trace`: the settings of `shunt graph`, the connection to follow and what to show.
type traceCmd struct {
	env     Env
	f       *istioFlags
	conn    connSpec
	ebpf    bool
	jsonOut bool
	graph   string
	watch   time.Duration
	pinDir  string
	flags   *pflag.FlagSet // the command's flags

	// detectIPv6 says whether the namespace at path has IPv6 when --ipv6 is not given; tests replace it.
	detectIPv6 func(path string, dualStack bool) (bool, error)
	// installed returns the backends holding rules of shunt's in a namespace; tests replace it.
	installed func(ctx context.Context, netns string) ([]backend.Found, error)
	// podAddrs returns the pod's own addresses in the namespace at path, when --pod-ip is not given.
	podAddrs func(path string) ([]netip.Addr, error)
	// watching, when set, is called with --watch once the first counters are read: tests make their
	// connection then.
	watching func()
}

// newTraceCmd returns `shunt trace`.
func newTraceCmd(env Env) *cobra.Command {
	return traceCommand(&traceCmd{env: env, detectIPv6: podroute.DetectIPv6, installed: backend.Installed, podAddrs: netns.GlobalAddrs})
}

// traceCommand returns the command of t, whose env and functions are set, and registers its flags.
func traceCommand(t *traceCmd) *cobra.Command {
	env := t.env
	long := "Follow the first packet of a connection through the rules `shunt iptables --dry-run` would print\n" +
		"for the same settings (flags, environment" + podOr(env) + ") as the kernel walks them, and print\n" +
		"every rule it meets — table/chain#index, matched or not, the rule, the flow it serves (F1–F9,\n" +
		"docs/flows.md) and why — then the verdict: captured by the proxy's listener (15001, 15006, 15053),\n" +
		"TPROXYed, delivered or passed through untouched, or dropped. The connection is --dst ADDR:PORT,\n" +
		"--direction out (a process of the pod connects; --uid, --gid own it, --iface is the interface a\n" +
		"remote destination is routed by) or in (it arrives from --src ADDR:PORT on --iface), --proto.\n" +
		"--pod-ip names the pod's own addresses (with --network-namespace: read there when not given).\n" +
		"With --network-namespace the rules are those the namespace holds (see shunt graph), and each\n" +
		"shows the packets and bytes the kernel counted for it; --watch DURATION reads the counters, waits,\n" +
		"reads them again and prints the rules whose counters moved meanwhile — make the connection then —\n" +
		"and whether they are the traced path's. --graph FILE draws the rules with the path emphasised\n" +
		"(SVG, or DOT for .dot/.gv, Mermaid for .mmd/.mermaid). --json prints the same for tools."
	if env.ConnectHook != nil {
		long += "\nFor a pod on the eBPF data path (--ebpf, or shunt.io/mode: ebpf on the --pod) it prints too the\n" +
			"decision the connect hook takes for an outbound TCP connection, from the values the agent writes\n" +
			"into its maps."
	}
	cmd := &cobra.Command{
		Use:   "trace --dst ADDR:PORT",
		Short: "Follow a connection through a pod's capture rules, rule by rule, to its verdict",
		Long:  long,
		Args:  cobra.NoArgs,
	}
	// As for shunt graph, only the settings flags are read from the environment.
	settings := pflag.NewFlagSet("trace settings", pflag.ContinueOnError)
	t.f = newIstioFlags(settings, ruleFlags, env.podFlag(), []string{"network-namespace"}, backendFlags)
	cmd.Flags().AddFlagSet(settings)
	fl := cmd.Flags()
	t.flags = fl
	fl.StringVar(&t.conn.Direction, "direction", "out", "out: a process of the pod connects; in: the connection arrives from the network")
	fl.StringVar(&t.conn.Proto, "proto", "tcp", "protocol: tcp or udp")
	fl.StringVar(&t.conn.Src, "src", "", "source ADDR or ADDR:PORT; required with --direction in (default for out: what routing picks)")
	fl.StringVar(&t.conn.Dst, "dst", "", "destination ADDR:PORT ([ADDR]:PORT for IPv6)")
	fl.StringVar(&t.conn.UID, "uid", "", "uid of the connecting process, --direction out (default 0)")
	fl.StringVar(&t.conn.GID, "gid", "", "gid of the connecting process, --direction out (default 0)")
	fl.StringVar(&t.conn.Mark, "mark", "", "SO_MARK of the connecting socket, --direction out: the proxy's transparent upstream in TPROXY mode carries the TPROXY mark (default none)")
	fl.StringVar(&t.conn.Iface, "iface", "", "interface the connection arrives on (in) or a remote destination is routed by (out) (default eth0)")
	fl.StringSliceVar(&t.conn.PodIPs, "pod-ip", nil, "the pod's own addresses (default: with --network-namespace, its global addresses)")
	fl.BoolVar(&t.jsonOut, "json", false, "print JSON for tools")
	fl.StringVar(&t.graph, "graph", "", "also draw the rules with the traced path emphasised into FILE: SVG, or .dot, .mmd by extension")
	fl.DurationVar(&t.watch, "watch", 0, "with --network-namespace: read the counters, wait this long, and show which rules' counters moved")
	if env.ConnectHook != nil {
		fl.BoolVar(&t.ebpf, "ebpf", false, "the pod is on the eBPF data path (shunt.io/mode: ebpf): show the connect hook's decision too")
	}
	if env.EBPFState != nil {
		fl.StringVar(&t.pinDir, "ebpf-pin-dir", defaultEBPFPinDir, "with an eBPF pod and --network-namespace: the eBPF agent's pins, whose state and counters are shown")
	}
	if err := cmd.MarkFlagRequired("dst"); err != nil {
		panic(err)
	}
	markExclusive(cmd)
	cmd.PreRunE = func(*cobra.Command, []string) error { return t.prepare() }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return t.run(cmd.Context()) }
	return cmd
}

// prepare fills the settings from the environment and refuses bad values and flags the combination
// would ignore. It changes nothing.
func (t *traceCmd) prepare() error {
	errs := []error{t.f.prepare(t.env.Getenv), checkLiveFlags(t.f)}
	if _, err := parseConn(t.conn); err != nil {
		errs = append(errs, err)
	}
	if t.graph != "" {
		if _, err := graphFormat(t.graph); err != nil {
			errs = append(errs, err)
		}
	}
	switch given := t.flags.Changed; {
	case given("watch") && t.f.netns == "":
		errs = append(errs, errors.New("--watch only with --network-namespace: it watches the counters of the rules held there"))
	case given("watch") && t.watch <= 0:
		errs = append(errs, fmt.Errorf("--watch %s: want a duration above 0, such as 5s", t.watch))
	}
	if t.flags.Changed("ebpf-pin-dir") && t.f.netns == "" {
		errs = append(errs, errors.New("--ebpf-pin-dir only with --network-namespace: the eBPF agent's state is read for a live pod"))
	}
	if t.ebpf && t.f.pod != "" {
		errs = append(errs, errors.New("--ebpf with --pod: the Pod's shunt.io/mode annotation says whether it is on the eBPF data path; drop --ebpf"))
	}
	return errors.Join(errs...)
}

// graphFormat is the drawing format of --graph's file name.
func graphFormat(file string) (graph.Format, error) {
	switch strings.ToLower(filepath.Ext(file)) {
	case ".svg":
		return graph.FormatSVG, nil
	case ".dot", ".gv":
		return graph.FormatDOT, nil
	case ".mmd", ".mermaid":
		return graph.FormatMermaid, nil
	}
	return "", fmt.Errorf("--graph %q: want a file name ending in .svg, .dot, .gv, .mmd or .mermaid", file)
}

// traceReport is what `shunt trace` prints, and as JSON for tools.
type traceReport struct {
	Connection string        `json:"connection"`
	Settings   string        `json:"settings"`
	Backend    string        `json:"backend,omitempty"`
	NetNS      string        `json:"network_namespace,omitempty"`
	Steps      []traceStep   `json:"steps"`
	Path       []string      `json:"path"`
	Verdict    traceVerdict  `json:"verdict"`
	EBPF       *traceEBPF    `json:"ebpf,omitempty"`
	Watch      *traceWatched `json:"watch,omitempty"`
}

type traceStep struct {
	Hook     string        `json:"hook,omitempty"`
	Ref      string        `json:"ref,omitempty"`
	Rule     string        `json:"rule,omitempty"`
	Matched  bool          `json:"matched"`
	Flow     string        `json:"flow,omitempty"`
	Why      string        `json:"why,omitempty"`
	Note     string        `json:"note,omitempty"`
	Counters *traceCounter `json:"counters,omitempty"`
}

type traceCounter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

type traceVerdict struct {
	Kind     string `json:"kind"`
	Port     uint16 `json:"port,omitempty"`
	Listener string `json:"listener,omitempty"`
	OrigDst  string `json:"orig_dst,omitempty"`
	Dst      string `json:"dst,omitempty"`
	Iface    string `json:"iface,omitempty"`
	Mark     uint32 `json:"mark,omitempty"`
	ConnMark uint32 `json:"conn_mark,omitempty"`
	Zone     uint16 `json:"zone,omitempty"`
	Text     string `json:"text"`
	Reason   string `json:"reason"`
}

type traceEBPF struct {
	// Verdict is "pass", "proxy", "dns", or "" when the hook is not involved (Reason says why).
	Verdict string `json:"verdict,omitempty"`
	Port    uint16 `json:"port,omitempty"`
	Reason  string `json:"reason"`
	// Then is the verdict of the rules for the connection as the hook rewrote it.
	Then string `json:"then,omitempty"`
	// Live is the node's eBPF data path for the pod's namespace (--network-namespace), and with
	// --watch the counters that moved meanwhile.
	Live *traceEBPFLive `json:"live,omitempty"`
}

type traceEBPFLive struct {
	EBPFLive
	Moved map[string]uint64 `json:"moved,omitempty"`
}

type traceWatched struct {
	Duration string       `json:"duration"`
	Moved    []traceMoved `json:"moved"`
	Agrees   bool         `json:"agrees"`
	// NotMoved are rules of the path whose counters did not move; OffPath rules whose counters moved
	// but are not on the path.
	NotMoved []string `json:"not_moved,omitempty"`
	OffPath  []string `json:"off_path,omitempty"`
}

type traceMoved struct {
	Ref     string `json:"ref"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	OnPath  bool   `json:"on_path"`
}

func (t *traceCmd) run(ctx context.Context) error {
	conn, err := parseConn(t.conn)
	if err != nil {
		return err
	}
	cfg, onEBPF, err := t.config()
	if err != nil {
		return err
	}
	rep := traceReport{Connection: connText(conn), Settings: strings.TrimPrefix(title(&cfg), "shunt capture rules: ")}
	var plan redirect.Plan
	var b backend.Backend
	var counters map[redirect.RuleRef]redirect.Counters
	if t.f.netns == "" {
		if plan, err = redirect.Build(cfg); err != nil {
			return err
		}
	} else {
		if b, err = liveBackend(ctx, t.f, t.installed); err != nil {
			return err
		}
		if plan, err = b.Plan(cfg); err != nil {
			return err
		}
		if counters, err = liveCounters(ctx, t.env, b, &plan, t.f.netns); err != nil {
			return err
		}
		rep.Backend, rep.NetNS = b.Name(), t.f.netns
		if len(conn.PodAddrs) == 0 {
			if conn.PodAddrs, err = t.podAddrs(t.f.netns); err != nil {
				return fmt.Errorf("--network-namespace %s: read the pod's addresses (give --pod-ip to skip): %w", t.f.netns, err)
			}
		}
	}
	res, err := trace.Walk(&plan, conn)
	switch {
	case errors.Is(err, trace.ErrFamilyNotCovered):
		return fmt.Errorf("--dst %s: the settings program no IPv6 rules (give --ipv6=true, or the namespace has no IPv6), so nothing captures it: %w",
			conn.Dst, trace.ErrFamilyNotCovered)
	case err != nil:
		return fmt.Errorf("trace %s: %w", rep.Connection, err)
	}
	var ebpfBefore *EBPFLive
	if onEBPF && t.f.netns != "" && t.env.EBPFState != nil {
		st, err := t.env.EBPFState(t.pinDir, t.f.netns)
		if err != nil {
			return fmt.Errorf("eBPF data path in %s: %w", t.pinDir, err)
		}
		ebpfBefore = &st
	}
	if t.watch > 0 {
		fmt.Fprintf(t.env.Stderr, "shunt trace: counters read; watching for %s: make the connection now\n", t.watch)
		if t.watching != nil {
			t.watching()
		}
		ctx, stop := SignalContext(ctx)
		defer stop()
		timer := time.NewTimer(t.watch)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("--watch: interrupted: %w", ctx.Err())
		case <-timer.C:
		}
		after, err := backend.RuleCounters(ctx, b, &plan)
		if err != nil && !errors.Is(err, backend.ErrDrift) { // drift was warned about already
			return err
		}
		rep.Watch = watched(&plan, res.Path, counters, after, t.watch)
		counters = after
	}
	rep.Steps = steps(res, counters)
	for _, ref := range uniqueRefs(res.Path) {
		rep.Path = append(rep.Path, ref.String())
	}
	v := res.Verdict
	rep.Verdict = traceVerdict{Kind: v.Kind.String(), Port: v.Port, Listener: v.Listener, Iface: v.Iface,
		Mark: v.Mark, ConnMark: v.ConnMark, Zone: v.Zone, Text: v.String(), Reason: v.Reason}
	if v.OrigDst.IsValid() {
		rep.Verdict.OrigDst = v.OrigDst.String()
	}
	if v.Dst.IsValid() {
		rep.Verdict.Dst = v.Dst.String()
	}
	if onEBPF {
		if rep.EBPF, err = t.hook(&cfg, &plan, conn); err != nil {
			return err
		}
		if ebpfBefore != nil {
			if rep.EBPF.Live, err = t.ebpfLive(*ebpfBefore); err != nil {
				return err
			}
		}
	}
	if t.graph != "" {
		if err := t.draw(&plan, &cfg, conn, res, counters); err != nil {
			return err
		}
	}
	if t.jsonOut {
		enc := json.NewEncoder(t.env.Stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(rep)
	}
	_, err = io.WriteString(t.env.Stdout, rep.text())
	return err
}

// config returns the Config of the settings, and whether the pod is on the eBPF data path (--ebpf,
// or the --pod's annotation).
func (t *traceCmd) config() (redirect.Config, bool, error) {
	if t.f.pod == "" || t.env.PodEBPF == nil || t.env.ConnectHook == nil {
		cfg, err := settingsConfig(t.env, t.f, t.detectIPv6)
		return cfg, t.ebpf, err
	}
	data, err := t.f.readPod(t.env)
	if err != nil {
		return redirect.Config{}, false, err
	}
	cfg, err := t.f.podConfig(t.env, data)
	cfg.NativeNFTables = t.f.nativeNFT
	if err != nil {
		return cfg, false, err
	}
	onEBPF, err := t.env.PodEBPF(data)
	if err != nil {
		return cfg, false, fmt.Errorf("--pod %s: %w", t.f.pod, err)
	}
	return cfg, onEBPF, nil
}

// defaultEBPFPinDir is where the node's eBPF agent pins its maps (cni.DefaultEBPFPinDir; this package
// stays clear of the CNI plugin's).
const defaultEBPFPinDir = "/sys/fs/bpf/shunt"

// ebpfLive is the eBPF data path's state now and, with --watch, the counters that moved since before.
func (t *traceCmd) ebpfLive(before EBPFLive) (*traceEBPFLive, error) {
	live := &traceEBPFLive{EBPFLive: before}
	if t.watch <= 0 {
		return live, nil
	}
	after, err := t.env.EBPFState(t.pinDir, t.f.netns)
	if err != nil {
		return nil, fmt.Errorf("eBPF data path in %s: %w", t.pinDir, err)
	}
	live.EBPFLive, live.Moved = after, map[string]uint64{}
	for name, v := range after.Counters {
		if d := v - before.Counters[name]; v > before.Counters[name] {
			live.Moved[name] = d
		}
	}
	return live, nil
}

// hook returns the eBPF connect hook's decision for conn, and the verdict of the rules for the
// connection it rewrote.
func (t *traceCmd) hook(cfg *redirect.Config, plan *redirect.Plan, conn trace.Conn) (*traceEBPF, error) {
	if conn.Dir != trace.Out {
		return &traceEBPF{Reason: "not involved: the hooks decide on what a process of the pod sends, TCP connections and DNS over UDP"}, nil
	}
	d, err := t.env.ConnectHook(cfg, conn.PodAddrs, HookConnect{UDP: conn.Proto == "udp", Dst: conn.Dst, Src: conn.Src.Addr(), UID: conn.UID, GID: conn.GID})
	if err != nil {
		return nil, fmt.Errorf("eBPF data path: %w", err)
	}
	e := &traceEBPF{Verdict: d.Verdict, Port: d.Port, Reason: d.Reason}
	if d.Port == 0 {
		return e, nil
	}
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if conn.Dst.Addr().Is6() {
		lo = netip.IPv6Loopback()
	}
	rewritten := conn
	rewritten.Dst = netip.AddrPortFrom(lo, d.Port)
	if res, err := trace.Walk(plan, rewritten); err == nil {
		e.Then = fmt.Sprintf("the rules then see a connection to %s: %s", rewritten.Dst, res.Verdict)
	}
	return e, nil
}

// draw writes --graph: the plan with the traced path emphasised, and the counters when live.
func (t *traceCmd) draw(plan *redirect.Plan, cfg *redirect.Config, conn trace.Conn, res trace.Result, counters map[redirect.RuleRef]redirect.Counters) error {
	format, err := graphFormat(t.graph)
	if err != nil {
		return err
	}
	opts := graph.Options{Title: title(cfg) + ": trace " + connText(conn) + ": " + res.Verdict.String(),
		Highlight: uniqueRefs(res.Path), Counters: counters}
	var out bytes.Buffer
	if err := graph.Render(&out, format, plan, opts); err != nil {
		return err
	}
	if err := os.WriteFile(t.graph, out.Bytes(), 0o644); err != nil {
		return fmt.Errorf("--graph: %w", err)
	}
	return nil
}

// uniqueRefs returns refs without repeats, in order of first appearance.
func uniqueRefs(refs []redirect.RuleRef) []redirect.RuleRef {
	var out []redirect.RuleRef
	for _, r := range refs {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// steps turns the walk's steps into the report's, with the counters of each rule when known.
func steps(res trace.Result, counters map[redirect.RuleRef]redirect.Counters) []traceStep {
	out := make([]traceStep, 0, len(res.Steps))
	for _, s := range res.Steps {
		st := traceStep{Hook: s.Hook, Matched: s.Matched, Note: s.Note}
		if s.Rule != nil {
			st.Ref, st.Rule = s.Ref.String(), graph.RuleText(s.Rule)
			st.Flow, st.Why = string(s.Rule.Flow), s.Rule.Why
			if c, ok := counters[s.Ref]; ok {
				st.Counters = &traceCounter{Packets: c.Packets, Bytes: c.Bytes}
			}
		}
		out = append(out, st)
	}
	return out
}

// watched compares the rules whose packet counters moved between before and after with the traced
// path.
func watched(plan *redirect.Plan, path []redirect.RuleRef, before, after map[redirect.RuleRef]redirect.Counters, d time.Duration) *traceWatched {
	w := &traceWatched{Duration: d.String(), Moved: []traceMoved{}}
	onPath := map[redirect.RuleRef]bool{}
	for _, r := range path {
		onPath[r] = true
	}
	moved := map[redirect.RuleRef]bool{}
	for _, fp := range plan.Families {
		for _, tb := range fp.Tables {
			for _, c := range tb.Chains {
				for i := range c.Rules {
					ref := redirect.RuleRef{Family: fp.Family, Table: tb.Name, Chain: c.Name, Index: i}
					a, ok := after[ref]
					b := before[ref]
					if !ok || a.Packets <= b.Packets {
						continue
					}
					moved[ref] = true
					w.Moved = append(w.Moved, traceMoved{Ref: ref.String(), Packets: a.Packets - b.Packets,
						Bytes: a.Bytes - b.Bytes, OnPath: onPath[ref]})
					if !onPath[ref] {
						w.OffPath = append(w.OffPath, ref.String())
					}
				}
			}
		}
	}
	// The path's rules first, in the walk's order, then the others in the plan's.
	pos := map[string]int{}
	for i, r := range uniqueRefs(path) {
		pos[r.String()] = i
	}
	slices.SortStableFunc(w.Moved, func(a, b traceMoved) int {
		if a.OnPath && b.OnPath {
			return pos[a.Ref] - pos[b.Ref]
		}
		switch {
		case a.OnPath && !b.OnPath:
			return -1
		case !a.OnPath && b.OnPath:
			return 1
		}
		return 0
	})
	for _, r := range uniqueRefs(path) {
		if !moved[r] {
			w.NotMoved = append(w.NotMoved, r.String())
		}
	}
	w.Agrees = len(w.NotMoved) == 0 && len(w.OffPath) == 0
	return w
}

// text is the report for people: the connection, one line per rule met (and per event of the walk),
// the verdict, then the eBPF decision and what --watch saw.
func (r *traceReport) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "trace %s\nsettings: %s", r.Connection, r.Settings)
	if r.Backend != "" {
		fmt.Fprintf(&b, ", as %s holds them in %s, with the kernel's counters", r.Backend, r.NetNS)
	}
	b.WriteString("\n")
	var wRef, wCount, wRule, wResult int
	counter := func(s traceStep) string {
		if s.Counters == nil {
			return ""
		}
		return fmt.Sprintf("[%d pkt %d B]", s.Counters.Packets, s.Counters.Bytes)
	}
	result := func(s traceStep) string {
		switch {
		case s.Matched && s.Note != "":
			return "match: " + s.Note
		case s.Matched:
			return "match"
		case s.Note != "":
			return "no: " + s.Note
		}
		return "no"
	}
	for _, s := range r.Steps {
		if s.Ref != "" {
			wRef = max(wRef, len(s.Ref))
			wCount = max(wCount, len(counter(s)))
			wRule = max(wRule, len([]rune(s.Rule)))
			wResult = max(wResult, len([]rune(result(s))))
		}
	}
	pad := func(s string, w int) string { return s + strings.Repeat(" ", max(w-len([]rune(s)), 0)) }
	hook := ""
	for _, s := range r.Steps {
		if s.Hook != "" && s.Hook != hook {
			hook = s.Hook
			fmt.Fprintf(&b, "%s\n", hook)
		}
		if s.Ref == "" {
			fmt.Fprintf(&b, "    · %s\n", s.Note)
			continue
		}
		mark := " "
		if s.Matched {
			mark = "*"
		}
		line := "  " + mark + " " + pad(s.Ref, wRef) + "  "
		if wCount > 0 {
			line += pad(counter(s), wCount) + "  "
		}
		line += pad(s.Rule, wRule) + "  " + pad(result(s), wResult) + "  " + s.Flow + " " + s.Why
		fmt.Fprintf(&b, "%s\n", strings.TrimRight(line, " "))
	}
	fmt.Fprintf(&b, "verdict: %s\n  %s\n", r.Verdict.Text, r.Verdict.Reason)
	if e := r.EBPF; e != nil {
		if e.Verdict == "" {
			fmt.Fprintf(&b, "eBPF connect hook: %s\n", e.Reason)
		} else {
			fmt.Fprintf(&b, "eBPF connect hook: %s", e.Verdict)
			if e.Port != 0 {
				fmt.Fprintf(&b, " to loopback :%d", e.Port)
			}
			fmt.Fprintf(&b, "\n  %s\n", e.Reason)
			if e.Then != "" {
				fmt.Fprintf(&b, "  %s\n", e.Then)
			}
		}
		if l := e.Live; l != nil {
			b.WriteString(l.text())
		}
	}
	if w := r.Watch; w != nil {
		fmt.Fprintf(&b, "watch %s: counters moved on %d rules\n", w.Duration, len(w.Moved))
		for _, m := range w.Moved {
			on := "on the path"
			if !m.OnPath {
				on = "NOT on the path"
			}
			fmt.Fprintf(&b, "  %s  +%d pkt +%d B  %s\n", pad(m.Ref, wRef), m.Packets, m.Bytes, on)
		}
		if w.Agrees {
			b.WriteString("the kernel agrees with the traced path: exactly its rules counted packets\n")
		} else {
			b.WriteString("the kernel DISAGREES with the traced path:")
			if len(w.NotMoved) > 0 {
				fmt.Fprintf(&b, " not counted: %s;", strings.Join(w.NotMoved, ", "))
			}
			if len(w.OffPath) > 0 {
				fmt.Fprintf(&b, " counted off the path: %s;", strings.Join(w.OffPath, ", "))
			}
			b.WriteString(" (another connection meanwhile? another one than traced? other settings?)\n")
		}
	}
	return b.String()
}

// text is the eBPF data path's live state as trace prints it.
func (l *traceEBPFLive) text() string {
	var b strings.Builder
	switch {
	case !l.Loaded:
		b.WriteString("  eBPF data path: not loaded on this node: the rules alone capture the pod\n")
		return b.String()
	case !l.Registered:
		b.WriteString("  eBPF data path: loaded, but this namespace is not registered: the rules alone capture the pod\n")
	default:
		b.WriteString("  eBPF data path: loaded, this namespace registered\n")
	}
	if l.Moved == nil {
		return b.String()
	}
	if len(l.Moved) == 0 {
		b.WriteString("  eBPF counters: none moved\n")
		return b.String()
	}
	names := slices.Sorted(maps.Keys(l.Moved))
	b.WriteString("  eBPF counters moved (node-wide):")
	for _, n := range names {
		fmt.Fprintf(&b, " %s +%d", n, l.Moved[n])
	}
	b.WriteString("\n")
	return b.String()
}
