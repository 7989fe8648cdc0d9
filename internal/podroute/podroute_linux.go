// Package podroute sets up and removes what capture needs besides rules, whatever programs the rules:
// the policy routing of TPROXY mode and the IPv6 passthrough address on lo.
package podroute

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/redirect"
)

// Setup adds the TPROXY fwmark rule and local default route, and the IPv6 passthrough address.
func Setup(plan *redirect.Plan) error {
	if !slices.ContainsFunc(plan.Families, func(fp redirect.FamilyPlan) bool { return fp.TProxy != nil || len(fp.LoopbackAddrs) > 0 }) {
		return nil
	}
	h, lo, err := routeHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	for _, fp := range plan.Families {
		for _, a := range fp.LoopbackAddrs {
			addr := &netlink.Addr{IPNet: prefixNet(a)}
			if err := h.AddrAdd(lo, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		if fp.TProxy == nil {
			continue
		}
		for _, f := range fp.Covers {
			if err := tproxyRoute(h, lo, f, fp.TProxy); err != nil {
				return err
			}
		}
	}
	return nil
}

// tproxyRoute adds the fwmark rule and local default route of TPROXY mode in family f.
func tproxyRoute(h *netlink.Handle, lo netlink.Link, f redirect.Family, tp *redirect.TProxyRoute) error {
	family, all := unix.AF_INET, netip.MustParsePrefix("0.0.0.0/0")
	if f == redirect.IPv6 {
		family, all = unix.AF_INET6, netip.MustParsePrefix("::/0")
	}
	// TPROXY delivers through lo: a local route needs it up (pods always have it up).
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up for TPROXY: %w", err)
		}
	}
	// The kernel accepts duplicate rules: add ours only when it is missing.
	rules, err := h.RuleList(family)
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool {
		return r.Mark == tp.Mark && r.Table == int(tp.Table) && (r.Mask == nil || *r.Mask == 0xffffffff)
	}) {
		rule := netlink.NewRule()
		rule.Family = family
		rule.Mark = tp.Mark
		rule.Table = int(tp.Table)
		if err := h.RuleAdd(rule); err != nil {
			return fmt.Errorf("add ip rule fwmark %d lookup %d: %w", rule.Mark, rule.Table, err)
		}
	}
	route := &netlink.Route{Dst: prefixNet(all), Scope: netlink.SCOPE_HOST, Type: unix.RTN_LOCAL,
		Table: int(tp.Table), LinkIndex: lo.Attrs().Index}
	if err := h.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add local default route in table %d: %w", tp.Table, err)
	}
	return nil
}

// Cleanup removes fwmark rules whose table holds only a local default route via lo (TPROXY's),
// with those routes, and ::6/128 from lo.
func Cleanup() error {
	h, lo, err := routeHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.RuleList(family)
		if err != nil {
			errs = append(errs, fmt.Errorf("list ip rules: %w", err))
			continue
		}
		for _, rule := range rules {
			if rule.Mark == 0 || rule.Table <= 0 || rule.Table >= 253 {
				continue
			}
			routes, err := h.RouteListFiltered(family, &netlink.Route{Table: rule.Table}, netlink.RT_FILTER_TABLE)
			if err != nil || len(routes) != 1 || !isTProxyRoute(&routes[0], lo.Attrs().Index) {
				continue
			}
			r := rule
			if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete ip rule fwmark %d lookup %d: %w", rule.Mark, rule.Table, err))
			}
			if err := h.RouteDel(&routes[0]); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route of table %d: %w", rule.Table, err))
			}
		}
	}
	six := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(redirect.PassthroughV6, 128))}
	if err := h.AddrDel(lo, six); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("remove ::6 from lo: %w", err))
	}
	return errors.Join(errs...)
}

func isTProxyRoute(r *netlink.Route, lo int) bool {
	ones := 0
	if r.Dst != nil {
		ones, _ = r.Dst.Mask.Size()
	}
	return r.Type == unix.RTN_LOCAL && r.LinkIndex == lo && ones == 0
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
