package iptables

import (
	"log/slog"
	"time"

	"github.com/shuntmesh/shunt/redirect"
)

// Validation proves, in the live namespace, that capture works, as Istio's validator does: it listens
// on the capture ports, connects as the proxy's uid to the passthrough address on the probe port — a
// connection the rules must hand to the inbound capture port — and checks the original destination
// read back from the redirected connection.
type Validation struct {
	Config    redirect.Config
	ProbePort uint16
	Timeout   time.Duration
	NetNS     string
	Logger    *slog.Logger
	// ClientCommand runs the probe client when this process is not the proxy's uid: it is started as
	// ClientCommand + [address, timeout] with the proxy's uid and gid, and must print what ProbeClient
	// returns.
	ClientCommand []string
}
