package capture

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/redirect"
)

// NewMigrateCmd returns `shunt migrate`, which moves a running pod's capture from one backend to
// another with no gap and no restart (the operator's binary only: an init container never migrates).
func NewMigrateCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate --to nftables|iptables [--stage]",
		Short: "Move a running pod's capture to another backend, with no capture gap",
		Long: "Program the pod's rules with the backend --to names (nftables: Istio's native nftables mode;\n" +
			"iptables: the variant --force-iptables-binary names, or the one the namespace suggests), then\n" +
			"remove shunt's rules from every other backend. Both are in place for a moment, and either sends\n" +
			"a new connection to the proxy; established connections keep their NAT binding. In TPROXY mode a\n" +
			"guard rule, first in mangle PREROUTING of both, keeps the two from marking each other's\n" +
			"connections; it is dropped at the end. --stage stops once the new backend's rules are in place\n" +
			"next to the old ones (check them, watch their counters), and running the command again without\n" +
			"it finishes. Give the pod's settings as to `shunt iptables` (flags and environment" + podOr(env) + ").",
		Args: cobra.NoArgs,
	}
	f := newIstioFlags(cmd.Flags(), ruleFlags, []string{"force-iptables-binary", "network-namespace"}, env.podFlag(), logFlags)
	var to string
	var stage bool
	cmd.Flags().StringVar(&to, "to", "", "the backend to move to: nftables or iptables")
	cmd.Flags().BoolVar(&stage, "stage", false, "program the new backend's rules next to the old ones and stop; run again without --stage to finish")
	_ = cmd.MarkFlagRequired("to")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		errs := []error{f.prepare(env.Getenv)}
		switch to {
		case "nftables":
			if f.forceBinary != "" {
				errs = append(errs, fmt.Errorf("%s chooses an iptables variant: only with --to iptables", f.name("force-iptables-binary")))
			}
		case "iptables":
		default:
			errs = append(errs, &redirect.FieldError{Field: "--to", Value: to, Err: errors.New(`want "nftables" or "iptables"`)})
		}
		return errors.Join(errs...)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log := env.Logger(f.logLevel, f.logJSON)
		f.nativeNFT = to == "nftables"
		cfg, err := f.buildConfig(env)
		if err != nil {
			return err
		}
		b, choice, err := backend.Select(backend.Settings{NetNS: f.netns, NativeNFTables: f.nativeNFT, IptablesVariant: f.forceBinary, Logger: log})
		if err != nil {
			return err
		}
		log.Info("backend chosen", "backend", choice.Backend, "reason", choice.Reason)
		migrate := backend.Migrate
		if stage {
			migrate = backend.Stage
		}
		lines, err := migrate(cmd.Context(), b, cfg, backend.Scope{NetNS: f.netns, Logger: log})
		for _, l := range lines {
			fmt.Fprintln(env.Stdout, l)
		}
		return err
	}
	return cmd
}
