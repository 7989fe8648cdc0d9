// Package agent is the node side of the eBPF data path, `shunt ebpf run`: it loads the programs (or
// takes over those already pinned), serves health, readiness and metrics, and drops pods whose network
// namespace no longer exists (a DEL the CNI plugin could not see through).
package agent

import (
	"log/slog"
	"time"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
)

// DefaultHealthAddr serves /healthz, /readyz and /metrics on the node's port 9103.
const DefaultHealthAddr = ":9103"

// Config configures Run.
type Config struct {
	Cgroup, PinDir string // see shuntebpf.Options
	// HealthAddr is the address of /healthz, /readyz and /metrics; empty means none.
	HealthAddr string
	// GCInterval is how often pods whose network namespace is gone are dropped.
	GCInterval time.Duration
	// UnloadOnStop unloads the data path when ctx ends; otherwise it stays attached and pinned, and
	// pods keep it while the next agent starts.
	UnloadOnStop bool
	Logger       *slog.Logger
}

// CounterNames are the counters Counters returns, in the order status prints them.
var CounterNames = []string{
	"connects_redirected", "sockets_paired", "messages_redirected", "bytes_redirected",
	"redirect_misses", "messages_fallback", "origdst_answered", "peernames_answered",
	"dns_redirected", "dns_answered",
}

// Counters returns st's counters by name.
func Counters(st shuntebpf.Stats) map[string]uint64 {
	return map[string]uint64{
		"connects_redirected": st.ConnectsRedirected,
		"sockets_paired":      st.SocketsPaired,
		"messages_redirected": st.MessagesRedirected,
		"bytes_redirected":    st.BytesRedirected,
		"redirect_misses":     st.RedirectMisses,
		"messages_fallback":   st.MessagesFallback,
		"origdst_answered":    st.OrigDstAnswered,
		"peernames_answered":  st.PeerNamesAnswered,
		"dns_redirected":      st.DNSRedirected,
		"dns_answered":        st.DNSAnswered,
	}
}

var counterHelp = map[string]string{
	"connects_redirected": "connect(2) calls of meshed pods rewritten to their proxy.",
	"sockets_paired":      "Loopback sockets put in the socket hash for sk_msg splicing.",
	"messages_redirected": "sendmsg(2) calls moved to the peer socket by sk_msg.",
	"bytes_redirected":    "Bytes moved to the peer socket by sk_msg.",
	"redirect_misses":     "Messages of a paired socket whose peer was not in the socket hash.",
	"messages_fallback":   "Messages sent through TCP after a miss.",
	"origdst_answered":    "SO_ORIGINAL_DST answers given from the stored destination.",
	"peernames_answered":  "getpeername(2) answers given from the stored destination.",
	"dns_redirected":      "UDP DNS datagrams and UDP connect(2) calls of meshed pods rewritten to their DNS proxy.",
	"dns_answered":        "DNS proxy replies shown to the app as coming from the server it asked.",
}
