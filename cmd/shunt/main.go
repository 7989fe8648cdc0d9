// Command shunt sets up transparent traffic interception for service-mesh sidecars. `shunt iptables` is a
// drop-in for Istio's istio-iptables.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/iptables"
)

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	// No signal handler here: it costs an OS thread at every start, and an init container's run is
	// over in a millisecond. Commands that wait (validation) install one; see signalContext.
	if runAsCNIPlugin() {
		return
	}
	err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintf(os.Stderr, "shunt: %s\n", strings.ReplaceAll(err.Error(), "\n", "\nshunt: "))
		os.Exit(code)
	}
}

// run executes the command line args.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := newRootCmd(osEnv{stdin: stdin, stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

// newRootCmd returns the command tree. Each command registers only the flags it honours, refuses in
// PreRunE (which changes nothing) the combinations that would ignore one, and acts in RunE.
func newRootCmd(env osEnv) *cobra.Command {
	root := &cobra.Command{
		Use:           "shunt",
		Short:         "Transparent traffic interception for service-mesh sidecars",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	ipt, _ := newIptablesCmd(env)
	root.AddCommand(ipt, newCleanupCmd(env), newValidateCmd(env), newProbeClientCmd(env), newInstallCNICmd(env), newEBPFCmd(env))
	return root
}

// osEnv is what commands reach of the process: standard streams and the environment.
type osEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

func (osEnv) getenv(name string) string { return os.Getenv(name) }

// logger returns the slog logger for --log_output_level / --log_as_json.
func (e osEnv) logger(level string, asJSON bool) *slog.Logger {
	lvl := slog.LevelInfo
	// Istio's form is scope:level[,scope:level]; the last level wins.
	for _, part := range strings.Split(level, ",") {
		if i := strings.LastIndex(part, ":"); i >= 0 {
			part = part[i+1:]
		}
		switch strings.ToLower(strings.TrimSpace(part)) {
		case "debug":
			lvl = slog.LevelDebug
		case "warn", "warning":
			lvl = slog.LevelWarn
		case "error", "fatal":
			lvl = slog.LevelError
		case "info", "":
			lvl = slog.LevelInfo
		}
	}
	// Timestamps in UTC: cluster logs are read across zones, and it spares loading the zone database.
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
			a.Value = slog.TimeValue(a.Value.Time().UTC())
		}
		return a
	}}
	if asJSON {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}

// newProbeClientCmd is the validation's probe client, which runs as the proxy's uid.
func newProbeClientCmd(env osEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "__validate-client ADDRESS TIMEOUT",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			timeout, err := time.ParseDuration(args[1])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			answer, err := iptables.ProbeClient(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(env.stdout, answer)
			return err
		},
	}
}

// signalContext returns ctx cancelled on SIGINT or SIGTERM, for commands that wait.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}
