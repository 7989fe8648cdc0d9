package redirect

import "slices"

// MigrationGuard returns p as it must be programmed while another backend's rules for the same
// settings are in the namespace too, during a migration between backends; outside TPROXY mode, p
// itself.
//
// Two backends' nat rules coexist: the first NAT binding of a connection wins and both make the same.
// Their mangle PREROUTING rules in TPROXY mode do not: the chain that runs first TPROXYs (or diverts) a
// packet, marks it and accepts it, which ends that chain before its connection-mark save; the other
// chain then sees the mark, skips its own inbound rules and saves the mark on the connection. The
// proxy's replies on that connection get the mark back on output and are routed to lo instead of the
// peer: every TPROXYed connection and every upstream connection of the proxy stalls. The guard, first
// in mangle PREROUTING, accepts a packet that arrives marked other than over lo — one the other
// backend's chain has handled — leaving it exactly as a single backend leaves it. With one backend it
// matches nothing: packets entering the namespace carry no mark, and those looped back over lo keep
// going through the rules that save their mark.
func (p Plan) MigrationGuard() Plan {
	out := Plan{Families: slices.Clone(p.Families)}
	for i := range out.Families {
		fp := &out.Families[i]
		if fp.TProxy == nil {
			continue
		}
		fp.Tables = slices.Clone(fp.Tables)
		t := fp.Table(TableMangle)
		if t == nil {
			continue
		}
		t.Chains = slices.Clone(t.Chains)
		if c := t.Chain("PREROUTING"); c != nil {
			c.Rules = append([]Rule{migrationGuard(fp.TProxy.Mark)}, c.Rules...)
		}
	}
	return out
}
