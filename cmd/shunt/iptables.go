package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/iptables"
	"github.com/shuntmesh/shunt/nftables"
	"github.com/shuntmesh/shunt/redirect"
)

// validationExitCode is istio-iptables' exit code for a failed validation; istio-cni's repair
// controller looks for it.
const validationExitCode = 126

func newIptablesCmd(env osEnv) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "iptables",
		Aliases: []string{"istio-iptables"}, // Istio's injector runs the init image with args [istio-iptables, ...]
		Short:   "Program a pod's capture rules (drop-in for istio-iptables)",
		Long: "Program the ISTIO_* chains that send a meshed pod's TCP to its sidecar proxy. Flags and\n" +
			"environment variables are istio-iptables'; defaults are the sidecar injector's.",
		Args: cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runIptables(cmd, env, f)
	}
	return cmd
}

func newCleanupCmd(env osEnv) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every chain, rule, route and address shunt or istio-iptables installed",
		Args:  cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f.cleanupOnly = true
		return runIptables(cmd, env, f)
	}
	return cmd
}

func newValidateCmd(env osEnv) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Prove in this network namespace that capture works, changing no rules",
		Args:  cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f.runValidation, f.skipRuleApply = true, true
		return runIptables(cmd, env, f)
	}
	return cmd
}

func runIptables(cmd *cobra.Command, env osEnv, f *istioFlags) error {
	if err := f.applyEnv(env.getenv); err != nil {
		return err
	}
	log := env.logger(f.logLevel, f.logJSON)
	ctx := cmd.Context()
	opts := iptables.Options{
		Variant:   iptables.Variant(f.forceBinary),
		NetNS:     f.netns,
		Reconcile: f.reconcile,
		Force:     f.forceApply,
		Logger:    log,
	}
	switch opts.Variant {
	case "", iptables.VariantNFT, iptables.VariantLegacy:
	default:
		return &redirect.FieldError{Field: "--force-iptables-binary", Value: f.forceBinary, Err: errors.New("want nft or legacy")}
	}
	if f.nativeNFT && f.forceBinary != "" {
		return &redirect.FieldError{Field: "--force-iptables-binary", Value: f.forceBinary,
			Err: errors.New("--native-nftables programs nftables directly and uses no iptables binary")}
	}
	nftOpts := nftables.Options{NetNS: f.netns, Reconcile: f.reconcile, Force: f.forceApply, Logger: log}
	if f.cleanupOnly {
		if f.dryRun {
			return errors.New("--cleanup-only reads what is installed: it has no dry run")
		}
		if f.nativeNFT {
			return nftables.Cleanup(ctx, nftOpts)
		}
		return iptables.Cleanup(ctx, opts)
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
		return printPlan(env.stdout, &plan, f.explain)
	}
	if !f.skipRuleApply {
		apply := func() error { return iptables.Apply(ctx, &plan, opts) }
		if f.nativeNFT {
			apply = func() error { return nftables.Apply(ctx, &plan, nftOpts) }
		}
		if err := apply(); err != nil {
			return err
		}
	}
	if f.runValidation {
		ctx, stop := signalContext(ctx)
		defer stop()
		port, err := redirect.ParsePort(f.probePort)
		if err != nil {
			return &redirect.FieldError{Field: "--iptables-probe-port", Value: f.probePort, Err: err}
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		v := iptables.Validation{Config: cfg, ProbePort: port, Timeout: f.probeTimeout, NetNS: f.netns, Logger: log,
			ClientCommand: []string{exe, "__validate-client"}}
		if err := v.Run(ctx); err != nil {
			return &exitError{code: validationExitCode, err: fmt.Errorf("iptables validation failed; the workload is not ready for the mesh: %w", err)}
		}
		log.Info("validation passed: capture works")
	}
	return nil
}

// buildConfig returns the Config of the flags, or of the Pod manifest given with --pod.
func (f *istioFlags) buildConfig(env osEnv) (redirect.Config, error) {
	cfg, err := f.ruleConfig(env)
	cfg.NativeNFTables = f.nativeNFT
	return cfg, err
}

func (f *istioFlags) ruleConfig(env osEnv) (redirect.Config, error) {
	if f.pod == "" {
		return f.config(env.getenv, os.ReadFile, func(dualStack bool) (bool, error) {
			return iptables.DetectIPv6(f.netns, dualStack)
		})
	}
	var given []string
	for _, name := range ruleFlags {
		if f.fs.Changed(name) {
			given = append(given, "--"+name)
		}
	}
	if len(given) > 0 {
		return redirect.Config{}, fmt.Errorf("--pod takes the settings from the Pod; drop %s", strings.Join(given, ", "))
	}
	var data []byte
	var err error
	if f.pod == "-" {
		data, err = io.ReadAll(env.stdin)
	} else {
		data, err = os.ReadFile(f.pod)
	}
	if err != nil {
		return redirect.Config{}, fmt.Errorf("--pod: %w", err)
	}
	pod, err := cni.DecodePod(data)
	if err != nil {
		return redirect.Config{}, fmt.Errorf("--pod %s: %w", f.pod, err)
	}
	cfg, skip, err := cni.ConfigForPod(pod, nil)
	if err != nil {
		return redirect.Config{}, fmt.Errorf("pod %s/%s: %w", pod.Metadata.Namespace, pod.Metadata.Name, err)
	}
	if skip != "" {
		return redirect.Config{}, fmt.Errorf("pod %s/%s is not captured by the CNI plugin: %s", pod.Metadata.Namespace, pod.Metadata.Name, skip)
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
			for _, line := range iptables.ExplainSetup(fp) {
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
			for _, line := range iptables.ExplainSetup(fp) {
				fmt.Fprintf(w, "# %s\n", line)
			}
		}
		if _, err := w.Write(iptables.Render(fp, iptables.RenderOptions{Explain: explain})); err != nil {
			return err
		}
	}
	return nil
}
