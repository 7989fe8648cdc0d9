// Package trace simulates what the kernel does with the first packet of a connection (the SYN of a TCP
// connection, the first datagram of a UDP exchange) in a meshed pod whose capture rules are a
// redirect.Plan: which rules it meets, in which order, which of them match, and where it ends up —
// captured by a listener of the proxy, TPROXYed to one, delivered to a local socket untouched, sent out
// of the pod, or dropped.
//
// It models the hooks and tables the plans use as netfilter runs them: raw, then conntrack, mangle and
// nat at OUTPUT for a packet a local process sends (rerouted after a mark or destination change), and
// for one it sends to a local address the second pass through PREROUTING when it comes back in on lo,
// where raw and mangle run again but nat does not (the connection's NAT was decided at OUTPUT); raw,
// conntrack, mangle and nat at PREROUTING for a packet that arrives from the network. Built-in chains
// accept by default.
//
// The package is pure, as redirect is: it performs no I/O and does not log. The same plan and
// connection always give the same Result.
package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/shuntmesh/shunt/redirect"
)

// Direction says where a connection starts.
type Direction int

// Directions.
const (
	// Out is a connection a local process of the pod (the app, the proxy, the agent) opens.
	Out Direction = iota + 1
	// In is a connection that arrives from the network on one of the pod's interfaces.
	In
)

func (d Direction) String() string {
	switch d {
	case Out:
		return "out"
	case In:
		return "in"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Conn is the connection whose first packet Walk follows.
type Conn struct {
	Dir   Direction
	Proto string // "tcp" or "udp"
	// Src and Dst are the connection's addresses. For Out, Src may be left zero (or carry only a port):
	// routing picks it, the destination itself for one of PodAddrs, the family's localhost address for
	// a loopback destination, else the first of PodAddrs in Dst's family.
	Src, Dst netip.AddrPort
	// UID and GID own the sending socket (Out only): what -m owner and meta skuid/skgid match.
	UID, GID uint32
	// InIface is the interface an In connection arrives on; "eth0" when empty.
	InIface string
	// OutIface is the interface routing picks for an Out connection to a remote address; "eth0" when
	// empty. A connection to a local address (loopback, PodAddrs, a loopback address the plan adds)
	// always leaves by lo, whatever OutIface says.
	OutIface string
	// PodAddrs are the pod's own addresses: what is delivered locally. When empty, an In connection's
	// destination is taken to be the pod's.
	PodAddrs []netip.Addr
	// Mark is the packet's mark before the rules (SO_MARK of the sending socket, for Out).
	Mark uint32
}

// VerdictKind is where the first packet ends up.
type VerdictKind int

// Verdict kinds.
const (
	// Delivered is delivery to a local socket at the original destination, not captured.
	Delivered VerdictKind = iota + 1
	// PassedThrough is an Out packet that leaves the pod, not captured.
	PassedThrough
	// Captured is delivery to a local listener after a nat REDIRECT.
	Captured
	// TProxied is delivery to a local transparent listener by a TPROXY rule.
	TProxied
	// Dropped is a packet a rule (or the kernel) drops.
	Dropped
)

func (k VerdictKind) String() string {
	switch k {
	case Delivered:
		return "delivered"
	case PassedThrough:
		return "passed through"
	case Captured:
		return "captured"
	case TProxied:
		return "TPROXYed"
	case Dropped:
		return "dropped"
	}
	return fmt.Sprintf("VerdictKind(%d)", int(k))
}

// Verdict is the outcome of the first packet.
type Verdict struct {
	Kind VerdictKind
	// Port is the listener's port (Captured, TProxied).
	Port uint16
	// Listener names the listener (Captured, TProxied): "outbound :15001", "inbound :15006",
	// "dns :15053", after the flow of the rule that sent the packet there.
	Listener string
	// OrigDst is the connection's destination before any NAT: what the listener reads back with
	// SO_ORIGINAL_DST (or, TPROXYed, as its local address).
	OrigDst netip.AddrPort
	// Dst is where the packet goes after NAT (Captured, Delivered, PassedThrough). After a REDIRECT at
	// PREROUTING the kernel picks the arriving interface's first address; the walk takes the original
	// destination when it is one of PodAddrs, else the first of PodAddrs in the family.
	Dst netip.AddrPort
	// Iface is the interface an Out packet leaves by (PassedThrough), or the one it arrived on.
	Iface string
	// Mark is the packet's mark at the end, ConnMark the connection's.
	Mark, ConnMark uint32
	// Zone is the conntrack zone of the connection (0: the default zone).
	Zone uint16
	// Reason says why, in words.
	Reason string
}

func (v Verdict) String() string {
	s := v.Kind.String()
	switch v.Kind {
	case Captured, TProxied:
		s += " by " + v.Listener + " orig " + v.OrigDst.String()
	case Delivered:
		s += " to " + v.Dst.String()
	case PassedThrough:
		s += " to " + v.Dst.String() + " via " + v.Iface
	}
	if v.Mark != 0 {
		s += fmt.Sprintf(" mark %d", v.Mark)
	}
	if v.Zone != 0 {
		s += fmt.Sprintf(" zone %d", v.Zone)
	}
	return s
}

// Step is one rule the packet met, or (Rule nil) an event of the walk worth showing: a hook entered,
// a chain's policy, a reroute, a hook skipped.
type Step struct {
	Ref     redirect.RuleRef
	Rule    *redirect.Rule
	Matched bool
	// Hook is the table and hook, "nat OUTPUT", "mangle PREROUTING".
	Hook string
	Note string
}

// Result is the walk of one connection's first packet.
type Result struct {
	Steps []Step
	// Path lists the rules that matched, in order.
	Path    []redirect.RuleRef
	Verdict Verdict
}

// Errors of Walk; each is wrapped with the field and value at fault.
var (
	// ErrInvalidConn is a connection that makes no sense: a missing or contradictory field.
	ErrInvalidConn = errors.New("invalid connection")
	// ErrFamilyNotCovered is a connection of an address family the plan has no rules for (a per-family
	// plan without IPv6): nothing captures it.
	ErrFamilyNotCovered = errors.New("address family not covered by the plan")
	// ErrInvalidPlan is a plan the kernel would refuse: a jump to a missing chain, a loop.
	ErrInvalidPlan = errors.New("invalid plan")
)

// maxDepth bounds nested jumps, as the kernel's chain stack does.
const maxDepth = 64

// Walk follows the first packet of c through plan and returns the rules it met and its verdict. It
// assumes the proxy listens on every port a rule sends a packet to.
func Walk(plan *redirect.Plan, c Conn) (Result, error) {
	if plan == nil {
		return Result{}, fmt.Errorf("%w: nil plan", ErrInvalidPlan)
	}
	if err := check(&c); err != nil {
		return Result{}, err
	}
	fam := redirect.IPv4
	if c.Dst.Addr().Is6() {
		fam = redirect.IPv6
	}
	w := &walker{c: c, fam: fam}
	if fp := plan.Family(fam); fp != nil {
		w.fp = fp
	} else if fp := plan.Family(redirect.Inet); fp != nil {
		w.fp, w.inet = fp, true
		if !slices.Contains(fp.Covers, fam) {
			w.note("", fmt.Sprintf("the inet tables hold no %s-specific rules, but their rules without addresses apply to %s packets too", fam, fam))
		}
	} else {
		return Result{}, fmt.Errorf("conn.Dst: %s is %s, which the plan does not cover (nothing captures it): %w", c.Dst, fam, ErrFamilyNotCovered)
	}
	var err error
	if c.Dir == Out {
		err = w.out()
	} else {
		err = w.in()
	}
	if err != nil {
		return Result{}, err
	}
	w.res.Verdict.Mark, w.res.Verdict.ConnMark, w.res.Verdict.Zone = w.pkt.mark, w.ct.mark, w.ct.zone
	if w.res.Verdict.Kind != Captured && w.res.Verdict.Kind != TProxied {
		w.res.Verdict.OrigDst = c.Dst
	}
	return w.res, nil
}

// check validates c and fills its defaults.
func check(c *Conn) error {
	var errs []error
	bad := func(field, value, format string, args ...any) {
		errs = append(errs, fmt.Errorf("conn.%s: %q: %s: %w", field, value, fmt.Sprintf(format, args...), ErrInvalidConn))
	}
	switch c.Dir {
	case Out, In:
	default:
		bad("Dir", c.Dir.String(), "want trace.Out or trace.In")
	}
	switch c.Proto {
	case "tcp", "udp":
	default:
		bad("Proto", c.Proto, `want "tcp" or "udp"`)
	}
	c.Dst = netip.AddrPortFrom(c.Dst.Addr().Unmap(), c.Dst.Port())
	c.Src = netip.AddrPortFrom(c.Src.Addr().Unmap(), c.Src.Port())
	dst := c.Dst.Addr()
	switch {
	case !dst.IsValid():
		bad("Dst", c.Dst.String(), "no destination address")
	case dst.Zone() != "":
		bad("Dst", c.Dst.String(), "an address with a zone")
	case dst.IsUnspecified() || dst.IsMulticast():
		bad("Dst", c.Dst.String(), "not a unicast address")
	case c.Dst.Port() == 0:
		bad("Dst", c.Dst.String(), "no destination port")
	}
	src := c.Src.Addr()
	if src.IsValid() && dst.IsValid() && src.Is4() != dst.Is4() {
		bad("Src", c.Src.String(), "its family differs from Dst's %s", c.Dst)
	}
	for i, a := range c.PodAddrs {
		if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() {
			bad(fmt.Sprintf("PodAddrs[%d]", i), a.String(), "not a pod address")
		}
	}
	if c.Dir == In {
		switch {
		case !src.IsValid() || src.IsUnspecified():
			bad("Src", c.Src.String(), "an In connection needs its sender's address")
		case src.IsLoopback() || dst.IsLoopback():
			bad("Src", c.Src.String()+" -> "+c.Dst.String(), "loopback addresses never arrive from the network (the kernel drops them as martians); trace the pod's own connection as Out")
		case c.Src.Port() == 0:
			bad("Src", c.Src.String(), "no source port")
		}
		if c.InIface == "" {
			c.InIface = "eth0"
		}
		if c.InIface == "lo" {
			bad("InIface", c.InIface, "what arrives on lo was sent by the pod itself: trace it as Out")
		}
		if c.OutIface != "" {
			bad("OutIface", c.OutIface, "only for Out connections")
		}
		if c.UID != 0 || c.GID != 0 {
			bad("UID", fmt.Sprintf("%d/%d", c.UID, c.GID), "an arriving packet has no local owner")
		}
	}
	if c.Dir == Out {
		if c.InIface != "" {
			bad("InIface", c.InIface, "only for In connections")
		}
		if c.OutIface == "lo" {
			bad("OutIface", c.OutIface, "lo is chosen by routing for local destinations; name a real interface")
		}
		if c.OutIface == "" {
			c.OutIface = "eth0"
		}
	}
	return errors.Join(errs...)
}

// packet is the first packet's state as the hooks change it.
type packet struct {
	src, dst netip.AddrPort
	in, out  string
	mark     uint32
	// sock: the packet carries its sending socket (locally generated, before lo).
	sock bool
}

// conntrack is the connection's conntrack entry.
type conntrack struct {
	exists  bool // created (after raw)
	zoneSet bool // a template (CT zone) is attached
	zone    uint16
	mark    uint32
	natted  bool // the destination NAT was decided
}

type walker struct {
	fp   *redirect.FamilyPlan
	inet bool
	fam  redirect.Family // the packet's
	c    Conn

	pkt packet
	ct  conntrack
	// tproxy is the TPROXY that assigned a listener, if any.
	tproxy   *redirect.Rule
	redirect *redirect.Rule
	origDst  netip.AddrPort
	res      Result
}

func (w *walker) note(hook, note string) {
	w.res.Steps = append(w.res.Steps, Step{Hook: hook, Note: note})
}

func (w *walker) loopback() netip.Addr {
	if w.fam == redirect.IPv6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// local reports whether a is an address of the pod's namespace.
func (w *walker) local(a netip.Addr) bool {
	if a.IsLoopback() || slices.Contains(w.c.PodAddrs, a) {
		return true
	}
	for _, p := range w.fp.LoopbackAddrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// tproxyRouted reports whether mark selects the TPROXY policy route (a local default route via lo).
func (w *walker) tproxyRouted(mark uint32) bool {
	return w.fp.TProxy != nil && mark != 0 && mark == w.fp.TProxy.Mark
}

// route returns the output interface for the packet's destination and mark.
func (w *walker) route() string {
	if w.tproxyRouted(w.pkt.mark) || w.local(w.pkt.dst.Addr()) {
		return "lo"
	}
	return w.c.OutIface
}

// podAddr returns the first of the pod's addresses of the packet's family.
func (w *walker) podAddr() (netip.Addr, bool) {
	for _, a := range w.c.PodAddrs {
		if a.Is4() == (w.fam == redirect.IPv4) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (w *walker) out() error {
	c := &w.c
	w.pkt = packet{src: c.Src, dst: c.Dst, mark: c.Mark, sock: true}
	w.origDst = c.Dst
	w.pkt.out = w.route()
	if w.pkt.out == "lo" {
		w.note("", "routed via lo: "+routeWhy(w))
	}
	if !w.pkt.src.Addr().IsValid() || w.pkt.src.Addr().IsUnspecified() {
		var src netip.Addr
		switch a := c.Dst.Addr(); {
		case a.IsLoopback():
			src = w.loopback()
		case w.local(a):
			src = a
		default:
			if pa, ok := w.podAddr(); ok {
				src = pa
			} else {
				src = netip.IPv4Unspecified()
				if w.fam == redirect.IPv6 {
					src = netip.IPv6Unspecified()
				}
			}
		}
		w.pkt.src = netip.AddrPortFrom(src, c.Src.Port())
	}

	// OUTPUT: raw, conntrack, mangle, nat.
	if v, err := w.hook(redirect.TableRaw, "OUTPUT"); err != nil || v == verdictDrop {
		return w.dropped(err, "raw OUTPUT")
	}
	w.conntrackNew("raw OUTPUT")
	mark := w.pkt.mark
	if v, err := w.hook(redirect.TableMangle, "OUTPUT"); err != nil || v == verdictDrop {
		return w.dropped(err, "mangle OUTPUT")
	}
	if w.pkt.mark != mark {
		if out := w.route(); out != w.pkt.out {
			w.note("mangle OUTPUT", fmt.Sprintf("mark %d: rerouted via %s", w.pkt.mark, out))
			w.pkt.out = out
		}
	}
	if v, err := w.hook(redirect.TableNAT, "OUTPUT"); err != nil || v == verdictDrop {
		return w.dropped(err, "nat OUTPUT")
	}
	w.ct.natted = true
	if w.redirect != nil && w.pkt.out != "lo" {
		w.note("nat OUTPUT", "destination now "+w.pkt.dst.String()+": rerouted via lo")
		w.pkt.out = "lo"
	}
	// POSTROUTING: mangle, then nat (source NAT only).
	if v, err := w.hook(redirect.TableMangle, "POSTROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "mangle POSTROUTING")
	}
	if v, err := w.hook(redirect.TableNAT, "POSTROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "nat POSTROUTING")
	}
	if w.pkt.out != "lo" {
		w.res.Verdict = Verdict{Kind: PassedThrough, Dst: w.pkt.dst, Iface: w.pkt.out,
			Reason: "leaves the pod via " + w.pkt.out + ", not captured"}
		return nil
	}

	// Back in on lo: PREROUTING again, without the socket; nat is not consulted, the connection's
	// destination NAT having been decided at OUTPUT.
	w.note("", "looped back: the packet comes in again on lo")
	w.pkt.in, w.pkt.out, w.pkt.sock = "lo", "", false
	if v, err := w.hook(redirect.TableRaw, "PREROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "raw PREROUTING")
	}
	if v, err := w.hook(redirect.TableMangle, "PREROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "mangle PREROUTING")
	}
	if w.hasChain(redirect.TableNAT, "PREROUTING") {
		w.note("nat PREROUTING", "not traversed: the connection's NAT was decided at nat OUTPUT")
	}
	return w.deliver()
}

func routeWhy(w *walker) string {
	if w.tproxyRouted(w.pkt.mark) {
		return fmt.Sprintf("mark %d selects routing table %d (local default dev lo)", w.pkt.mark, w.fp.TProxy.Table)
	}
	return w.pkt.dst.Addr().String() + " is a local address"
}

func (w *walker) in() error {
	c := &w.c
	w.pkt = packet{src: c.Src, dst: c.Dst, in: c.InIface, mark: c.Mark}
	w.origDst = c.Dst
	if v, err := w.hook(redirect.TableRaw, "PREROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "raw PREROUTING")
	}
	w.conntrackNew("raw PREROUTING")
	if v, err := w.hook(redirect.TableMangle, "PREROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "mangle PREROUTING")
	}
	if v, err := w.hook(redirect.TableNAT, "PREROUTING"); err != nil || v == verdictDrop {
		return w.dropped(err, "nat PREROUTING")
	}
	w.ct.natted = true
	if w.tproxy == nil && w.redirect == nil && !w.tproxyRouted(w.pkt.mark) && len(c.PodAddrs) > 0 && !w.local(w.pkt.dst.Addr()) {
		w.res.Verdict = Verdict{Kind: Dropped, Iface: c.InIface,
			Reason: w.pkt.dst.Addr().String() + " is not an address of the pod, which does not forward"}
		return nil
	}
	return w.deliver()
}

// deliver sets the verdict of a packet routed to a local socket.
func (w *walker) deliver() error {
	v := &w.res.Verdict
	switch {
	case w.tproxy != nil:
		if !w.tproxyRouted(w.pkt.mark) && !w.local(w.pkt.dst.Addr()) {
			*v = Verdict{Kind: Dropped, Iface: w.c.InIface, Reason: fmt.Sprintf(
				"TPROXYed with mark %d, but no policy route for that mark delivers %s locally", w.pkt.mark, w.pkt.dst.Addr())}
			return nil
		}
		t := w.tproxy.Target
		*v = Verdict{Kind: TProxied, Port: t.Port, Listener: listener(w.tproxy), OrigDst: w.origDst, Dst: w.pkt.dst,
			Iface: w.pkt.in, Reason: fmt.Sprintf("TPROXYed to the transparent listener :%d", t.Port)}
		if w.redirect != nil {
			v.Reason += fmt.Sprintf(" (which nat's REDIRECT to :%d after it does not change)", w.redirect.Target.Port)
		}
	case w.redirect != nil:
		t := w.redirect.Target
		*v = Verdict{Kind: Captured, Port: t.Port, Listener: listener(w.redirect), OrigDst: w.origDst, Dst: w.pkt.dst,
			Iface: w.pkt.in, Reason: fmt.Sprintf("REDIRECTed to the listener :%d", t.Port)}
	default:
		*v = Verdict{Kind: Delivered, Dst: w.pkt.dst, Iface: w.pkt.in, Reason: "delivered locally, not captured"}
	}
	return nil
}

// listener names the listener a REDIRECT or TPROXY rule sends to, after the rule's flow.
func listener(r *redirect.Rule) string {
	name := "port"
	switch r.Flow {
	case redirect.FlowOutbound:
		name = "outbound"
	case redirect.FlowInbound:
		name = "inbound"
	case redirect.FlowDNS:
		name = "dns"
	}
	return fmt.Sprintf("%s :%d", name, r.Target.Port)
}

func (w *walker) dropped(err error, hook string) error {
	if err != nil {
		return err
	}
	w.res.Verdict = Verdict{Kind: Dropped, Iface: w.pkt.in, Reason: "dropped in " + hook}
	return nil
}

// conntrackNew creates the connection's conntrack entry, after raw.
func (w *walker) conntrackNew(after string) {
	w.ct.exists = true
	note := "conntrack: new connection"
	if w.ct.zone != 0 {
		note += fmt.Sprintf(" in zone %d", w.ct.zone)
	}
	w.note(after, note)
}

func (w *walker) hasChain(table, chain string) bool {
	t := w.fp.Table(table)
	return t != nil && t.Chain(chain) != nil
}

// hookVerdict is the outcome of a table at a hook.
type hookVerdict int

const (
	verdictAccept hookVerdict = iota // on to the next table
	verdictDrop
)

// chainVerdict is how a chain ends.
type chainVerdict int

const (
	chainFallThrough chainVerdict = iota // end of chain or RETURN
	chainAccept                          // ACCEPT, REDIRECT, TPROXY: the table is done
	chainDrop
)

// hook runs the built-in chain of table, if the plan has it.
func (w *walker) hook(table, chain string) (hookVerdict, error) {
	t := w.fp.Table(table)
	if t == nil || t.Chain(chain) == nil {
		return verdictAccept, nil
	}
	name := table + " " + chain
	cv, err := w.chain(t, chain, name, 0)
	if err != nil {
		return verdictAccept, err
	}
	switch cv {
	case chainDrop:
		return verdictDrop, nil
	case chainFallThrough:
		w.note(name, "policy ACCEPT")
	}
	return verdictAccept, nil
}

func (w *walker) chain(t *redirect.Table, name, hook string, depth int) (chainVerdict, error) {
	if depth > maxDepth {
		return chainFallThrough, fmt.Errorf("%w: jumps nest deeper than %d at %s/%s (a loop?)", ErrInvalidPlan, maxDepth, t.Name, name)
	}
	c := t.Chain(name)
	if c == nil {
		return chainFallThrough, fmt.Errorf("%w: table %s has no chain %s", ErrInvalidPlan, t.Name, name)
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		ref := redirect.RuleRef{Family: w.fp.Family, Table: t.Name, Chain: name, Index: i}
		ok, why := w.match(r)
		w.res.Steps = append(w.res.Steps, Step{Ref: ref, Rule: r, Matched: ok, Hook: hook, Note: why})
		if !ok {
			continue
		}
		w.res.Path = append(w.res.Path, ref)
		step := &w.res.Steps[len(w.res.Steps)-1]
		tg := r.Target
		switch tg.Kind {
		case redirect.TargetJump:
			if tg.Chain == name || t.Chain(tg.Chain) == nil {
				return chainFallThrough, fmt.Errorf("%w: %s jumps to %q, which table %s lacks", ErrInvalidPlan, ref, tg.Chain, t.Name)
			}
			cv, err := w.chain(t, tg.Chain, hook, depth+1)
			if err != nil || cv != chainFallThrough {
				return cv, err
			}
		case redirect.TargetReturn:
			return chainFallThrough, nil
		case redirect.TargetAccept:
			return chainAccept, nil
		case redirect.TargetDrop:
			return chainDrop, nil
		case redirect.TargetRedirect:
			if !w.ct.exists || w.ct.natted {
				step.Note = "REDIRECT has no effect: the connection's NAT is already decided"
				return chainAccept, nil
			}
			w.doRedirect(r, step)
			return chainAccept, nil
		case redirect.TargetTProxy:
			if r.Proto != "tcp" && r.Proto != "udp" {
				return chainFallThrough, fmt.Errorf("%w: %s: TPROXY needs -p tcp or udp", ErrInvalidPlan, ref)
			}
			if w.tproxy == nil {
				w.tproxy = r
			}
			w.pkt.mark = tg.Mark
			step.Note = fmt.Sprintf("assigned to the transparent listener :%d, mark %d", tg.Port, tg.Mark)
			return chainAccept, nil
		case redirect.TargetSetMark:
			w.pkt.mark = tg.Mark
			step.Note = fmt.Sprintf("mark set to %d", tg.Mark)
		case redirect.TargetSaveMark:
			w.ct.mark = w.pkt.mark
			step.Note = fmt.Sprintf("connection mark set to %d", w.ct.mark)
		case redirect.TargetRestoreMark:
			w.pkt.mark = w.ct.mark
			step.Note = fmt.Sprintf("mark set to the connection's, %d", w.pkt.mark)
		case redirect.TargetCTZone:
			if w.ct.exists || w.ct.zoneSet {
				step.Note = "no effect: the packet is already tracked"
				continue
			}
			w.ct.zoneSet, w.ct.zone = true, tg.Zone
			step.Note = fmt.Sprintf("conntrack zone %d", tg.Zone)
		default:
			return chainFallThrough, fmt.Errorf("%w: %s: unknown target kind %d", ErrInvalidPlan, ref, tg.Kind)
		}
	}
	return chainFallThrough, nil
}

// doRedirect rewrites the destination as REDIRECT does: to localhost for a locally generated packet,
// to the arriving interface's (first) address otherwise, and the port to the rule's. The walk does not
// know the interfaces' addresses: it takes the destination when it is the pod's, else the first of
// PodAddrs in the family.
func (w *walker) doRedirect(r *redirect.Rule, step *Step) {
	a := w.loopback()
	if w.pkt.in != "" {
		a = w.pkt.dst.Addr()
		if pa, ok := w.podAddr(); ok && !w.local(a) {
			a = pa
		}
	}
	port := r.Target.Port
	if port == 0 {
		port = w.pkt.dst.Port()
	}
	w.pkt.dst = netip.AddrPortFrom(a, port)
	w.ct.natted = true
	w.redirect = r
	step.Note = "destination rewritten to " + w.pkt.dst.String()
}

// match reports whether r matches the packet, and if not the first match that fails.
func (w *walker) match(r *redirect.Rule) (bool, string) {
	p := &w.pkt
	if r.Proto != "" && r.Proto != w.c.Proto {
		return false, "protocol " + w.c.Proto
	}
	if !matchAddr(r.Src, p.src.Addr()) {
		return false, "source " + p.src.Addr().String()
	}
	if !matchAddr(r.Dst, p.dst.Addr()) {
		return false, "destination " + p.dst.Addr().String()
	}
	if !matchIface(r.In, p.in) {
		return false, "input interface " + ifaceName(p.in)
	}
	if !matchIface(r.Out, p.out) {
		return false, "output interface " + ifaceName(p.out)
	}
	if (len(r.DPort.Ports) > 0 || len(r.SPort.Ports) > 0) && r.Proto == "" {
		return false, "a port match without a protocol matches nothing"
	}
	if !matchPorts(r.DPort, p.dst.Port()) {
		return false, fmt.Sprintf("destination port %d", p.dst.Port())
	}
	if !matchPorts(r.SPort, p.src.Port()) {
		return false, fmt.Sprintf("source port %d", p.src.Port())
	}
	if len(r.CTState) > 0 && !slices.ContainsFunc(r.CTState, func(s string) bool { return strings.EqualFold(s, "NEW") }) {
		return false, "conntrack state NEW"
	}
	if r.Mark.Set && (p.mark == r.Mark.Value) == r.Mark.Not {
		return false, fmt.Sprintf("mark %d", p.mark)
	}
	if r.ConnMark.Set && (w.ct.mark == r.ConnMark.Value) == r.ConnMark.Not {
		return false, fmt.Sprintf("connection mark %d", w.ct.mark)
	}
	for _, o := range r.Owners {
		if !w.matchOwner(o) {
			if !p.sock {
				return false, "owner: the packet has no local socket"
			}
			return false, fmt.Sprintf("owner uid %d gid %d", w.c.UID, w.c.GID)
		}
	}
	return true, ""
}

// matchOwner matches one owner: each must hold. A packet without a socket matches no meta skuid/skgid
// in nftables; iptables' owner match is then true only when negated.
func (w *walker) matchOwner(o redirect.OwnerMatch) bool {
	if !w.pkt.sock {
		return !w.inet && o.Not
	}
	id := w.c.UID
	if o.GID {
		id = w.c.GID
	}
	return (id == o.ID) != o.Not
}

// matchAddr matches a prefix; one of the other family never matches (the per-family plans have none,
// and in an inet table the match carries the family), negated or not.
func matchAddr(m redirect.AddrMatch, a netip.Addr) bool {
	if !m.Prefix.IsValid() {
		return true
	}
	if m.Prefix.Addr().Is4() != a.Is4() {
		return false
	}
	return m.Prefix.Masked().Contains(a) != m.Not
}

// matchIface matches an interface name, with iptables' trailing '+' wildcard (nft's '*').
func matchIface(m redirect.IfaceMatch, name string) bool {
	if m.Name == "" {
		return true
	}
	var ok bool
	if base, wild := strings.CutSuffix(m.Name, "+"); wild {
		ok = name != "" && strings.HasPrefix(name, base)
	} else {
		ok = name == m.Name
	}
	return ok != m.Not
}

func matchPorts(m redirect.PortMatch, port uint16) bool {
	if len(m.Ports) == 0 {
		return true
	}
	return slices.Contains(m.Ports, port) != m.Not
}

func ifaceName(n string) string {
	if n == "" {
		return "(none)"
	}
	return n
}
