package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/redirect"
	"github.com/shuntmesh/shunt/validation"
)

// ExitError carries a process exit code: the mains exit with Code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Commands are the capture commands: iptables (alias istio-iptables), cleanup, validate, graph,
// trace and the validation's hidden probe client. Each registers only the flags it honours, refuses in PreRunE
// (which changes nothing) the combinations that would ignore one, and acts in RunE.
func Commands(env Env) []*cobra.Command {
	ipt, _ := newIptablesCmd(env)
	return []*cobra.Command{ipt, newCleanupCmd(env), newValidateCmd(env), newProbeClientCmd(env)}
}

// Tools returns the commands that show and explain a pod's rules: `graph` and `trace`. The operator's
// binary has them; the init container's, which only programs rules, does without them (and their
// code).
func Tools(env Env) []*cobra.Command {
	return []*cobra.Command{newGraphCmd(env), newTraceCmd(env)}
}

// Env is what commands reach of the process: standard streams and the environment, and what the
// binary links to decide a Pod's settings.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// PodConfig, when set, returns the Config the CNI plugin would capture a Pod manifest with
	// (meshpod.ManifestConfig), and `iptables` offers --pod. The init container's binary leaves it out,
	// and the YAML decoding with it: the injector never passes --pod.
	PodConfig func(manifest []byte, warn func(string)) (redirect.Config, error)
	// PodEBPF, when set, says whether the pod of a Pod manifest uses the eBPF data path (its
	// shunt.io/mode annotation, cni.DataPathForPod). The init container's binary leaves it out.
	PodEBPF func(manifest []byte) (bool, error)
	// ConnectHook, when set, returns the decision the eBPF data path's connect hook takes for an
	// outbound TCP connection of a pod captured with cfg whose addresses are podIPs
	// (ebpf.DecideConnect), and `trace` offers --ebpf. The init container's binary leaves it out,
	// and cilium/ebpf with it.
	ConnectHook func(cfg *redirect.Config, podIPs []netip.Addr, c HookConnect) (HookDecision, error)
	// EBPFState, when set, reads the node's eBPF data path pinned in pinDir: whether it is loaded,
	// whether the namespace at netns is registered with it, and its counters (`trace --ebpf` with
	// --network-namespace shows them and, with --watch, which moved).
	EBPFState func(pinDir, netns string) (EBPFLive, error)
}

// EBPFLive is the node's eBPF data path as `shunt ebpf status` shows it, for one pod's namespace.
type EBPFLive struct {
	Loaded     bool              `json:"loaded"`
	Registered bool              `json:"registered"`
	Counters   map[string]uint64 `json:"counters,omitempty"`
}

// HookConnect is a TCP connect(2) the eBPF connect hook decides on, or with UDP a UDP datagram or
// connect(2) the DNS hooks decide on (ebpf.Connect).
type HookConnect struct {
	UDP      bool
	Dst      netip.AddrPort
	Src      netip.Addr // the address the socket is bound to, zero when unbound
	UID, GID uint32
}

// HookDecision is the eBPF connect hook's decision (ebpf.ConnectDecision).
type HookDecision struct {
	// Verdict is "pass" (left alone), "proxy" or "dns" (rewritten to loopback at Port).
	Verdict string
	Port    uint16
	Reason  string
}

// podFlag is the --pod flag when the binary decodes Pod manifests.
func (e Env) podFlag() []string {
	if e.PodConfig == nil {
		return nil
	}
	return []string{"pod"}
}

// Getenv reads the process environment.
func (Env) Getenv(name string) string { return os.Getenv(name) }

// Logger returns the slog logger for --log_output_level / --log_as_json (Istio's forms).
func (e Env) Logger(level string, asJSON bool) *slog.Logger {
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
		return slog.New(slog.NewJSONHandler(e.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.Stderr, opts))
}

// newProbeClientCmd is the validation's probe client, which runs as the proxy's uid.
func newProbeClientCmd(env Env) *cobra.Command {
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
			answer, err := validation.Client(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(env.Stdout, answer)
			return err
		},
	}
}

// SignalContext returns ctx cancelled on SIGINT or SIGTERM, for commands that wait.
func SignalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// NewRoot returns a root command named name, for the mains to add commands to.
func NewRoot(name, short string) *cobra.Command {
	return &cobra.Command{Use: name, Short: short, SilenceUsage: true, SilenceErrors: true}
}

// Execute runs root with args and env's streams.
func Execute(ctx context.Context, root *cobra.Command, args []string, env Env) error {
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	return root.ExecuteContext(ctx)
}

// Exit ends the process after a command's err: each line of the error on stderr prefixed with prog,
// and the exit code of an *ExitError, else 1. A nil err returns.
func Exit(prog string, err error) {
	if err == nil {
		return
	}
	code := 1
	var ee *ExitError
	if errors.As(err, &ee) {
		code = ee.Code
	}
	fmt.Fprintf(os.Stderr, "%s: %s\n", prog, strings.ReplaceAll(err.Error(), "\n", "\n"+prog+": "))
	os.Exit(code)
}
