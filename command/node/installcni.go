package node

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/install"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/redirect"
)

// installCNIFlags are install-cni's flags; each may also be set by its environment variable.
type installCNIFlags struct {
	fs *pflag.FlagSet

	binDir, netDir, binary, shimBinary  string
	serveCNI                            bool
	kubeconfigFile, hostKubeconfig      string
	tokenFile, caFile, apiServer        string
	kubeconfig, nodeName, taintKey      string
	pluginLogLevel, pluginLogFile       string
	excludeNamespaces                   []string
	apiTimeout                          time.Duration
	iptablesVariant, backend            string
	reportSocket, hostReportSocket      string
	agentSocket                         string
	ebpfPinDir                          string
	stateDir                            string
	auditInterval                       time.Duration
	driftRepair                         string
	migratePods                         bool
	podName, podNamespace               string
	healthAddr                          string
	monitoringPort                      int
	repairMode, repairLabel, repairInit string
	repairExitCode                      int64
	repairGrace                         time.Duration
	fightThreshold                      int
	fightWindow, fightBackoff, fightMax time.Duration
	resync                              time.Duration
	logFormat, logLevel                 string
}

func newInstallCNICmd(env capture.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugin on this node and keep it installed (the CNI DaemonSet's container)",
		Long: "Copy the plugin's shim into the host's CNI bin directory as shunt-cni and this binary beside it as\n" +
			"shunt-cni-standalone (without a shim, this binary as shunt-cni), append the plugin's entry to the\n" +
			"primary network's conflist, write its kubeconfig, and keep them in place until SIGTERM, when they are\n" +
			"removed and the conflist restored. Runs the shim's ADD, CHECK and DEL for the node's pods (the pods\n" +
			"from one watch of the node), serves /healthz, /readyz and /metrics, removes the node's startup taint\n" +
			"once ready, audits the pods' rules, and repairs pods that started without capture rules: those whose\n" +
			"validation init container says so, and the meshed pods that started, without the plugin, before it\n" +
			"was ready.\n\n" +
			"Every flag can be set by its environment variable instead: upper case, dashes as underscores\n" +
			"(--cni-net-dir: CNI_NET_DIR, --node-name: NODE_NAME).",
		Args: cobra.NoArgs,
	}
	f := &installCNIFlags{fs: cmd.Flags()}
	fs := f.fs
	fs.StringVar(&f.binDir, "cni-bin-dir", install.DefaultBinDir, "host CNI bin directory, as mounted")
	fs.StringVar(&f.netDir, "cni-net-dir", install.DefaultNetDir, "host CNI config directory, as mounted")
	fs.StringVar(&f.binary, "binary", "", "the standalone plugin: installed as shunt-cni-standalone beside the shim, or as shunt-cni without one (default: this executable)")
	fs.StringVar(&f.shimBinary, "shim", "", "the shim installed as shunt-cni, which hands each command to this agent (default: shunt-cni beside this executable, if there)")
	fs.BoolVar(&f.serveCNI, "serve-cni", true, "run the shim's ADD, CHECK and DEL in this agent, on --agent-socket (needs NET_ADMIN, NET_RAW and SYS_ADMIN; without them the shim runs the standalone plugin)")
	fs.StringVar(&f.kubeconfigFile, "kubeconfig-file", install.DefaultKubeconfigName, "where to write the plugin's kubeconfig; a bare file name is taken in --cni-net-dir")
	fs.StringVar(&f.hostKubeconfig, "host-kubeconfig-path", cni.DefaultKubeconfig, "the plugin's kubeconfig as the host sees it, put in the conflist entry")
	fs.StringVar(&f.tokenFile, "token-file", install.DefaultTokenFile, "service-account token put in the plugin's kubeconfig")
	fs.StringVar(&f.caFile, "ca-file", install.DefaultCAFile, "cluster CA put in the plugin's kubeconfig; empty for none")
	fs.StringVar(&f.apiServer, "api-server", "", "API server URL for the plugin (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the installer's own API access (default: in-cluster)")
	fs.StringVar(&f.nodeName, "node-name", "", "this node's name (required)")
	fs.StringVar(&f.taintKey, "taint-key", install.DefaultTaintKey, "NoSchedule taint removed from the node once the plugin is ready")
	fs.StringVar(&f.pluginLogLevel, "cni-log-level", "info", "plugin's log level: debug, info, warn or error")
	fs.StringVar(&f.pluginLogFile, "cni-log-file", cni.DefaultLogFile, "plugin's log file on the host")
	fs.StringSliceVar(&f.excludeNamespaces, "exclude-namespaces", cni.DefaultExcludeNamespaces, "namespaces the plugin never captures; empty for none")
	fs.DurationVar(&f.apiTimeout, "cni-api-timeout", cni.DefaultAPITimeout, "bound of the plugin's read of a pod")
	fs.StringVar(&f.backend, "backend", cni.BackendIptables, "rules the plugin programs in pods: iptables, or nftables (Istio's native nftables tables, over netlink)")
	fs.StringVar(&f.iptablesVariant, "iptables-variant", "", "iptables the plugin uses: nft or legacy (default: detected per pod)")
	fs.StringVar(&f.reportSocket, "report-socket", cni.DefaultReportSocket, "datagram socket the plugin reports to, as mounted")
	fs.StringVar(&f.hostReportSocket, "host-report-socket", "", "the report socket as the host sees it (default: --report-socket)")
	fs.StringVar(&f.agentSocket, "agent-socket", cni.DefaultAgentSocket, "socket the plugin asks for pods, answered from one watch of the node's pods (the same path on the host and here); empty for none")
	fs.StringVar(&f.podName, "pod-name", "", "this installer's pod name (the chart sets $POD_NAME): the plugin lets this DaemonSet's pods through unmeshed while the API server cannot be reached")
	fs.StringVar(&f.podNamespace, "pod-namespace", "", "this installer's pod namespace (the chart sets $POD_NAMESPACE)")
	fs.StringVar(&f.ebpfPinDir, "ebpf-pin-dir", cni.DefaultEBPFPinDir, "bpffs directory of the node's eBPF agent, where the plugin registers pods annotated shunt.io/mode: ebpf")
	fs.StringVar(&f.stateDir, "state-dir", podstate.DefaultDir, "where the plugin records the pods it captures (the same path on the host and here)")
	fs.BoolVar(&f.migratePods, "migrate-pods", false, "once installed, move every running pod the plugin recorded to the backend new pods get (--backend, --iptables-variant), with no capture gap; needs NET_ADMIN, NET_RAW and SYS_ADMIN")
	fs.DurationVar(&f.auditInterval, "audit-interval", install.DefaultAuditInterval, "check every recorded pod's capture rules this often (at start too); 0 disables the drift audit; needs NET_ADMIN, NET_RAW and SYS_ADMIN")
	fs.StringVar(&f.driftRepair, "drift-repair", install.DriftReconcile, "what the audit does with a pod whose rules drifted: reconcile (put them back, atomically), label, delete or off (report only)")
	fs.StringVar(&f.healthAddr, "health-addr", install.DefaultHealthAddr, "address of /healthz, /readyz and /metrics; empty for none")
	fs.IntVar(&f.monitoringPort, "monitoring-port", 0, "port of /healthz, /readyz and /metrics on all addresses: --health-addr=:PORT")
	fs.StringVar(&f.repairMode, "repair-mode", install.RepairDelete, "what to do with pods started without capture rules: delete, label or off")
	fs.StringVar(&f.repairLabel, "repair-label-key", install.DefaultRepairLabelKey, "label set to \"needed\" in label mode")
	fs.StringVar(&f.repairInit, "repair-init-container", install.DefaultRepairInitContainer, "validation init container whose exit code marks a pod without rules")
	fs.Int64Var(&f.repairExitCode, "repair-exit-code", install.DefaultRepairExitCode, "that init container's exit code when capture does not work")
	fs.DurationVar(&f.repairGrace, "repair-grace", install.DefaultRepairGrace, "once the plugin is ready, wait this long before repairing the meshed pods that started without it (no record of the plugin's, started after the state directory's marker)")
	fs.IntVar(&f.fightThreshold, "fight-threshold", install.DefaultFightThreshold, "losses of our conflist entry in a row before backing off")
	fs.DurationVar(&f.fightWindow, "fight-window", install.DefaultFightWindow, "a loss within this time of putting the entry back continues a row")
	fs.DurationVar(&f.fightBackoff, "fight-backoff", install.DefaultFightBackoff, "first wait before putting the entry back, doubling per loss")
	fs.DurationVar(&f.fightMax, "fight-backoff-max", install.DefaultFightBackoffMax, "longest wait before putting the entry back")
	fs.DurationVar(&f.resync, "resync-interval", install.DefaultResync, "check everything this often, file events or not")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	// --monitoring-port is --health-addr=:PORT, as Istio's install-cni spells it.
	cmd.MarkFlagsMutuallyExclusive("health-addr", "monitoring-port")
	// Marked for help and completion; prepare says it with the environment variable first.
	if err := cmd.MarkFlagRequired("node-name"); err != nil {
		panic(err)
	}
	cmd.PreRunE = func(*cobra.Command, []string) error { return f.prepare(env.Getenv) }
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return runInstallCNI(cmd, env, f) }
	return cmd
}

// applyEnv sets each flag not given from its environment variable.
func (f *installCNIFlags) applyEnv(getenv func(string) string) error {
	var errs []error
	f.fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed {
			return
		}
		name := strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v := getenv(name); v != "" {
			if err := f.fs.Set(fl.Name, v); err != nil {
				errs = append(errs, &redirect.FieldError{Field: "$" + name, Value: v, Err: err})
			}
		}
	})
	if f.apiServer == "" {
		if host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT"); host != "" && port != "" {
			f.apiServer = "https://" + net.JoinHostPort(host, port)
		}
	}
	return errors.Join(errs...)
}

// prepare fills the flags not given from their environment variables (which then count as given) and
// refuses bad values and flags the others make pointless, all at once, before anything is done.
func (f *installCNIFlags) prepare(getenv func(string) string) error {
	if err := f.applyEnv(getenv); err != nil {
		return err
	}
	var errs []error
	bad := func(field, value, want string) {
		errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: errors.New(want)})
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		bad("--log-format", f.logFormat, "must be text or json")
	}
	if _, err := cni.ParseLogLevel(f.logLevel); err != nil {
		bad("--log-level", f.logLevel, err.Error())
	}
	switch f.repairMode {
	case install.RepairDelete, install.RepairLabel, install.RepairOff:
	default:
		bad("--repair-mode", f.repairMode, "must be delete, label or off")
	}
	if f.fs.Changed("repair-label-key") && f.repairMode != install.RepairLabel {
		bad("--repair-label-key", f.repairLabel, "only with --repair-mode=label")
	}
	for _, name := range []string{"repair-init-container", "repair-exit-code", "repair-grace"} {
		if f.fs.Changed(name) && f.repairMode == install.RepairOff {
			bad("--"+name, f.fs.Lookup(name).Value.String(), "not with --repair-mode=off: nothing is repaired")
		}
	}
	if f.repairGrace < 0 {
		bad("--repair-grace", f.repairGrace.String(), "must not be negative")
	}
	if f.fs.Changed("host-report-socket") && f.reportSocket == "" {
		bad("--host-report-socket", f.hostReportSocket, "only with a --report-socket: no reports are read without one")
	}
	if f.fs.Changed("serve-cni") && f.serveCNI && f.agentSocket == "" {
		bad("--serve-cni", "true", "needs an --agent-socket: the shim hands commands to it")
	}
	if f.fs.Changed("shim") && f.shimBinary == "" {
		bad("--shim", "", "not a file")
	}
	if f.agentSocket != "" && !filepath.IsAbs(f.agentSocket) {
		bad("--agent-socket", f.agentSocket, "not an absolute path: the plugin, on the host, reads it too")
	}
	if _, err := cni.ParseLogLevel(f.pluginLogLevel); err != nil {
		bad("--cni-log-level", f.pluginLogLevel, err.Error())
	}
	switch f.iptablesVariant {
	case "", "nft", "legacy":
	default:
		bad("--iptables-variant", f.iptablesVariant, "must be nft, legacy or empty")
	}
	switch f.backend {
	case cni.BackendIptables:
	case cni.BackendNFTables:
		if f.iptablesVariant != "" {
			bad("--iptables-variant", f.iptablesVariant, "the nftables backend uses no iptables: leave it empty")
		}
	default:
		bad("--backend", f.backend, "must be iptables or nftables")
	}
	if f.monitoringPort < 0 || f.monitoringPort > 65535 {
		bad("--monitoring-port", fmt.Sprint(f.monitoringPort), "not a port")
	} else if f.monitoringPort > 0 {
		f.healthAddr = fmt.Sprintf(":%d", f.monitoringPort)
	}
	if f.kubeconfigFile != "" && !strings.ContainsRune(f.kubeconfigFile, filepath.Separator) {
		f.kubeconfigFile = filepath.Join(f.netDir, f.kubeconfigFile)
	}
	switch f.driftRepair {
	case install.DriftReconcile, install.DriftLabel, install.DriftDelete, install.DriftOff:
		if f.fs.Changed("drift-repair") && f.auditInterval == 0 {
			bad("--drift-repair", f.driftRepair, "not with --audit-interval=0: there is no audit")
		}
	default:
		bad("--drift-repair", f.driftRepair, "must be reconcile, label, delete or off")
	}
	if f.auditInterval < 0 {
		bad("--audit-interval", f.auditInterval.String(), "must not be negative")
	}
	if f.driftRepair == install.DriftLabel && f.fs.Changed("repair-label-key") && f.repairMode != install.RepairLabel {
		// The label key is shared: allowed with --drift-repair=label too.
		errs = slices.DeleteFunc(errs, func(e error) bool { return strings.HasPrefix(e.Error(), "--repair-label-key:") })
	}
	if !filepath.IsAbs(f.stateDir) {
		bad("--state-dir", f.stateDir, "not an absolute path")
	}
	if f.nodeName == "" {
		bad("--node-name", "", "required (or $NODE_NAME, from the downward API)")
	}
	if f.apiServer == "" {
		bad("--api-server", "", "required outside a pod (no $KUBERNETES_SERVICE_HOST)")
	} else if !strings.Contains(f.apiServer, "://") {
		f.apiServer = "https://" + f.apiServer
	}
	return errors.Join(errs...)
}

// runInstallCNI runs the installer with the flags prepare accepted.
func runInstallCNI(cmd *cobra.Command, env capture.Env, f *installCNIFlags) error {
	log := env.Logger(f.logLevel, f.logFormat == "json")

	var restCfg *rest.Config
	var err error
	if f.kubeconfig != "" {
		restCfg, err = clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	} else {
		restCfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("API access (--kubeconfig): %w", err)
	}
	restCfg.UserAgent = "shunt-install-cni"
	client, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	hostSocket := f.hostReportSocket
	if hostSocket == "" && f.reportSocket != "" {
		// The plugin runs elsewhere: a relative path means nothing to it.
		if hostSocket, err = filepath.Abs(f.reportSocket); err != nil {
			return err
		}
	}
	in, err := install.New(install.Config{
		Binary:         f.binary,
		Shim:           f.shimBinary,
		ServeCNI:       f.serveCNI && f.agentSocket != "",
		BinDir:         f.binDir,
		NetDir:         f.netDir,
		KubeconfigFile: f.kubeconfigFile,
		TokenFile:      f.tokenFile,
		CAFile:         f.caFile,
		APIServer:      f.apiServer,
		Entry: install.Entry{
			Kubeconfig:        f.hostKubeconfig,
			LogLevel:          f.pluginLogLevel,
			LogFile:           f.pluginLogFile,
			ExcludeNamespaces: f.excludeNamespaces,
			APITimeout:        f.apiTimeout,
			Backend:           f.backend,
			IptablesVariant:   f.iptablesVariant,
			ReportSocket:      hostSocket,
			EBPFPinDir:        f.ebpfPinDir,
			AgentSocket:       f.agentSocket,
			StateDir:          f.stateDir,
			AgentNamespace:    f.podNamespace,
			AgentPodPrefix:    daemonSetPrefix(f.podName),
		},
		ReportSocket: f.reportSocket,
		AgentSocket:  f.agentSocket,
		HealthAddr:   f.healthAddr,
		Client:       client,
		NodeName:     f.nodeName,
		TaintKey:     f.taintKey,
		MigratePods:  f.migratePods,
		Audit:        install.AuditConfig{Interval: f.auditInterval, Repair: f.driftRepair},
		Repair: install.RepairConfig{
			Mode:          f.repairMode,
			LabelKey:      f.repairLabel,
			InitContainer: f.repairInit,
			ExitCode:      f.repairExitCode,
			Grace:         f.repairGrace,
		},
		Resync:          f.resync,
		FightWindow:     f.fightWindow,
		FightThreshold:  f.fightThreshold,
		FightBackoff:    f.fightBackoff,
		FightBackoffMax: f.fightMax,
		Logger:          log,
	})
	if err != nil {
		return err
	}
	ctx, stop := capture.SignalContext(cmd.Context())
	defer stop()
	log.Info("install-cni starting", "node", f.nodeName, "cni_bin_dir", f.binDir, "cni_net_dir", f.netDir,
		"api_server", f.apiServer, "repair_mode", f.repairMode)
	return in.Run(ctx)
}

// daemonSetPrefix is the name prefix of a DaemonSet's pods, from one pod's name: "shunt-cni-7xk2p" gives
// "shunt-cni-". A name without a dash gives "" (no prefix is written, and the plugin has no rule).
func daemonSetPrefix(podName string) string {
	i := strings.LastIndex(podName, "-")
	if i <= 0 {
		return ""
	}
	return podName[:i+1]
}
