package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/redirect"
)

// The plugin's name in a conflist ("type") and its defaults. The installer writes the conflist entry
// with these values; the plugin falls back to them when a field is absent.
const (
	PluginType            = "shunt-cni"
	DefaultKubeconfig     = "/etc/cni/net.d/shunt-kubeconfig"
	DefaultLogFile        = "/var/run/shunt/cni.log"
	DefaultReportSocket   = "/var/run/shunt/cni.sock"
	DefaultAgentSocket    = "/var/run/shunt/agent.sock"
	DefaultAPITimeout     = 20 * time.Second
	DefaultEBPFPinDir     = "/sys/fs/bpf/shunt"
	CapabilityAnnotations = "io.kubernetes.cri.pod-annotations"
)

// Rule backends (NetConf.Backend).
const (
	BackendIptables = "iptables"
	BackendNFTables = "nftables"
)

// DefaultExcludeNamespaces are left alone when the conflist entry does not say otherwise.
var DefaultExcludeNamespaces = []string{"kube-system"}

// NetConf is the plugin's entry in a conflist, as the runtime passes it on stdin.
type NetConf struct {
	types.NetConf

	// RuntimeConfig is filled by the runtime for the capabilities the entry declares:
	// containerd and CRI-O pass the pod's annotations for "io.kubernetes.cri.pod-annotations".
	RuntimeConfig struct {
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	// Kubeconfig is the path of the kubeconfig the plugin reads pods with.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level,omitempty"`
	// LogFile receives the plugin's log (never stdout, which carries the CNI result).
	LogFile string `json:"log_file,omitempty"`
	// ExcludeNamespaces are namespaces whose pods are never captured. Absent means kube-system;
	// an empty list excludes none.
	ExcludeNamespaces []string `json:"exclude_namespaces,omitempty"`
	// APITimeout bounds the whole read of the Pod from the API server, retries included ("20s").
	APITimeout string `json:"api_timeout,omitempty"`
	// Backend programs the rules: "iptables" (the default) or "nftables", Istio's native nftables
	// mode programmed over netlink, with no iptables or nft binary.
	Backend string `json:"backend,omitempty"`
	// IptablesVariant forces "nft" or "legacy"; empty detects it in the pod's namespace.
	IptablesVariant string `json:"iptables_variant,omitempty"`
	// ReportSocket is the installer's datagram socket the plugin reports each ADD, CHECK and DEL to,
	// for its metrics and repair loop. Reports are best effort: a missing socket is no error.
	ReportSocket string `json:"report_socket,omitempty"`
	// AgentSocket is the node agent's socket (shunt install-cni), which the plugin asks for a pod before
	// the API server: the agent answers from its watch of the node's pods. Absent means
	// DefaultAgentSocket; empty asks the API server only. The API server is asked only when the agent
	// cannot be reached (no socket, nobody listening, no answer within AgentTimeout).
	AgentSocket string `json:"agent_socket,omitempty"`
	// EBPFPinDir is where the node's eBPF agent pins its maps; pods annotated shunt.io/mode: ebpf are
	// registered there.
	EBPFPinDir string `json:"ebpf_pin_dir,omitempty"`
	// AgentNamespace and AgentPodPrefix name the node agent's own pods (the installer writes them from
	// its pod's namespace and name). When the API server cannot be reached, such a pod passes
	// unmeshed, as istio-cni lets its own node agent through: that pod is what restores the plugin's
	// credentials, so failing it would keep the node from ever recovering.
	AgentNamespace string `json:"agent_namespace,omitempty"`
	AgentPodPrefix string `json:"agent_pod_prefix,omitempty"`
	// StateDir keeps a record of each pod ADD captured (its namespace, settings and backend), which the
	// node agent reads to act on the node's meshed pods without the API server (see cni/podstate).
	StateDir string `json:"state_dir,omitempty"`

	apiTimeout time.Duration
}

// Timeout is the parsed api_timeout.
func (c *NetConf) Timeout() time.Duration { return c.apiTimeout }

// ParseNetConf decodes and checks the plugin's configuration, filling defaults. Every bad field is
// reported, named as in the conflist.
func ParseNetConf(data []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(data, &raw)
	if _, ok := raw["exclude_namespaces"]; !ok {
		c.ExcludeNamespaces = slices.Clone(DefaultExcludeNamespaces)
	}
	if _, ok := raw["agent_socket"]; !ok {
		c.AgentSocket = DefaultAgentSocket
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = DefaultKubeconfig
	}
	if c.LogFile == "" {
		c.LogFile = DefaultLogFile
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.EBPFPinDir == "" {
		c.EBPFPinDir = DefaultEBPFPinDir
	}
	if c.StateDir == "" {
		c.StateDir = podstate.DefaultDir
	}
	var errs []error
	bad := func(field, value string, err error) {
		errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: err})
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		bad("log_level", c.LogLevel, err)
	}
	c.apiTimeout = DefaultAPITimeout
	if c.APITimeout != "" {
		d, err := time.ParseDuration(c.APITimeout)
		switch {
		case err != nil:
			bad("api_timeout", c.APITimeout, errors.New("not a duration such as 20s"))
		case d <= 0 || d > 10*time.Minute:
			bad("api_timeout", c.APITimeout, errors.New("must be above 0 and at most 10m"))
		default:
			c.apiTimeout = d
		}
	}
	switch c.IptablesVariant {
	case "", "nft", "legacy":
	default:
		bad("iptables_variant", c.IptablesVariant, errors.New(`must be "nft", "legacy" or empty`))
	}
	switch c.Backend {
	case "":
		c.Backend = BackendIptables
	case BackendIptables:
	case BackendNFTables:
		if c.IptablesVariant != "" {
			bad("iptables_variant", c.IptablesVariant, errors.New(`the nftables backend uses no iptables: leave it empty`))
		}
	default:
		bad("backend", c.Backend, errors.New(`must be "iptables", "nftables" or empty`))
	}
	if !filepath.IsAbs(c.EBPFPinDir) {
		bad("ebpf_pin_dir", c.EBPFPinDir, errors.New("not an absolute path"))
	}
	if c.AgentSocket != "" && !filepath.IsAbs(c.AgentSocket) {
		bad("agent_socket", c.AgentSocket, errors.New("not an absolute path"))
	}
	if !filepath.IsAbs(c.StateDir) {
		bad("state_dir", c.StateDir, errors.New("not an absolute path"))
	}
	for _, ns := range c.ExcludeNamespaces {
		if ns == "" || strings.ContainsAny(ns, "/ ") {
			bad("exclude_namespaces", ns, errors.New("not a namespace name"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseLogLevel maps a log_level value to its slog level.
func ParseLogLevel(s string) (level int, err error) {
	switch strings.ToLower(s) {
	case "debug":
		return -4, nil
	case "info":
		return 0, nil
	case "warn", "warning":
		return 4, nil
	case "error":
		return 8, nil
	}
	return 0, errors.New("must be debug, info, warn or error")
}

// Report is what the plugin tells the installer about one command, as one JSON datagram.
type Report struct {
	Command     string `json:"command"` // ADD, CHECK or DEL
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	// Outcome is one of the Outcome constants.
	Outcome string `json:"outcome"`
	// Reason explains a skip or a failure.
	Reason string `json:"reason,omitempty"`
	// PodSource is where the Pod was read from: PodSourceAgent or PodSourceAPI (empty: not read).
	PodSource string `json:"pod_source,omitempty"`
	// APISeconds is the time spent reading the Pod, from the node agent or the API server (0 when it
	// was not read), ProgramSeconds the time spent programming or checking rules, TotalSeconds the whole command.
	APISeconds     float64 `json:"api_seconds,omitempty"`
	ProgramSeconds float64 `json:"program_seconds,omitempty"`
	// DataPath is "ebpf" when an ADD registered the pod with the node's eBPF agent, else "iptables".
	DataPath string `json:"data_path,omitempty"`
	// InAgent is true when the node agent ran the command for the shim, false when the plugin ran in
	// a process of its own (the standalone plugin).
	InAgent      bool    `json:"in_agent,omitempty"`
	TotalSeconds float64 `json:"total_seconds"`
}

// Outcomes of a command.
const (
	OutcomeProgrammed  = "programmed"   // ADD: rules in place
	OutcomeSkipped     = "skipped"      // ADD: the pod is not captured
	OutcomeFailed      = "failed"       // ADD: the pod must be captured and could not be
	OutcomeCheckFailed = "check_failed" // CHECK: the rules differ from the plan
	OutcomeChecked     = "checked"      // CHECK: the rules match
	OutcomeRemoved     = "removed"      // DEL
)

// SendReport sends r to the installer's socket, best effort: it never blocks for long and a missing
// listener is not an error worth failing a pod for.
func SendReport(socket string, r Report) error {
	if socket == "" {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("unixgram", socket, 100*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = conn.Write(b)
	return err
}
