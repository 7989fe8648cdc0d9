package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/redirect"
)

// SupportedVersions are the CNI spec versions the plugin answers VERSION with.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// errPluginNotAvailable is the CNI 1.1 STATUS code for a plugin that cannot service ADDs.
const errPluginNotAvailable uint = 50

// maxLogSize is the size past which the plugin's log file is rotated (to LogFile + ".1").
const maxLogSize = 10 << 20

// Plugin runs the CNI commands. The zero value reads pods from the API server and programs the kernel;
// the fields replace those side effects in tests (backendtest.Fake for the backend seam).
type Plugin struct {
	// GetPod reads the pod namespace/name (uid: the runtime's K8S_POD_UID) and says where from
	// (PodSourceAgent, PodSourceAPI); nil asks the node agent at the NetConf's agent_socket, or, when
	// it cannot be reached, the API server with the NetConf's kubeconfig.
	GetPod func(ctx context.Context, conf *NetConf, namespace, name, uid string) (*Pod, string, error)
	// Backends selects the backend of a pod's namespace; nil is backend.Select.
	Backends func(backend.Settings) (backend.Backend, backend.Choice, error)
	// Cleanup removes everything of shunt's from a namespace, whichever backend holds it; nil is
	// backend.Cleanup.
	Cleanup func(context.Context, backend.Scope) ([]string, error)
	// Layer returns the data path layered on the rules of the NetConf's pods; nil is the eBPF agent's
	// maps pinned in its ebpf_pin_dir.
	Layer func(conf *NetConf) DataPathLayer
	// Logger, when set, is used instead of the NetConf's log file.
	Logger *slog.Logger
	// Stdout receives the command's CNI result; nil is os.Stdout. The node agent, which runs commands
	// in its own process for the shim (see Run), sets it.
	Stdout io.Writer
	// InAgent says the node agent runs the command (Report.InAgent).
	InAgent bool
}

// DataPathLayer is a data path stacked on a pod's rules, as the eBPF agent's maps are: the rules stay
// underneath, for what the layer does not take and as the safety net when it is gone.
type DataPathLayer interface {
	// Register adds the pod; it fails when the layer cannot take it (no agent, a kernel without the
	// features), and the pod then stays on its rules alone.
	Register(pod EBPFPod) error
	// Unregister removes the pod whose namespace is at netns, if the layer holds it.
	Unregister(netns string) error
}

func (p *Plugin) backendFor(inv *invocation) (backend.Backend, error) {
	sel := p.Backends
	if sel == nil {
		sel = backend.Select
	}
	b, choice, err := sel(backend.Settings{
		NetNS:           inv.args.Netns,
		NativeNFTables:  inv.conf.Backend == BackendNFTables,
		IptablesVariant: inv.conf.IptablesVariant,
		Logger:          inv.log,
	})
	if err != nil {
		return nil, err
	}
	inv.log.Debug("backend chosen", "backend", choice.Backend, "reason", choice.Reason)
	return b, nil
}

func (p *Plugin) layer(conf *NetConf) DataPathLayer {
	if p.Layer == nil {
		return ebpfLayer{pinDir: conf.EBPFPinDir}
	}
	return p.Layer(conf)
}

// Main runs the plugin as a CNI runtime executes it: the command in CNI_COMMAND, the configuration on
// stdin, the result on stdout. It exits the process.
func Main() {
	var p Plugin
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.CmdAdd,
		Check:  p.CmdCheck,
		Del:    p.CmdDel,
		GC:     p.CmdGC,
		Status: p.CmdStatus,
	}, SupportedVersions, "shunt-cni: programs a meshed pod's traffic capture rules")
}

// k8sArgs are the CNI_ARGS Kubernetes runtimes pass.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // named by the runtime
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// invocation is one command's parsed input.
type invocation struct {
	args      *skel.CmdArgs
	conf      *NetConf
	namespace string
	name      string
	uid       string
	log       *slog.Logger
	closeLog  func()
	start     time.Time
	report    Report
}

func (p *Plugin) begin(command string, args *skel.CmdArgs) (*invocation, error) {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt-cni configuration", err.Error())
	}
	var ka k8sArgs
	ka.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	inv := &invocation{
		args:      args,
		conf:      conf,
		namespace: string(ka.K8S_POD_NAMESPACE),
		name:      string(ka.K8S_POD_NAME),
		uid:       string(ka.K8S_POD_UID),
		start:     time.Now(),
		closeLog:  func() {},
	}
	inv.log = p.Logger
	if inv.log == nil {
		inv.log, inv.closeLog = fileLogger(conf)
	}
	inv.log = inv.log.With("command", command, "container_id", args.ContainerID, "pod", inv.pod())
	inv.report = Report{Command: command, Namespace: inv.namespace, Name: inv.name, UID: inv.uid, ContainerID: args.ContainerID, InAgent: p.InAgent}
	return inv, nil
}

// finish logs and reports the outcome of a command and returns err.
func (inv *invocation) finish(outcome, reason string, err error) error {
	inv.report.Outcome = outcome
	inv.report.Reason = reason
	inv.report.TotalSeconds = time.Since(inv.start).Seconds()
	attrs := []any{"outcome", outcome, "duration", time.Since(inv.start)}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	if err != nil {
		inv.log.Error("command failed", append(attrs, "error", err.Error())...)
	} else {
		inv.log.Info("command done", attrs...)
	}
	if serr := SendReport(inv.conf.ReportSocket, inv.report); serr != nil && !errors.Is(serr, os.ErrNotExist) {
		inv.log.Debug("report not delivered", "socket", inv.conf.ReportSocket, "error", serr.Error())
	}
	inv.closeLog()
	return err
}

func (inv *invocation) pod() string {
	if inv.name == "" {
		return ""
	}
	return inv.namespace + "/" + inv.name
}

// CmdAdd programs the pod's capture rules in its network namespace, or leaves a pod that is not
// meshed alone, and passes the previous plugin's result through. When a pod must be captured and its
// rules cannot be programmed, it fails: the pod must not start unmeshed.
func (p *Plugin) CmdAdd(args *skel.CmdArgs) error {
	inv, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	prev, err := prevResult(inv.conf)
	if err != nil {
		return inv.finish(OutcomeFailed, "no usable prevResult", err)
	}
	pp, skip, err := p.plan(inv, prev)
	if err != nil {
		return inv.finish(OutcomeFailed, "", err)
	}
	if skip != "" {
		inv.forget()
		return inv.finish(OutcomeSkipped, skip, p.printResult(prev, inv.conf.CNIVersion))
	}
	t := time.Now()
	var programmed string
	err = p.program(inv, pp, func(b backend.Backend, plan *redirect.Plan) error {
		programmed = b.Name()
		return b.Apply(context.Background(), plan, backend.Mode{Reconcile: true})
	})
	if err == nil && pp.dataPath.EBPF {
		p.joinEBPF(inv, pp)
	}
	inv.report.ProgramSeconds = time.Since(t).Seconds()
	if err != nil {
		return inv.finish(OutcomeFailed, "programming failed", types.NewError(types.ErrInternal,
			fmt.Sprintf("pod %s: program capture rules", inv.pod()), err.Error()))
	}
	inv.remember(pp, programmed)
	return inv.finish(OutcomeProgrammed, "", p.printResult(prev, inv.conf.CNIVersion))
}

// printResult writes res, converted to the configuration's CNI version, to the plugin's stdout.
func (p *Plugin) printResult(res types.Result, cniVersion string) error {
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return err
	}
	w := p.Stdout
	if w == nil {
		w = os.Stdout
	}
	return out.PrintTo(w)
}

// remember records the pod ADD captured for the node agent. The pod is captured whether or not the
// record is written: a failure is logged, and the agent then does not know the pod (no node-wide
// migration or audit of it) until its next ADD.
func (inv *invocation) remember(pp *podPlan, backendName string) {
	rec := podstate.Record{
		ContainerID: inv.args.ContainerID, NetNS: inv.args.Netns,
		Namespace: inv.namespace, Name: inv.name, UID: inv.uid,
		Backend: backendName, Config: pp.config, Updated: time.Now().UTC(),
	}
	if inv.report.DataPath == "ebpf" {
		rec.EBPF, rec.EBPFPinDir, rec.IPs, rec.SockMsg = true, inv.conf.EBPFPinDir, pp.ips, pp.dataPath.SockMsg
	}
	if err := (podstate.Store{Dir: inv.conf.StateDir}).Put(rec); err != nil {
		inv.log.Warn("could not record the pod for the node agent", "state_dir", inv.conf.StateDir, "error", err.Error())
	}
}

// forget removes the record of the sandbox, if any: its pod is no longer captured by us.
func (inv *invocation) forget() {
	if err := (podstate.Store{Dir: inv.conf.StateDir}).Delete(inv.args.ContainerID); err != nil {
		inv.log.Warn("could not remove the pod's record", "state_dir", inv.conf.StateDir, "error", err.Error())
	}
}

// joinEBPF registers an eBPF pod with the node's agent. The iptables rules are in place already, so a
// node that cannot (no agent loaded, a kernel without the features) leaves the pod on iptables, with a
// warning: it is captured either way.
func (p *Plugin) joinEBPF(inv *invocation, pp *podPlan) {
	pod := EBPFPod{NetNS: inv.args.Netns, Config: pp.config, IPs: pp.ips, SockMsg: pp.dataPath.SockMsg}
	if err := p.layer(inv.conf).Register(pod); err != nil {
		inv.log.Warn("eBPF data path unavailable, the pod stays on iptables", "pod", inv.pod(), "error", err.Error())
		inv.report.DataPath = "iptables"
		return
	}
	inv.report.DataPath = "ebpf"
}

func (p *Plugin) CmdCheck(args *skel.CmdArgs) error {
	inv, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	prev, err := prevResult(inv.conf)
	if err != nil {
		return inv.finish(OutcomeCheckFailed, "no usable prevResult", err)
	}
	pp, skip, err := p.plan(inv, prev)
	if err != nil {
		return inv.finish(OutcomeCheckFailed, "", err)
	}
	if skip != "" {
		return inv.finish(OutcomeChecked, skip, nil)
	}
	t := time.Now()
	err = p.program(inv, pp, func(b backend.Backend, plan *redirect.Plan) error {
		return b.Check(context.Background(), plan)
	})
	inv.report.ProgramSeconds = time.Since(t).Seconds()
	if err != nil {
		return inv.finish(OutcomeCheckFailed, "rules differ from the plan", types.NewError(types.ErrInternal,
			fmt.Sprintf("pod %s: capture rules differ from the plan", inv.pod()), err.Error()))
	}
	return inv.finish(OutcomeChecked, "", nil)
}

// CmdDel removes our rules from the pod's namespace when it still exists. A namespace that is gone
// (or was never given) has nothing left to remove, so DEL succeeds, also when repeated.
func (p *Plugin) CmdDel(args *skel.CmdArgs) error {
	inv, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	inv.forget()
	if args.Netns == "" {
		return inv.finish(OutcomeRemoved, "no network namespace", nil)
	}
	if _, err := os.Stat(args.Netns); errors.Is(err, os.ErrNotExist) {
		return inv.finish(OutcomeRemoved, "network namespace is gone", nil)
	}
	cleanup := p.Cleanup
	if cleanup == nil {
		cleanup = backend.Cleanup
	}
	t := time.Now()
	// Every pod's namespace may have been registered (the annotation may have changed since ADD):
	// leaving is idempotent, and a node without an agent has nothing to leave.
	if err := p.layer(inv.conf).Unregister(args.Netns); err != nil {
		inv.log.Warn("could not remove the pod from the eBPF agent", "pod", inv.pod(), "error", err.Error())
	}
	// Every backend is cleaned, not only the NetConf's: the backend may have changed since ADD.
	removed, err := cleanup(context.Background(), backend.Scope{NetNS: args.Netns, Logger: inv.log})
	for _, r := range removed {
		inv.log.Debug(r)
	}
	inv.report.ProgramSeconds = time.Since(t).Seconds()
	if err != nil {
		if _, serr := os.Stat(args.Netns); errors.Is(serr, os.ErrNotExist) {
			return inv.finish(OutcomeRemoved, "network namespace went away", nil)
		}
		return inv.finish(OutcomeFailed, "cleanup failed", types.NewError(types.ErrInternal,
			fmt.Sprintf("pod %s: remove capture rules", inv.pod()), err.Error()))
	}
	return inv.finish(OutcomeRemoved, "", nil)
}

// CmdGC removes the records of sandboxes the runtime no longer holds (not among the configuration's
// valid attachments). Rules live in the sandboxes' namespaces, which go with them.
func (p *Plugin) CmdGC(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt-cni configuration", err.Error())
	}
	store := podstate.Store{Dir: conf.StateDir}
	recs, err := store.List()
	valid := make(map[string]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a.ContainerID] = true
	}
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range recs {
		if !valid[r.ContainerID] {
			errs = append(errs, store.Delete(r.ContainerID))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "remove records of sandboxes that are gone", err.Error())
	}
	return nil
}

// CmdStatus reports the plugin not ready while its kubeconfig is missing or unreadable: ADDs of
// meshed pods would fail.
func (p *Plugin) CmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid shunt-cni configuration", err.Error())
	}
	if err := checkKubeconfig(conf.Kubeconfig); err != nil {
		return types.NewError(errPluginNotAvailable, "shunt-cni is not ready", err.Error())
	}
	return nil
}

// plan decides whether the pod is captured and with which rules. skip is the reason it is not.
// podPlan is what ADD programs for a pod.
type podPlan struct {
	config   redirect.Config
	ips      []netip.Addr
	dataPath DataPath
}

func (p *Plugin) plan(inv *invocation, prev *types100.Result) (pp *podPlan, skip string, err error) {
	if inv.name == "" || inv.namespace == "" {
		return nil, "not a Kubernetes pod (no K8S_POD_NAME or K8S_POD_NAMESPACE in CNI_ARGS)", nil
	}
	if slices.Contains(inv.conf.ExcludeNamespaces, inv.namespace) {
		return nil, "namespace " + inv.namespace + " is excluded", nil
	}
	if ann := inv.conf.RuntimeConfig.PodAnnotations; ann != nil {
		if _, ok := ann[meshpod.AnnotationStatus]; !ok {
			return nil, "no " + meshpod.AnnotationStatus + " annotation: not injected", nil
		}
	}
	getPod := p.GetPod
	if getPod == nil {
		getPod = readPod
	}
	t := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), inv.conf.Timeout())
	pod, source, err := getPod(ctx, inv.conf, inv.namespace, inv.name, inv.uid)
	cancel()
	inv.report.APISeconds = time.Since(t).Seconds()
	inv.report.PodSource = source
	inv.log.Debug("pod read", "source", source, "duration", time.Since(t))
	if err != nil {
		if inv.isAgentPod() {
			return nil, "the node agent's own pod, while the API server cannot be reached", nil
		}
		from := "the API server"
		if source == PodSourceAgent {
			from = "the node agent"
		}
		return nil, "", types.NewError(types.ErrTryAgainLater, fmt.Sprintf("pod %s: read the pod from %s", inv.pod(), from), err.Error())
	}
	ips := podIPs(prev)
	d, err := meshpod.Decide(pod, ips)
	for _, w := range d.Warnings {
		inv.log.Warn("pod setting ignored, as istio-cni ignores it", "warning", w)
	}
	if d.Skip != "" {
		return nil, d.Skip, nil
	}
	cfg := d.Config
	dp, dpErr := DataPathForPod(pod.Metadata.Annotations)
	if err = errors.Join(err, dpErr); err != nil {
		return nil, "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("pod %s: invalid capture settings", inv.pod()), err.Error())
	}
	inv.log.Debug("pod decided", "ipv6", cfg.IPv6, "mode", string(cfg.Mode), "ebpf", dp.EBPF)
	return &podPlan{config: cfg, ips: ips, dataPath: dp}, "", nil
}

// program selects the pod's backend, builds its plan and hands both to do.
func (p *Plugin) program(inv *invocation, pp *podPlan, do func(backend.Backend, *redirect.Plan) error) error {
	b, err := p.backendFor(inv)
	if err != nil {
		return err
	}
	plan, err := b.Plan(pp.config)
	if err != nil {
		return fmt.Errorf("plan capture rules: %w", err)
	}
	return do(b, &plan)
}

// isAgentPod reports whether the pod is one of the node agent's own (NetConf's agent_namespace and
// agent_pod_prefix).
func (inv *invocation) isAgentPod() bool {
	c := inv.conf
	return c.AgentNamespace != "" && c.AgentPodPrefix != "" && inv.namespace == c.AgentNamespace &&
		strings.HasPrefix(inv.name, c.AgentPodPrefix)
}

// prevResult is the primary plugin's result, which the plugin passes on and takes the pod's IPs from.
func prevResult(conf *NetConf) (*types100.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "shunt-cni must be chained after the primary plugin",
			"the configuration has no prevResult")
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "invalid prevResult", err.Error())
	}
	res, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "invalid prevResult", err.Error())
	}
	return res, nil
}

// podIPs are the addresses the primary plugin gave the pod; they decide the IP families.
func podIPs(res *types100.Result) []netip.Addr {
	out := []netip.Addr{}
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// fileLogger opens the NetConf's log file (rotating it when large). It never logs to stdout, which
// carries the CNI result; if the file cannot be opened the log goes to stderr, which runtimes record.
func fileLogger(conf *NetConf) (*slog.Logger, func()) {
	lvl, _ := ParseLogLevel(conf.LogLevel)
	opts := &slog.HandlerOptions{Level: slog.Level(lvl)}
	path := conf.LogFile
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if st, err := os.Stat(path); err == nil && st.Size() > maxLogSize {
			_ = os.Rename(path, path+".1")
		}
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err == nil {
			return slog.New(slog.NewJSONHandler(f, opts)).With("plugin", PluginType), func() { f.Close() }
		}
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts)).With("plugin", PluginType), func() {}
}
