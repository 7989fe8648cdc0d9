package install

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/shuntmesh/shunt/cni"
)

// Entry holds the settings of the plugin's entry in the primary network's conflist.
type Entry struct {
	// Kubeconfig is the plugin's kubeconfig as the host sees it.
	Kubeconfig string
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// LogFile is the plugin's log file on the host.
	LogFile string
	// ExcludeNamespaces are never captured; empty excludes none.
	ExcludeNamespaces []string
	// APITimeout bounds the plugin's read of a Pod.
	APITimeout time.Duration
	// Backend is "iptables" or "nftables".
	Backend string
	// IptablesVariant is "nft", "legacy" or empty (detected).
	IptablesVariant string
	// ReportSocket is the installer's report socket as the host sees it.
	ReportSocket string
	// EBPFPinDir is where the node's eBPF agent pins its maps, as the host sees it.
	EBPFPinDir string
	// AgentSocket is the node agent's socket as the host sees it; empty leaves the plugin its default
	// (cni.DefaultAgentSocket).
	AgentSocket string
	// StateDir is where the plugin records the pods it captures (cni/podstate), as the host sees it.
	StateDir string
	// AgentNamespace and AgentPodPrefix name the installer's own pods, which the plugin lets through
	// unmeshed while the API server cannot be reached; empty leaves the plugin without the rule.
	AgentNamespace string
	AgentPodPrefix string
}

// entryJSON is the entry as written, in this field order.
type entryJSON struct {
	Type              string          `json:"type"`
	Kubeconfig        string          `json:"kubeconfig"`
	LogLevel          string          `json:"log_level"`
	LogFile           string          `json:"log_file"`
	ExcludeNamespaces []string        `json:"exclude_namespaces"`
	APITimeout        string          `json:"api_timeout"`
	Backend           string          `json:"backend,omitempty"`
	IptablesVariant   string          `json:"iptables_variant"`
	ReportSocket      string          `json:"report_socket"`
	EBPFPinDir        string          `json:"ebpf_pin_dir,omitempty"`
	AgentSocket       string          `json:"agent_socket,omitempty"`
	StateDir          string          `json:"state_dir,omitempty"`
	AgentNamespace    string          `json:"agent_namespace,omitempty"`
	AgentPodPrefix    string          `json:"agent_pod_prefix,omitempty"`
	Capabilities      map[string]bool `json:"capabilities"`
}

// JSON returns the conflist entry, compact.
func (e Entry) JSON() ([]byte, error) {
	j := entryJSON{
		Type:              cni.PluginType,
		Kubeconfig:        e.Kubeconfig,
		LogLevel:          e.LogLevel,
		LogFile:           e.LogFile,
		ExcludeNamespaces: e.ExcludeNamespaces,
		APITimeout:        e.APITimeout.String(),
		Backend:           e.Backend,
		IptablesVariant:   e.IptablesVariant,
		ReportSocket:      e.ReportSocket,
		EBPFPinDir:        e.EBPFPinDir,
		AgentSocket:       e.AgentSocket,
		StateDir:          e.StateDir,
		AgentNamespace:    e.AgentNamespace,
		AgentPodPrefix:    e.AgentPodPrefix,
		Capabilities:      map[string]bool{cni.CapabilityAnnotations: true},
	}
	if j.ExcludeNamespaces == nil {
		j.ExcludeNamespaces = []string{}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(j); err != nil {
		return nil, err
	}
	return bytes.TrimSpace(b.Bytes()), nil
}
