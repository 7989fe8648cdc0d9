package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/graph"
	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/redirect"
)

// graphCmd is `shunt graph`: its own flags, and the settings it draws the rules of.
type graphCmd struct {
	env       Env
	f         *istioFlags
	format    string
	output    string
	highlight string
	// detectIPv6 says whether the namespace at path has IPv6 when --ipv6 is not given (as the dry
	// run does); tests replace it.
	detectIPv6 func(path string, dualStack bool) (bool, error)
	// installed returns the backends holding rules of shunt's in a namespace; tests replace it.
	installed func(ctx context.Context, netns string) ([]backend.Found, error)
}

// newGraphCmd returns `shunt graph`.
func newGraphCmd(env Env) *cobra.Command {
	return graphCommand(&graphCmd{env: env, detectIPv6: podroute.DetectIPv6, installed: backend.Installed})
}

// graphCommand returns the command of g, whose env and functions are set, and registers its flags.
func graphCommand(g *graphCmd) *cobra.Command {
	env := g.env
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Draw a pod's capture rules: hooks, chains, jumps and verdicts, coloured by flow",
		Long: "Draw the rules `shunt iptables --dry-run` would print for the same settings (flags, environment" + podOr(env) + ")\n" +
			"as a picture: per family, the hooks that enter the built-in chains, every chain a box listing its\n" +
			"rules in order, jumps as edges, REDIRECT/TPROXY/DROP/ACCEPT as terminal nodes, each rule and edge\n" +
			"coloured by the flow (F1–F9, docs/flows.md) it serves. --format svg (the default) is laid out by\n" +
			"shunt itself, no Graphviz needed; dot is Graphviz input; mermaid is a flowchart GitHub renders.\n" +
			"With --network-namespace the rules are read there and each rule shows the packets and bytes the\n" +
			"kernel counted for it (the backend holding them, unless --native-nftables or\n" +
			"--force-iptables-binary names one); a namespace holding none of shunt's rules is an error.\n" +
			"--highlight emphasises rules, such as a traced path, by reference: IPv4/nat/ISTIO_OUTPUT#8\n" +
			"(family, table, chain, index from 0), comma-separated. The output file is --output: -o is\n" +
			"--istio-local-outbound-ports-exclude, as for shunt iptables.",
		Args: cobra.NoArgs,
	}
	// The settings flags live in a flag set of their own, so that only they are read from the
	// environment (as for shunt iptables), not --format, --output or --highlight.
	settings := pflag.NewFlagSet("graph settings", pflag.ContinueOnError)
	g.f = newIstioFlags(settings, ruleFlags, env.podFlag(), []string{"network-namespace"}, backendFlags)
	cmd.Flags().AddFlagSet(settings)
	formats := make([]string, len(graph.Formats))
	for i, f := range graph.Formats {
		formats[i] = string(f)
	}
	cmd.Flags().StringVar(&g.format, "format", string(graph.FormatSVG), "what to write: "+strings.Join(formats, ", "))
	cmd.Flags().StringVar(&g.output, "output", "", "file to write the drawing to (default: standard output)")
	cmd.Flags().StringVar(&g.highlight, "highlight", "", "comma-separated rules to emphasise, such as IPv4/nat/OUTPUT#0,IPv4/nat/ISTIO_OUTPUT#8")
	markExclusive(cmd)
	cmd.PreRunE = func(*cobra.Command, []string) error { return g.prepare() }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return g.run(cmd.Context()) }
	return cmd
}

// prepare fills the settings from the environment and refuses bad values and flags the combination
// would ignore. It changes nothing.
func (g *graphCmd) prepare() error {
	errs := []error{g.f.prepare(g.env.Getenv)}
	if _, err := graph.ParseFormat(g.format); err != nil {
		errs = append(errs, fmt.Errorf("--format: %w", err))
	}
	if _, err := g.highlights(); err != nil {
		errs = append(errs, err)
	}
	if err := checkLiveFlags(g.f); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// highlights parses --highlight, naming the flag and every bad value.
func (g *graphCmd) highlights() ([]redirect.RuleRef, error) {
	var refs []redirect.RuleRef
	var errs []error
	for _, item := range strings.Split(g.highlight, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		ref, err := graph.ParseRef(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("--highlight: %w", err))
			continue
		}
		refs = append(refs, ref)
	}
	return refs, errors.Join(errs...)
}

func (g *graphCmd) run(ctx context.Context) error {
	format, err := graph.ParseFormat(g.format)
	if err != nil {
		return err
	}
	refs, err := g.highlights()
	if err != nil {
		return err
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	opts := graph.Options{Title: title(&cfg), Highlight: refs}
	var plan redirect.Plan
	if g.f.netns == "" {
		if plan, err = redirect.Build(cfg); err != nil {
			return err
		}
	} else {
		b, err := g.backend(ctx)
		if err != nil {
			return err
		}
		if plan, err = b.Plan(cfg); err != nil {
			return err
		}
		counters, err := liveCounters(ctx, g.env, b, &plan, g.f.netns)
		if err != nil {
			return err
		}
		opts.Counters = counters
		opts.Title = fmt.Sprintf("%s, as %s holds them in %s, with the kernel's counters", opts.Title, b.Name(), g.f.netns)
	}
	var errs []error
	for _, ref := range refs {
		if plan.Rule(ref) == nil {
			errs = append(errs, fmt.Errorf("--highlight %s: the plan of these settings has no such rule", ref))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := graph.Render(&out, format, &plan, opts); err != nil {
		return err
	}
	if g.output == "" {
		_, err := g.env.Stdout.Write(out.Bytes())
		return err
	}
	if err := os.WriteFile(g.output, out.Bytes(), 0o644); err != nil {
		return fmt.Errorf("--output: %w", err)
	}
	return nil
}

// config is the Config of the settings flags, or of the Pod given with --pod, with IPv6 detected in
// the namespace (the current one without --network-namespace) when --ipv6 is not given.
func (g *graphCmd) config() (redirect.Config, error) {
	return settingsConfig(g.env, g.f, g.detectIPv6)
}

// backend returns the backend whose rules are drawn: the one the flags name, else the one holding
// shunt's rules in the namespace.
func (g *graphCmd) backend(ctx context.Context) (backend.Backend, error) {
	return liveBackend(ctx, g.f, g.installed)
}

// title names what cfg captures, for the drawing's heading.
func title(cfg *redirect.Config) string {
	parts := []string{string(cfg.Mode) + " mode"}
	if cfg.NativeNFTables {
		parts = append(parts, "native nftables")
	}
	if cfg.IPv6 {
		parts = append(parts, "IPv4 and IPv6")
	}
	if cfg.RedirectDNS {
		parts = append(parts, "DNS capture")
	}
	return "shunt capture rules: " + strings.Join(parts, ", ")
}
