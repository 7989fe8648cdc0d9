package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/doctor"
	"github.com/shuntmesh/shunt/redirect"
)

// ExitDoctorWarnings is `shunt doctor`'s exit code when the report holds warnings.
const ExitDoctorWarnings = 2

func newDoctorCmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor [--network-namespace PATH] [--json]",
		Short: "Report which backend shunt would use here and why, what is installed, the kernel's features, and warnings; changes nothing",
		Long: "Reads, changing nothing, a network namespace (the current one, or --network-namespace) and the\n" +
			"kernel, and reports:\n" +
			"  - the backend shunt's iptables commands would use, for IPv4 and IPv6, as they decide it, and the\n" +
			"    evidence: the legacy tables /proc lists, the nft tables per family (shunt's marked, with the\n" +
			"    rules of shunt's and of other programs), the netfilter modules loaded;\n" +
			"  - what of shunt's each backend holds (nftables, iptables-nft, iptables-legacy) and shunt's TPROXY\n" +
			"    routing;\n" +
			"  - kernel features: nf_tables, iptables-legacy, TPROXY and conntrack zones for iptables and\n" +
			"    nftables, cgroup v2 and where it is mounted, the eBPF data path's needs;\n" +
			"  - warnings: shunt's rules in more than one backend, legacy tables beside the nft variant chosen\n" +
			"    (or the reverse), /proc not mounted, TPROXY routing without TPROXY rules, TPROXY rules or mode\n" +
			"    without TPROXY in the kernel.\n" +
			"It opens no legacy table (they are listed from /proc, as opening one creates it), dumps nft tables\n" +
			"over netlink and loads no module; only the eBPF probe loads throwaway programs, and unloads them.\n\n" +
			"Output: sections of one fact a line, warnings last prefixed \"warning: \"; --json prints the\n" +
			"report as one JSON object (fields documented in package doctor; added to, never renamed).\n\n" +
			"Exit status, for monitoring: 0 when there is no warning, 2 when there are warnings (the report is\n" +
			"printed in full either way), 1 when doctor could not run (a namespace that cannot be entered).",
		Args: cobra.NoArgs,
	}
	netns := cmd.Flags().String("network-namespace", "", "path of the network namespace to read (default: the current one)")
	cmd.Flags().SetNormalizeFunc(netnsAlias)
	asJSON := cmd.Flags().Bool("json", false, "print the report as JSON")
	mode := cmd.Flags().StringP("istio-inbound-interception-mode", "m", "", "the inbound interception mode the namespace is to get, REDIRECT or TPROXY: warnings then concern that mode only (default: any)")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		switch redirect.Mode(*mode) {
		case "", redirect.ModeRedirect, redirect.ModeTProxy:
		default:
			return &redirect.FieldError{Field: "--istio-inbound-interception-mode", Value: *mode, Err: errors.New("want REDIRECT or TPROXY")}
		}
		if *netns == "" {
			return nil
		}
		if _, err := os.Stat(*netns); err != nil {
			return &redirect.FieldError{Field: "--network-namespace", Value: *netns, Err: errors.New("no such network namespace")}
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		r, err := doctor.Collect(cmd.Context(), doctor.Options{NetNS: *netns, Mode: redirect.Mode(*mode)})
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			err = enc.Encode(r)
		} else {
			err = r.WriteText(env.Stdout)
		}
		if err != nil {
			return err
		}
		if n := len(r.Warnings); n > 0 {
			return &capture.ExitError{Code: ExitDoctorWarnings, Err: fmt.Errorf("%d warning(s)", n)}
		}
		return nil
	}
	return cmd
}
