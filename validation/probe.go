// Package validation proves, in a pod's live network namespace, that its capture rules work, whichever
// backend programmed them: Istio's iptables validation (`--run-validation`, `shunt validate`).
package validation

import (
	"log/slog"
	"time"

	"github.com/shuntmesh/shunt/redirect"
)

// Probe proves, in the live namespace, that capture works, as Istio's validator does: it listens
// on the capture ports, connects as the proxy's uid to the passthrough address on the probe port — a
// connection the rules must hand to the inbound capture port — and checks the original destination
// read back from the redirected connection.
type Probe struct {
	Config    redirect.Config
	ProbePort uint16
	Timeout   time.Duration
	NetNS     string
	Logger    *slog.Logger
	// ClientCommand runs the probe client when this process is not the proxy's uid: it is started as
	// ClientCommand + [address, timeout] with the proxy's uid and gid, and must print what Client
	// returns.
	ClientCommand []string
}
