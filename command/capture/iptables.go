package capture

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/podroute"
	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/validation"
)

// validationExitCode is istio-iptables' exit code for a failed validation; istio-cni's repair
// controller looks for it.
const validationExitCode = 126

// newIptablesCmd returns `shunt iptables` and its flags.
func newIptablesCmd(env Env) (*cobra.Command, *istioFlags) {
	cmd := &cobra.Command{
		Use:     "iptables",
		Aliases: []string{"istio-iptables"}, // Istio's injector runs the init image with args [istio-iptables, ...]
		Short:   "Program a pod's capture rules (drop-in for istio-iptables)",
		Long: "Program the ISTIO_* chains that send a meshed pod's TCP to its sidecar proxy. Flags and\n" +
			"environment variables are istio-iptables'; defaults are the sidecar injector's. A flag the\n" +
			"combination given would ignore is an error: --explain only with --dry-run, the probe flags\n" +
			"only with --run-validation, no rule flags with --cleanup-only" + podOr(env) + ".",
		Args: cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags(), ruleFlags, backendFlags, probeFlags, logFlags, env.podFlag(), []string{
		"network-namespace", "dry-run", "explain", "cleanup-only", "reconcile", "force-apply",
		"run-validation", "skip-rule-apply",
	})
	markExclusive(cmd)
	cmd.PreRunE = func(*cobra.Command, []string) error { return f.prepare(env.Getenv) }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return runIptables(cmd, env, f) }
	return cmd, f
}

func newCleanupCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every chain, rule, route and address shunt or istio-iptables installed",
		Long: "Remove what shunt or istio-iptables installed in the network namespace: every backend, or only\n" +
			"the native nftables tables (--native-nftables) or one iptables variant (--force-iptables-binary).",
		Args: cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags(), []string{"network-namespace"}, backendFlags, logFlags)
	markExclusive(cmd)
	cmd.PreRunE = func(*cobra.Command, []string) error { return f.prepare(env.Getenv) }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runCleanup(cmd.Context(), f.cleanupScope(env.Logger(f.logLevel, f.logJSON)), env.Stdout)
	}
	return cmd
}

func newValidateCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Prove in this network namespace that capture works, changing no rules",
		Long: "Listen on the capture ports, connect as the proxy's uid to the passthrough address on the probe\n" +
			"port, and check that the rules hand the connection to the inbound capture port; exit 126 if not.\n" +
			"It takes the flags the validation uses; `shunt iptables --run-validation --skip-rule-apply` is\n" +
			"the same with every istio-iptables flag accepted.",
		Args: cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags(), validationRuleFlags, probeFlags, []string{"network-namespace"}, logFlags)
	cmd.PreRunE = func(*cobra.Command, []string) error { return f.prepare(env.Getenv) }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f.runValidation, f.skipRuleApply = true, true
		return runIptables(cmd, env, f)
	}
	return cmd
}

// runIptables carries out the flags, which prepare accepted: it builds and checks everything before
// it changes anything.
func runIptables(cmd *cobra.Command, env Env, f *istioFlags) error {
	log := env.Logger(f.logLevel, f.logJSON)
	ctx := cmd.Context()
	if f.cleanupOnly {
		return runCleanup(ctx, f.cleanupScope(log), env.Stdout)
	}
	cfg, err := f.buildConfig(env)
	if err != nil {
		return err
	}
	plan, err := redirect.Build(cfg)
	if err != nil {
		return err
	}
	if f.dryRun {
		return printPlan(env.Stdout, &plan, f.explain)
	}
	var v *validation.Probe
	if f.runValidation {
		if v, err = f.validation(cfg, log); err != nil {
			return err
		}
	}
	if !f.skipRuleApply {
		b, choice, err := backend.Select(backend.Settings{NetNS: f.netns, NativeNFTables: f.nativeNFT, IptablesVariant: f.forceBinary, Logger: log})
		if err != nil {
			return err
		}
		log.Info("backend chosen", "backend", choice.Backend, "reason", choice.Reason)
		if plan, err = b.Plan(cfg); err != nil {
			return err
		}
		if err := b.Apply(ctx, &plan, backend.Mode{Reconcile: f.reconcile, Force: f.forceApply}); err != nil {
			return err
		}
	}
	if v != nil {
		ctx, stop := SignalContext(ctx)
		defer stop()
		if err := v.Run(ctx); err != nil {
			return &ExitError{Code: validationExitCode, Err: fmt.Errorf("iptables validation failed; the workload is not ready for the mesh: %w", err)}
		}
		log.Info("validation passed: capture works")
	}
	return nil
}

// validation returns the validation of cfg the flags ask for.
func (f *istioFlags) validation(cfg redirect.Config, log *slog.Logger) (*validation.Probe, error) {
	var errs []error
	port, err := redirect.ParsePort(f.probePort)
	if err != nil {
		errs = append(errs, &redirect.FieldError{Field: f.name("iptables-probe-port"), Value: f.probePort, Err: err})
	}
	if f.probeTimeout <= 0 {
		errs = append(errs, &redirect.FieldError{Field: f.name("probe-timeout"), Value: f.probeTimeout.String(), Err: errors.New("must be above 0")})
	}
	exe, err := os.Executable()
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &validation.Probe{Config: cfg, ProbePort: port, Timeout: f.probeTimeout, NetNS: f.netns, Logger: log,
		ClientCommand: []string{exe, "__validate-client"}}, nil
}

// buildConfig returns the Config of the flags, or of the Pod manifest given with --pod.
func (f *istioFlags) buildConfig(env Env) (redirect.Config, error) {
	cfg, err := f.ruleConfig(env)
	cfg.NativeNFTables = f.nativeNFT
	return cfg, err
}

func (f *istioFlags) ruleConfig(env Env) (redirect.Config, error) {
	if f.pod == "" {
		return f.config(env.Getenv, os.ReadFile, func(dualStack bool) (bool, error) {
			return podroute.DetectIPv6(f.netns, dualStack)
		})
	}
	data, err := f.readPod(env)
	if err != nil {
		return redirect.Config{}, err
	}
	return f.podConfig(env, data)
}

// readPod reads the Pod manifest --pod names: a file, or standard input for "-".
func (f *istioFlags) readPod(env Env) ([]byte, error) {
	if env.PodConfig == nil {
		return nil, errors.New("--pod: this binary decodes no Pod manifests; use shunt")
	}
	var data []byte
	var err error
	if f.pod == "-" {
		data, err = io.ReadAll(env.Stdin)
	} else {
		data, err = os.ReadFile(f.pod)
	}
	if err != nil {
		return nil, fmt.Errorf("--pod: %w", err)
	}
	return data, nil
}

// podConfig returns the Config of the Pod manifest data, which --pod named.
func (f *istioFlags) podConfig(env Env, data []byte) (redirect.Config, error) {
	if env.PodConfig == nil {
		return redirect.Config{}, errors.New("--pod: this binary decodes no Pod manifests; use shunt")
	}
	cfg, err := env.PodConfig(data, func(w string) { fmt.Fprintf(env.Stderr, "shunt: warning: %s\n", w) })
	if err != nil {
		return redirect.Config{}, fmt.Errorf("--pod %s: %w", f.pod, err)
	}
	return cfg, nil
}

// printPlan writes the restore input of every family, each after a comment line naming the tool, or
// the nft script of an inet plan.
func printPlan(w io.Writer, plan *redirect.Plan, explain bool) error {
	if fp := plan.Family(redirect.Inet); fp != nil {
		script, err := nftables.Render(plan, nftables.RenderOptions{Explain: explain})
		if err != nil {
			return err
		}
		if explain {
			for _, line := range podroute.Explain(fp) {
				fmt.Fprintf(w, "# %s\n", line)
			}
		}
		_, err = w.Write(script)
		return err
	}
	for i := range plan.Families {
		fp := &plan.Families[i]
		tool := "iptables-restore"
		if fp.Family == redirect.IPv6 {
			tool = "ip6tables-restore"
		}
		if _, err := fmt.Fprintf(w, "# %s (%s)\n", tool, fp.Family); err != nil {
			return err
		}
		if explain {
			for _, line := range podroute.Explain(fp) {
				fmt.Fprintf(w, "# %s\n", line)
			}
		}
		if _, err := w.Write(iptables.Render(fp, iptables.RenderOptions{Explain: explain})); err != nil {
			return err
		}
	}
	return nil
}

// podOr names --pod after another flag, when the binary has it.
func podOr(env Env) string {
	if env.PodConfig == nil {
		return ""
	}
	return " or --pod"
}
