package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"

	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/redirect"
)

// ExitStatusNotCaptured is `shunt status`' exit code when a meshed pod is not captured as its settings
// say (drifted, or its namespace unreadable).
const ExitStatusNotCaptured = 2

func newStatusCmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--state-dir DIR] [--json] | status --cluster [--kubeconfig PATH] [--since DURATION] [--json]",
		Short: "Which meshed pods of this node, or of the cluster, are captured right now, and which are not; changes nothing",
		Long: "Checks every pod the CNI plugin captured on this node (its records in --state-dir) against the\n" +
			"rules of its settings on its backend, as the node agent's drift audit does, and prints one line\n" +
			"per pod: captured, drifted (with the differences), gone (its sandbox ended without a DEL), or\n" +
			"unknown (its namespace could not be read). It repairs nothing: the agent does (--drift-repair).\n\n" +
			"With --cluster it reads, from the API server (--kubeconfig, else as kubectl finds it), every\n" +
			"node's agent conditions — cni.shunt.io/Ready and cni.shunt.io/PodsCaptured, which names the\n" +
			"meshed pods not captured after the agent's last audit — and the agents' ShuntDrift Events of\n" +
			"the last --since; nodes without the Ready condition run no agent and are listed only.\n\n" +
			"Exit status: 0 when every pod is captured, 2 when some is drifted or unknown (with --cluster:\n" +
			"some node reports pods not captured, or its agent not ready), 1 when nothing ran.",
		Args: cobra.NoArgs,
	}
	stateDir := cmd.Flags().String("state-dir", podstate.DefaultDir, "the plugin's records of the node's pods")
	asJSON := cmd.Flags().Bool("json", false, "print the statuses as JSON")
	cluster := cmd.Flags().Bool("cluster", false, "the cluster view: every node's agent conditions and recent ShuntDrift Events, from the API server")
	kubeconfig := cmd.Flags().String("kubeconfig", "", "with --cluster: the kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
	since := cmd.Flags().Duration("since", time.Hour, "with --cluster: the ShuntDrift Events of this last while")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		var errs []error
		bad := func(field, value, want string) {
			errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: errors.New(want)})
		}
		if !filepath.IsAbs(*stateDir) {
			bad("--state-dir", *stateDir, "not an absolute path")
		}
		if *cluster && cmd.Flags().Changed("state-dir") {
			bad("--state-dir", *stateDir, "not with --cluster: the agents read their nodes' records")
		}
		for _, name := range []string{"kubeconfig", "since"} {
			if !*cluster && cmd.Flags().Changed(name) {
				bad("--"+name, cmd.Flags().Lookup(name).Value.String(), "only with --cluster")
			}
		}
		if *since <= 0 {
			bad("--since", since.String(), "must be positive")
		}
		return errors.Join(errs...)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *cluster {
			client, err := clusterClient(*kubeconfig)
			if err != nil {
				return err
			}
			return runClusterStatus(cmd.Context(), client, env.Stdout, *asJSON, *since)
		}
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

// runClusterStatus prints the cluster view and fails with ExitStatusNotCaptured when some node reports
// pods not captured or its agent not ready.
func runClusterStatus(ctx context.Context, client dynamic.Interface, w io.Writer, asJSON bool, since time.Duration) error {
	cs, err := clusterStatus(ctx, client, time.Now().Add(-since))
	if err != nil {
		return err
	}
	if err := cs.write(w, asJSON, since); err != nil {
		return err
	}
	notReady, notCaptured := cs.notCaptured()
	if notReady == 0 && notCaptured == 0 {
		return nil
	}
	var why []string
	if notCaptured > 0 {
		why = append(why, fmt.Sprintf("%d node(s) report meshed pods not captured", notCaptured))
	}
	if notReady > 0 {
		why = append(why, fmt.Sprintf("%d node(s) report their shunt agent not ready", notReady))
	}
	return &capture.ExitError{Code: ExitStatusNotCaptured, Err: errors.New(strings.Join(why, "; "))}
}

// oneLine joins the lines of s with "; ", for a table cell.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
