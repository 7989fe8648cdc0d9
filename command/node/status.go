package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/redirect"
)

// ExitStatusNotCaptured is `shunt status`' exit code when a meshed pod is not captured as its settings
// say (drifted, or its namespace unreadable).
const ExitStatusNotCaptured = 2

func newStatusCmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--state-dir DIR] [--json]",
		Short: "Which meshed pods of this node are captured right now, and which are not; changes nothing",
		Long: "Checks every pod the CNI plugin captured on this node (its records in --state-dir) against the\n" +
			"rules of its settings on its backend, as the node agent's drift audit does, and prints one line\n" +
			"per pod: captured, drifted (with the differences), gone (its sandbox ended without a DEL), or\n" +
			"unknown (its namespace could not be read). It repairs nothing: the agent does (--drift-repair).\n\n" +
			"Exit status: 0 when every pod is captured, 2 when some is drifted or unknown, 1 when nothing ran.",
		Args: cobra.NoArgs,
	}
	stateDir := cmd.Flags().String("state-dir", podstate.DefaultDir, "the plugin's records of the node's pods")
	asJSON := cmd.Flags().Bool("json", false, "print the statuses as JSON")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if !filepath.IsAbs(*stateDir) {
			return &redirect.FieldError{Field: "--state-dir", Value: *stateDir, Err: errors.New("not an absolute path")}
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		recs, listErr := podstate.Store{Dir: *stateDir}.List()
		sts := make([]podstate.Status, 0, len(recs))
		bad := 0
		var checker podstate.Checker
		for _, r := range recs {
			st := checker.Check(cmd.Context(), r)
			if st.State == podstate.Drifted || st.State == podstate.Unknown {
				bad++
			}
			sts = append(sts, st)
		}
		if *asJSON {
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(sts); err != nil {
				return err
			}
		} else {
			w := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "POD\tCONTAINER\tBACKEND\tSTATE\tDETAIL")
			for _, st := range sts {
				detail := st.Drift
				if st.Err != "" {
					detail = st.Err
				}
				fmt.Fprintf(w, "%s\t%.12s\t%s\t%s\t%s\n", st.Pod, st.ContainerID, st.Backend, st.State, oneLine(detail))
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if listErr != nil {
			return listErr
		}
		if bad > 0 {
			return &capture.ExitError{Code: ExitStatusNotCaptured, Err: fmt.Errorf("%d of %d meshed pod(s) not captured as their settings say", bad, len(sts))}
		}
		return nil
	}
	return cmd
}

// oneLine joins the lines of s with "; ", for a table cell.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
