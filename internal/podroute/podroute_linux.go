// Package podroute sets up and removes what capture needs besides rules, whatever programs the rules:
// the policy routing of TPROXY mode and the IPv6 passthrough address on lo.
//
// Ownership is recorded in the kernel objects themselves, so that it survives the process (an init
// container has no disk that outlives it): the fwmark rules carry Protocol (FRA_PROTOCOL), the local
// routes rtm_protocol, and the address IFA_PROTO, all set to Proto. Cleanup and Sync remove only
// objects carrying it. An object that already existed when shunt ran (an identical rule, a route or
// address the kernel refuses as existing) is not ours and stays.
package podroute

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/redirect"
)

// Proto marks the routes, ip rules and addresses shunt adds (rtm_protocol, FRA_PROTOCOL, IFA_PROTO):
// 83 (0x53, "S"), shown as "proto 83" by ip rule and ip route. Values up to RTPROT_STATIC (4) belong
// to the kernel and iproute2's defaults (istio-iptables adds the same objects with `ip`, so they
// carry those: routes boot, rules and addresses unspec); iproute2's rt_protos names 8-18, 42 (babel),
// 99 (openr) and 186-192 (FRR's daemons); Calico's Felix marks its routes 80. 83 is none of them. For
// addresses the kernel itself uses IFA_PROTO 1-3 only. One value for all three objects, so that
// `ip rule`, `ip route` and the address say the same thing.
const Proto = 0x53

// ifaProto is IFA_PROTO (kernel >= 6.1), which x/sys/unix does not name.
const ifaProto = 11

// want is what a plan needs: addresses on lo, and TPROXY routing per family.
type want struct {
	addrs  []netip.Prefix
	tproxy []tproxyRoute
}

type tproxyRoute struct {
	family int // unix.AF_INET or unix.AF_INET6
	mark   uint32
	table  int
}

func (t tproxyRoute) String() string {
	return fmt.Sprintf("ip rule fwmark %#x lookup %d (%s)", t.mark, t.table, familyName(t.family))
}

func familyName(family int) string {
	if family == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

func wantOf(plan *redirect.Plan) want {
	var w want
	for _, fp := range plan.Families {
		w.addrs = append(w.addrs, fp.LoopbackAddrs...)
		if fp.TProxy == nil {
			continue
		}
		for _, f := range fp.Covers {
			family := unix.AF_INET
			if f == redirect.IPv6 {
				family = unix.AF_INET6
			}
			t := tproxyRoute{family: family, mark: fp.TProxy.Mark, table: int(fp.TProxy.Table)}
			if !slices.Contains(w.tproxy, t) {
				w.tproxy = append(w.tproxy, t)
			}
		}
	}
	return w
}

// Sync makes the current namespace hold what plan needs — the TPROXY fwmark rules and local default
// routes, the IPv6 passthrough address — and removes what shunt added earlier that plan does not need
// (after a reconcile from TPROXY to REDIRECT, or from dual stack to IPv4). What plan needs and the
// namespace holds already, ours or not, is left as it is: a re-run changes nothing.
func Sync(plan *redirect.Plan) error {
	w := wantOf(plan)
	h, lo, err := routeHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	for _, a := range w.addrs {
		if err := addrAdd(lo, a); err != nil {
			return err
		}
	}
	for _, t := range w.tproxy {
		if err := addTProxy(h, lo, t); err != nil {
			return err
		}
	}
	_, err = remove(h, lo, w)
	return err
}

// Cleanup removes from the current namespace the rules, routes and addresses shunt added, and only
// those, returning one line per removal ("removed ::6/128 from lo").
func Cleanup() ([]string, error) {
	h, lo, err := routeHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return remove(h, lo, want{})
}

// CleanupAt is Cleanup in the network namespace at path (the current one when empty).
func CleanupAt(path string) ([]string, error) {
	var removed []string
	err := netns.Do(path, func() error {
		var err error
		removed, err = Cleanup()
		return err
	})
	return removed, err
}

// addrAdd adds a to lo marked as ours, an IPv6 one without duplicate address detection. When lo has it already (Istio leaves ::6 behind; another
// program may have added it) the kernel refuses with EEXIST and the address stays someone else's.
func addrAdd(lo netlink.Link, a netip.Prefix) error {
	family := unix.AF_INET
	if a.Addr().Is6() {
		family = unix.AF_INET6
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(lo.Attrs().Index)
	msg.Prefixlen = uint8(a.Bits())
	if a.Addr().Is6() {
		// Usable at once: without NODAD the address is tentative until the kernel's DAD work
		// runs (it skips the probing on lo, not the state), and the proxy's bind to ::6 fails
		// with EADDRNOTAVAIL meanwhile.
		msg.Flags = unix.IFA_F_NODAD
	}
	req.AddData(msg)
	ip := a.Addr().AsSlice()
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, ip))
	req.AddData(nl.NewRtAttr(ifaProto, nl.Uint8Attr(Proto)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to lo: %w", a, err)
	}
	return nil
}

// ourAddrs lists the addresses of lo that carry IFA_PROTO Proto. A kernel older than 6.1 reports no
// IFA_PROTO: no address is then recognised as ours, and cleanup leaves ::6 on lo, as Istio's does.
func ourAddrs(lo netlink.Link) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := retryDump(func() error {
		out = out[:0]
		req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
		for _, m := range msgs {
			if len(m) < unix.SizeofIfAddrmsg {
				continue
			}
			hdr := nl.DeserializeIfAddrmsg(m)
			if int(hdr.Index) != lo.Attrs().Index {
				continue
			}
			attrs, perr := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
			if perr != nil {
				return perr
			}
			var local, address netip.Addr
			var proto byte
			for _, a := range attrs {
				switch a.Attr.Type {
				case unix.IFA_LOCAL:
					local, _ = netip.AddrFromSlice(a.Value)
				case unix.IFA_ADDRESS:
					address, _ = netip.AddrFromSlice(a.Value)
				case ifaProto:
					if len(a.Value) > 0 {
						proto = a.Value[0]
					}
				}
			}
			ip := local
			if !ip.IsValid() {
				ip = address // IPv6 addresses without a peer carry IFA_ADDRESS only
			}
			if proto == Proto && ip.IsValid() {
				out = append(out, netip.PrefixFrom(ip, int(hdr.Prefixlen)))
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list addresses of lo: %w", err)
	}
	return out, nil
}

// addTProxy adds the fwmark rule and local default route of TPROXY mode in t's family, each marked
// as ours, unless the namespace holds them already.
func addTProxy(h *netlink.Handle, lo netlink.Link, t tproxyRoute) error {
	// TPROXY delivers through lo: a local route needs it up (pods always have it up).
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up for TPROXY: %w", err)
		}
	}
	// The kernel accepts duplicate rules: add ours only when no identical one is there.
	rules, err := ruleList(h, t.family)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool { return isTProxyRule(&r, t) }) {
		rule := netlink.NewRule()
		rule.Family = t.family
		rule.Mark = t.mark
		rule.Table = t.table
		rule.Protocol = Proto
		if err := h.RuleAdd(rule); err != nil {
			return fmt.Errorf("add %s: %w", t, err)
		}
	}
	route := localDefault(t.family, t.table, lo.Attrs().Index)
	route.Protocol = Proto
	if err := h.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add local default route in table %d (%s): %w", t.table, familyName(t.family), err)
	}
	return nil
}

func isTProxyRule(r *netlink.Rule, t tproxyRoute) bool {
	return r.Mark == t.mark && r.Table == t.table && (r.Mask == nil || *r.Mask == 0xffffffff) &&
		r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" && !r.Invert
}

func localDefault(family, table, lo int) *netlink.Route {
	all := netip.MustParsePrefix("0.0.0.0/0")
	if family == unix.AF_INET6 {
		all = netip.MustParsePrefix("::/0")
	}
	return &netlink.Route{Family: family, Dst: prefixNet(all), Scope: netlink.SCOPE_HOST, Type: unix.RTN_LOCAL,
		Table: table, LinkIndex: lo}
}

// remove deletes the ip rules, routes and lo addresses carrying Proto that w does not need, and
// returns one line per deletion.
func remove(h *netlink.Handle, lo netlink.Link, w want) ([]string, error) {
	var removed []string
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := ruleList(h, family)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rule := range rules {
			if rule.Protocol != Proto {
				continue
			}
			t := tproxyRoute{family: family, mark: rule.Mark, table: rule.Table}
			if slices.Contains(w.tproxy, t) && isTProxyRule(&rule, t) {
				continue
			}
			if err := h.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s: %w", t, err))
				continue
			}
			removed = append(removed, "removed "+t.String())
		}
		routes, err := routeList(h, family)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, route := range routes {
			if route.Protocol != Proto {
				continue
			}
			if isLocalDefault(&route, lo.Attrs().Index) && slices.ContainsFunc(w.tproxy, func(t tproxyRoute) bool {
				return t.family == family && t.table == route.Table
			}) {
				continue
			}
			if err := h.RouteDel(&route); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s table %d: %w", routeString(&route, lo), route.Table, err))
				continue
			}
			removed = append(removed, fmt.Sprintf("removed route %s table %d (%s)", routeString(&route, lo), route.Table, familyName(family)))
		}
	}
	addrs, err := ourAddrs(lo)
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range addrs {
		if slices.Contains(w.addrs, a) {
			continue
		}
		if err := h.AddrDel(lo, &netlink.Addr{IPNet: prefixNet(a)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove %s from lo: %w", a, err))
			continue
		}
		removed = append(removed, fmt.Sprintf("removed %s from lo", a))
	}
	return removed, errors.Join(errs...)
}

func isLocalDefault(r *netlink.Route, lo int) bool {
	ones := 0
	if r.Dst != nil {
		ones, _ = r.Dst.Mask.Size()
	}
	return r.Type == unix.RTN_LOCAL && r.LinkIndex == lo && ones == 0
}

func routeString(r *netlink.Route, lo netlink.Link) string {
	dst := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones > 0 {
			dst = r.Dst.String()
		}
	}
	if r.Type == unix.RTN_LOCAL {
		dst = "local " + dst
	}
	if r.LinkIndex == lo.Attrs().Index {
		return dst + " dev lo"
	}
	return fmt.Sprintf("%s dev #%d", dst, r.LinkIndex)
}

// ruleList lists the ip rules of family, retrying a dump the kernel interrupted.
func ruleList(h *netlink.Handle, family int) ([]netlink.Rule, error) {
	var rules []netlink.Rule
	err := retryDump(func() error {
		var err error
		rules, err = h.RuleList(family)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list ip rules: %w", err)
	}
	return rules, nil
}

// routeList lists the routes of family in every table.
func routeList(h *netlink.Handle, family int) ([]netlink.Route, error) {
	var routes []netlink.Route
	err := retryDump(func() error {
		var err error
		routes, err = h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return routes, nil
}

// retryDump runs dump again while the kernel reports it interrupted by a concurrent change.
func retryDump(dump func() error) error {
	var err error
	for range 10 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// routeHandle opens a netlink route socket in the current namespace and finds lo.
func routeHandle() (*netlink.Handle, netlink.Link, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("find lo: %w", err)
	}
	return h, lo, nil
}
