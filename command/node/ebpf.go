package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shuntmesh/shunt/command/capture"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/ebpf/agent"
	"github.com/shuntmesh/shunt/redirect"
)

// Exit codes of `shunt ebpf`, for scripts and the agent's callers.
const (
	// ExitEBPFUnsupported: this kernel cannot run the eBPF data path; pods stay on iptables.
	ExitEBPFUnsupported = 3
	// ExitEBPFNotLoaded: nothing is loaded at the pin directory.
	ExitEBPFNotLoaded = 4
)

func newEBPFCmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ebpf",
		Short: "Load, inspect and unload the eBPF data path on this node",
		Long: "The eBPF data path redirects a meshed pod's connect(2) to its proxy and splices the loopback\n" +
			"legs between app and proxy with sk_msg, so bytes skip the TCP/IP stack. Inbound capture and\n" +
			"the rest stay with the iptables rules. Pods join with the annotation shunt.io/mode: ebpf (CNI\n" +
			"plugin) or with `shunt ebpf join`.",
	}
	var pinDir string
	cmd.PersistentFlags().StringVar(&pinDir, "pin-dir", shuntebpf.DefaultPinDir, "bpffs directory the programs and maps are pinned in")
	cmd.AddCommand(
		newEBPFLoadCmd(env, &pinDir),
		newEBPFRunCmd(env, &pinDir),
		newEBPFStatusCmd(env, &pinDir),
		newEBPFUnloadCmd(env, &pinDir),
		newEBPFJoinCmd(env, &pinDir),
		newEBPFLeaveCmd(env, &pinDir),
	)
	return cmd
}

// unsupported turns a kernel that cannot run the data path into exit code 3.
func unsupported(err error) error {
	if errors.Is(err, shuntebpf.ErrNotSupported) {
		return &capture.ExitError{Code: ExitEBPFUnsupported, Err: fmt.Errorf("%w; pods stay on iptables", err)}
	}
	return err
}

// openNode opens the loaded data path, exit code 4 when there is none.
func openNode(pinDir string) (*shuntebpf.Node, error) {
	node, err := shuntebpf.Open(pinDir)
	if errors.Is(err, shuntebpf.ErrNotLoaded) {
		return nil, &capture.ExitError{Code: ExitEBPFNotLoaded, Err: err}
	}
	return node, err
}

func newEBPFLoadCmd(env capture.Env, pinDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Check the kernel, load and attach the programs and pin them (idempotent); exit 3 when the kernel cannot",
		Args:  cobra.NoArgs,
	}
	cgroup := cmd.Flags().String("cgroup", "", "cgroup v2 directory to attach to (default: the root of the cgroup2 mount)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log := env.Logger("", false)
		if err := shuntebpf.Probe(); err != nil {
			return unsupported(err)
		}
		node, err := shuntebpf.Load(shuntebpf.Options{Cgroup: *cgroup, PinDir: *pinDir, Logger: log})
		if err != nil {
			return unsupported(err)
		}
		defer node.Close()
		_, err = fmt.Fprintf(env.Stdout, "eBPF data path loaded, pinned under %s\n", *pinDir)
		return err
	}
	return cmd
}

func newEBPFRunCmd(env capture.Env, pinDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Load the data path and keep it: health, metrics, and forgetting pods that are gone (the agent DaemonSet's container)",
		Args:  cobra.NoArgs,
	}
	var cfg agent.Config
	var logLevel, logFormat string
	fs := cmd.Flags()
	fs.StringVar(&cfg.Cgroup, "cgroup", "", "cgroup v2 directory to attach to (default: the root of the cgroup2 mount)")
	fs.StringVar(&cfg.HealthAddr, "health-addr", agent.DefaultHealthAddr, "address of /healthz, /readyz and /metrics; empty for none")
	fs.DurationVar(&cfg.GCInterval, "gc-interval", time.Minute, "how often pods whose network namespace is gone are dropped")
	fs.BoolVar(&cfg.UnloadOnStop, "unload-on-stop", false, "unload the data path on SIGTERM (default: leave it attached for the next agent)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if logFormat != "text" && logFormat != "json" {
			return &redirect.FieldError{Field: "--log-format", Value: logFormat, Err: errors.New("want text or json")}
		}
		if cfg.GCInterval <= 0 {
			return &redirect.FieldError{Field: "--gc-interval", Value: cfg.GCInterval.String(), Err: errors.New("must be above 0")}
		}
		cfg.PinDir = *pinDir
		cfg.Logger = env.Logger(logLevel, logFormat == "json")
		ctx, stop := capture.SignalContext(cmd.Context())
		defer stop()
		return unsupported(agent.Run(ctx, cfg))
	}
	return cmd
}

// ebpfStatus is `shunt ebpf status --json`.
type ebpfStatus struct {
	Loaded bool   `json:"loaded"`
	PinDir string `json:"pin_dir"`
	// OwnerIDs are the ids this kernel's programs judge a connection's owner by (ebpf.OwnerIDs):
	// "socket" as the owner match, or "task" before Linux 6.7.
	OwnerIDs string            `json:"owner_ids"`
	Pods     []ebpfStatusPod   `json:"pods"`
	Counters map[string]uint64 `json:"counters"`
}

type ebpfStatusPod struct {
	NetNSCookie uint64 `json:"netns_cookie"`
}

func newEBPFStatusCmd(env capture.Env, pinDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the data path's counters and registered pods; exit 4 when it is not loaded",
		Args:  cobra.NoArgs,
	}
	asJSON := cmd.Flags().Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		node, err := openNode(*pinDir)
		if err != nil {
			return err
		}
		defer node.Close()
		st, err := node.Stats()
		if err != nil {
			return err
		}
		cookies, err := node.Pods()
		if err != nil {
			return err
		}
		owner, err := shuntebpf.OwnerIDs()
		if err != nil {
			return err
		}
		out := ebpfStatus{Loaded: true, PinDir: *pinDir, OwnerIDs: owner, Pods: []ebpfStatusPod{}, Counters: agent.Counters(st)}
		for _, c := range cookies {
			out.Pods = append(out.Pods, ebpfStatusPod{NetNSCookie: c})
		}
		if *asJSON {
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}
		w := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(w, "pinned under\t%s\n", *pinDir)
		fmt.Fprintf(w, "owner ids\t%s\n", owner)
		fmt.Fprintf(w, "pods registered\t%d\n", len(cookies))
		for _, name := range agent.CounterNames {
			fmt.Fprintf(w, "%s\t%d\n", name, out.Counters[name])
		}
		return w.Flush()
	}
	return cmd
}

func newEBPFUnloadCmd(env capture.Env, pinDir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "unload",
		Short: "Detach the programs and remove every pin (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := shuntebpf.Unload(*pinDir); err != nil {
				return err
			}
			_, err := fmt.Fprintf(env.Stdout, "eBPF data path unloaded from %s\n", *pinDir)
			return err
		},
	}
}

// netnsAlias lets --netns stand for --network-namespace.
func netnsAlias(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	if name == "netns" {
		name = "network-namespace"
	}
	return pflag.NormalizedName(name)
}

func newEBPFJoinCmd(env capture.Env, pinDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "join --netns PATH [capture flags]",
		Short: "Register a pod's network namespace with the data path (iptables rules are `shunt iptables`'s job)",
		Long: "Register the pod whose network namespace is at --netns (alias of --network-namespace) with the\n" +
			"loaded data path. The capture settings are the outbound ones of `shunt iptables`' rule flags and\n" +
			"environment variables (or --pod): inbound capture stays with the iptables rules, and its flags are\n" +
			"refused here; the pod's addresses are read from the namespace unless --pod-ip is given. The flags of\n" +
			"`shunt iptables` that choose what it does (--dry-run, --cleanup-only, --force-apply, ...) are not\n" +
			"accepted: join always registers.",
		Args: cobra.NoArgs,
	}
	f := capture.NewDataPathFlags(cmd.Flags())
	cmd.Flags().SetNormalizeFunc(netnsAlias)
	if err := cmd.MarkFlagRequired("network-namespace"); err != nil {
		panic(err)
	}
	noSkMsg := cmd.Flags().Bool("no-sk-msg", false, "do not splice the pod's loopback sockets with sk_msg (receivers that read with splice(2))")
	podIPs := cmd.Flags().StringSlice("pod-ip", nil, "the pod's addresses (default: the global addresses in the namespace)")
	var ips []netip.Addr
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if f.NetNS() == "" {
			return errors.New("--netns: the pod's network namespace is required")
		}
		for _, s := range *podIPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return &redirect.FieldError{Field: "--pod-ip", Value: s, Err: errors.New("not an IP address")}
			}
			ips = append(ips, a)
		}
		return f.Prepare(env.Getenv)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log := f.Logger(env)
		cfg, err := f.Config(env)
		if err != nil {
			return err
		}
		if ips == nil {
			if ips, err = agent.NetNSAddrs(f.NetNS()); err != nil {
				return err
			}
		}
		cookie, err := shuntebpf.NetNSCookie(f.NetNS())
		if err != nil {
			return err
		}
		pod, err := shuntebpf.PodFromConfig(cookie, &cfg, ips)
		if err != nil {
			return err
		}
		pod.NoSockMsg = *noSkMsg
		if pod.UserNamespaced, err = shuntebpf.NetNSUserNamespaced(f.NetNS()); err != nil {
			return err
		}
		node, err := openNode(*pinDir)
		if err != nil {
			return err
		}
		defer node.Close()
		if err := node.AddPod(pod); err != nil {
			return err
		}
		log.Debug("pod joined", "netns", f.NetNS(), "netns_cookie", cookie, "ips", fmt.Sprint(pod.IPs),
			"proxy_port", pod.ProxyPort, "inbound_port", pod.InboundPort, "sk_msg", !pod.NoSockMsg)
		_, err = fmt.Fprintf(env.Stdout, "joined: %s (netns cookie %d)\n", f.NetNS(), cookie)
		return err
	}
	return cmd
}

func newEBPFLeaveCmd(env capture.Env, pinDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "leave --netns PATH",
		Short: "Remove a pod's network namespace from the data path (idempotent)",
		Args:  cobra.NoArgs,
	}
	netns := cmd.Flags().String("netns", "", "the pod's network namespace (required)")
	if err := cmd.MarkFlagRequired("netns"); err != nil {
		panic(err)
	}
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if *netns == "" {
			return errors.New("--netns: the pod's network namespace is required")
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cookie, err := shuntebpf.NetNSCookie(*netns)
		if err != nil {
			return err
		}
		node, err := openNode(*pinDir)
		if err != nil {
			return err
		}
		defer node.Close()
		if err := node.RemovePod(cookie); err != nil {
			return err
		}
		_, err = fmt.Fprintf(env.Stdout, "left: %s (netns cookie %d)\n", *netns, cookie)
		return err
	}
	return cmd
}
