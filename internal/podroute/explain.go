package podroute

import (
	"fmt"

	"github.com/shuntmesh/shunt/redirect"
)

// Explain describes, for --explain, what Sync sets up for fp besides its rules.
func Explain(fp *redirect.FamilyPlan) []string {
	var out []string
	for _, f := range fp.Covers {
		if fp.TProxy == nil {
			break
		}
		out = append(out, fmt.Sprintf("%s/%s: ip rule fwmark %d lookup %d; ip route add local default dev lo table %d (TPROXY delivery to the proxy)",
			redirect.FlowInbound, f, fp.TProxy.Mark, fp.TProxy.Table, fp.TProxy.Table))
	}
	for _, a := range fp.LoopbackAddrs {
		out = append(out, fmt.Sprintf("%s/%s: ip addr add %s dev lo (source of the proxy's inbound passthrough)", redirect.FlowInbound, redirect.FlowIPv6, a))
	}
	return out
}
