package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/redirect"
)

// ExitMigratePodsFailed is `shunt migrate-pods`' exit code when some pod could not be migrated.
const ExitMigratePodsFailed = 2

func newMigratePodsCmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate-pods --to nftables|iptables [--iptables-variant nft|legacy] [--state-dir DIR] [--json]",
		Short: "Move every meshed pod of this node to another backend, with no capture gap",
		Long: "Reads the records the CNI plugin keeps of the pods it captured on this node (--state-dir) and\n" +
			"moves each pod's capture to the backend --to names, as `shunt migrate` does for one pod: the new\n" +
			"backend's rules first, then every other backend's removed, so that no connection escapes the\n" +
			"proxy (TPROXY pods included); records then name the new backend. Records of sandboxes whose\n" +
			"namespace is gone are removed. New pods get the backend of\n" +
			"the plugin's conflist entry: change it first (the chart's backend value, or install-cni\n" +
			"--backend), or let install-cni --migrate-pods do both.\n\n" +
			"Output: one line per pod (or --json: a list of results). Exit status 0 when every pod is on the\n" +
			"backend, 2 when some pod failed (the others are migrated), 1 when nothing ran.",
		Args: cobra.NoArgs,
	}
	var to, variant, stateDir string
	var asJSON bool
	cmd.Flags().StringVar(&to, "to", "", "the backend to move to: nftables or iptables")
	cmd.Flags().StringVar(&variant, "iptables-variant", "", "with --to iptables: nft or legacy (default: nft when the kernel has nf_tables, as for new pods)")
	cmd.Flags().StringVar(&stateDir, "state-dir", podstate.DefaultDir, "the plugin's records of the node's pods")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	_ = cmd.MarkFlagRequired("to")
	var target string
	cmd.PreRunE = func(*cobra.Command, []string) error {
		var errs []error
		bad := func(field, value, want string) {
			errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: errors.New(want)})
		}
		switch to {
		case "nftables":
			if variant != "" {
				bad("--iptables-variant", variant, "only with --to iptables")
			}
		case "iptables":
			if variant != "" && variant != "nft" && variant != "legacy" {
				bad("--iptables-variant", variant, "want nft or legacy")
			}
		default:
			bad("--to", to, `want "nftables" or "iptables"`)
		}
		if !filepath.IsAbs(stateDir) {
			bad("--state-dir", stateDir, "not an absolute path")
		}
		target = backend.ForNewPods(backend.Settings{NativeNFTables: to == "nftables", IptablesVariant: variant}).Backend
		return errors.Join(errs...)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log := env.Logger("warn", false)
		results, err := podstate.MigrateAll(cmd.Context(), podstate.Store{Dir: stateDir}, target, log)
		if asJSON {
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			if results == nil {
				results = []podstate.Result{}
			}
			if err := enc.Encode(results); err != nil {
				return err
			}
		} else {
			w := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "POD\tCONTAINER\tFROM\tTO\tOUTCOME\tDETAIL")
			for _, r := range results {
				from := "-"
				if len(r.From) > 0 {
					from = fmt.Sprint(r.From)
				}
				detail := r.Reason
				if r.Err != "" {
					detail = r.Err
				}
				fmt.Fprintf(w, "%s\t%.12s\t%s\t%s\t%s\t%s\n", r.Pod, r.ContainerID, from, r.To, r.Outcome, detail)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
		failed := 0
		for _, r := range results {
			if r.Err != "" {
				failed++
			}
		}
		if failed > 0 {
			return &capture.ExitError{Code: ExitMigratePodsFailed, Err: fmt.Errorf("%d of %d pod(s) not migrated", failed, len(results))}
		}
		return nil
	}
	return cmd
}
