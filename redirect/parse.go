package redirect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The parsers below read the comma-separated values of istio-iptables flags, environment variables and
// pod annotations. Empty items are skipped ("6000,7000," is two ports), as Istio does. Their errors do
// not name the field: callers wrap them in a *FieldError.

// splitList splits a comma-separated list, trimming spaces and dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

var errWildcard = errors.New("'*' is not allowed here")

// ParsePort parses one TCP/UDP port, 1 to 65535, in decimal.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port between 1 and 65535", s)
	}
	return uint16(n), nil
}

// parseList parses each item of a comma-separated list with parse; '*' is rejected.
func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, item := range splitList(s) {
		if item == "*" {
			return nil, errWildcard
		}
		v, err := parse(item)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// ParsePorts parses a list of ports; '*' is rejected.
func ParsePorts(s string) ([]uint16, error) { return parseList(s, ParsePort) }

// ParsePortList parses a list of ports or '*' for all ports.
func ParsePortList(s string) (PortList, error) {
	if strings.TrimSpace(s) == "*" {
		return PortList{All: true}, nil
	}
	ports, err := ParsePorts(s)
	if errors.Is(err, errWildcard) {
		err = errors.New("'*' must stand alone")
	}
	return PortList{Ports: ports}, err
}

// ParsePrefix parses a CIDR such as 10.0.0.0/8 or 2001:db8::/32.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (address/prefix-length)", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 CIDR; write it as IPv4", s)
	}
	return p, nil
}

// ParsePrefixes parses a list of CIDRs; '*' is rejected.
func ParsePrefixes(s string) ([]netip.Prefix, error) { return parseList(s, ParsePrefix) }

// ParsePrefixList parses a list of CIDRs or '*' for all destinations.
func ParsePrefixList(s string) (PrefixList, error) {
	if strings.TrimSpace(s) == "*" {
		return PrefixList{All: true}, nil
	}
	ps, err := ParsePrefixes(s)
	if errors.Is(err, errWildcard) {
		err = errors.New("'*' must stand alone")
	}
	return PrefixList{Prefixes: ps}, err
}

// ParseID parses a numeric uid or gid.
func ParseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || uint32(n) == InvalidID {
		return 0, fmt.Errorf("%q is not a numeric id between 0 and 4294967294", s)
	}
	return uint32(n), nil
}

// ParseIDs parses a list of numeric uids or gids.
func ParseIDs(s string) ([]uint32, error) { return parseList(s, ParseID) }

// ParseUint32 parses a decimal number such as a firewall mark or a routing table id.
func ParseUint32(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number between 0 and 4294967295", s)
	}
	return uint32(n), nil
}

// ParseInterfaces parses a list of interface names.
func ParseInterfaces(s string) ([]string, error) {
	var out []string
	for _, item := range splitList(s) {
		if err := ValidateInterfaceName(item); err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		out = append(out, item)
	}
	return out, nil
}

// ParseAddrs parses a list of IP addresses, such as DNS servers.
func ParseAddrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, item := range splitList(s) {
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is not an IP address", item)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// ParseMode parses an interception mode, REDIRECT or TPROXY (any case).
func ParseMode(s string) (Mode, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case string(ModeRedirect):
		return ModeRedirect, nil
	case string(ModeTProxy):
		return ModeTProxy, nil
	}
	return "", fmt.Errorf("%q is not an interception mode: want REDIRECT or TPROXY", s)
}

// ParseBool parses a boolean the way Go's strconv does (1, t, true, 0, f, false, any case).
func ParseBool(s string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return false, fmt.Errorf("%q is not a boolean: want true or false", s)
	}
	return b, nil
}

// ParseGroupFile reads /etc/group content into a map from group name to gid. Malformed lines are skipped.
func ParseGroupFile(data []byte) map[string]uint32 {
	groups := make(map[string]uint32)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Split(line, ":")
		if len(fields) < 3 || fields[0] == "" {
			continue
		}
		gid, err := ParseID(fields[2])
		if err != nil {
			continue
		}
		if _, dup := groups[fields[0]]; !dup {
			groups[fields[0]] = gid
		}
	}
	return groups
}

// ParseGroups parses a list of groups, by name or number, resolving names with groups (see
// ParseGroupFile). The result holds numeric ids only, so that iptables never looks a name up.
func ParseGroups(s string, groups map[string]uint32) ([]uint32, error) {
	var out []uint32
	for _, item := range splitList(s) {
		if item == "*" {
			return nil, errWildcard
		}
		if item[0] >= '0' && item[0] <= '9' {
			id, err := ParseID(item)
			if err != nil {
				return nil, err
			}
			out = append(out, id)
			continue
		}
		id, ok := groups[item]
		if !ok {
			return nil, fmt.Errorf("no group named %q in /etc/group", item)
		}
		out = append(out, id)
	}
	return out, nil
}

// ParseGroupFilter parses the owner-group settings: include is '*' or a list; exclude applies when
// include is '*'. An empty include means '*'.
func ParseGroupFilter(include, exclude string, groups map[string]uint32) (GroupFilter, error) {
	if inc := strings.TrimSpace(include); inc != "" && inc != "*" {
		ids, err := ParseGroups(inc, groups)
		if err != nil {
			return GroupFilter{}, &FieldError{Field: "ISTIO_OUTBOUND_OWNER_GROUPS", Value: include, Err: err}
		}
		return GroupFilter{Include: ids}, nil
	}
	ids, err := ParseGroups(exclude, groups)
	if err != nil {
		return GroupFilter{}, &FieldError{Field: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", Value: exclude, Err: err}
	}
	return GroupFilter{All: true, Exclude: ids}, nil
}

// ParseResolvConf returns the nameserver addresses of resolv.conf content, skipping bad lines.
func ParseResolvConf(data []byte) []netip.Addr {
	var out []netip.Addr
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Zone() == "" {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
