package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shuntmesh/shunt/trace"
)

// connSpec is the connection `shunt trace` follows, as its flags spell it.
type connSpec struct {
	Direction string   // --direction: out or in
	Proto     string   // --proto: tcp or udp
	Src       string   // --src: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)
	Dst       string   // --dst: ADDR:PORT
	UID, GID  string   // --uid, --gid: empty for 0
	Mark      string   // --mark: the sending socket's SO_MARK, empty for none
	Iface     string   // --iface: empty for eth0
	PodIPs    []string // --pod-ip
}

// parseConn returns the trace.Conn of s, or an error naming every flag whose value is bad or that
// the direction would ignore, and the value. A Conn it returns is one trace.Walk accepts.
func parseConn(s connSpec) (trace.Conn, error) {
	var c trace.Conn
	var errs []error
	bad := func(flag, value, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s %q: %s", flag, value, fmt.Sprintf(format, args...)))
	}
	switch strings.ToLower(strings.TrimSpace(s.Direction)) {
	case "out":
		c.Dir = trace.Out
	case "in":
		c.Dir = trace.In
	default:
		bad("direction", s.Direction, "want out (a connection a process of the pod opens) or in (one arriving from the network)")
	}
	switch p := strings.ToLower(strings.TrimSpace(s.Proto)); p {
	case "tcp", "udp":
		c.Proto = p
	default:
		bad("proto", s.Proto, "want tcp or udp")
	}

	if strings.TrimSpace(s.Dst) == "" {
		bad("dst", s.Dst, "want the destination as ADDR:PORT ([ADDR]:PORT for IPv6)")
	} else if dst, err := netip.ParseAddrPort(strings.TrimSpace(s.Dst)); err != nil {
		bad("dst", s.Dst, "want ADDR:PORT ([ADDR]:PORT for IPv6)")
	} else {
		c.Dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		switch a := c.Dst.Addr(); {
		case a.Zone() != "":
			bad("dst", s.Dst, "an address with a zone")
		case a.IsUnspecified() || a.IsMulticast():
			bad("dst", s.Dst, "not a unicast address")
		case c.Dst.Port() == 0:
			bad("dst", s.Dst, "port 0")
		case c.Dir == trace.In && a.IsLoopback():
			bad("dst", s.Dst, "loopback addresses never arrive from the network; trace the pod's own connection with --direction out")
		}
	}

	if src := strings.TrimSpace(s.Src); src != "" {
		ap, err := netip.ParseAddrPort(src)
		if err != nil {
			var a netip.Addr
			if a, err = netip.ParseAddr(strings.Trim(src, "[]")); err == nil {
				ap = netip.AddrPortFrom(a, 0)
			}
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		switch a := ap.Addr(); {
		case err != nil:
			bad("src", s.Src, "want ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)")
		case a.Zone() != "":
			bad("src", s.Src, "an address with a zone")
		case a.IsMulticast():
			bad("src", s.Src, "not a unicast address")
		case c.Dst.IsValid() && a.Is4() != c.Dst.Addr().Is4():
			bad("src", s.Src, "its family differs from --dst %s", c.Dst)
		case c.Dir == trace.In && (a.IsUnspecified() || a.IsLoopback()):
			bad("src", s.Src, "an inbound connection comes from a remote address")
		case c.Dir == trace.In && ap.Port() == 0:
			bad("src", s.Src, "an inbound connection needs the sender's port: ADDR:PORT")
		default:
			c.Src = ap
		}
	} else if c.Dir == trace.In {
		bad("src", s.Src, "an inbound connection needs the sender's ADDR:PORT")
	}

	id := func(flag, v string) uint32 {
		v = strings.TrimSpace(v)
		if v == "" {
			return 0
		}
		if c.Dir == trace.In {
			bad(flag, v, "only with --direction out: an arriving packet has no local owner")
			return 0
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			bad(flag, v, "want a number from 0 to %d", uint32(1<<32-1))
		}
		return uint32(n)
	}
	c.UID, c.GID = id("uid", s.UID), id("gid", s.GID)
	if v := strings.TrimSpace(s.Mark); v != "" {
		n, err := strconv.ParseUint(v, 0, 32)
		switch {
		case c.Dir == trace.In:
			bad("mark", s.Mark, "only with --direction out: it is the sending socket's SO_MARK")
		case err != nil:
			bad("mark", s.Mark, "want a number from 0 to %d (0x… for hex)", uint32(1<<32-1))
		default:
			c.Mark = uint32(n)
		}
	}

	if name := strings.TrimSpace(s.Iface); name != "" {
		switch {
		case name == "lo" && c.Dir == trace.In:
			bad("iface", s.Iface, "what arrives on lo was sent by the pod itself: trace it with --direction out")
		case name == "lo":
			bad("iface", s.Iface, "routing sends local destinations via lo; name the interface a remote destination is routed by")
		case len(name) > 15 || strings.ContainsAny(name, "/ \t\n\x00") || name == "." || name == "..":
			bad("iface", s.Iface, "not an interface name")
		case c.Dir == trace.In:
			c.InIface = name
		default:
			c.OutIface = name
		}
	}

	for _, v := range s.PodIPs {
		a, err := netip.ParseAddr(strings.TrimSpace(v))
		a = a.Unmap()
		switch {
		case err != nil:
			bad("pod-ip", v, "not an IP address")
		case a.Zone() != "" || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
			bad("pod-ip", v, "not an address a pod has")
		default:
			c.PodAddrs = append(c.PodAddrs, a)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return trace.Conn{}, err
	}
	return c, nil
}

// connText describes c in one line: "out tcp 10.0.0.2 → 10.1.2.3:443 uid 0 gid 0 via eth0".
func connText(c trace.Conn) string {
	var b strings.Builder
	b.WriteString(c.Dir.String() + " " + c.Proto + " ")
	switch {
	case c.Src.Port() != 0:
		b.WriteString(c.Src.String() + " → ")
	case c.Src.Addr().IsValid():
		b.WriteString(c.Src.Addr().String() + " → ")
	}
	b.WriteString(c.Dst.String())
	iface := c.InIface
	if c.Dir == trace.Out {
		fmt.Fprintf(&b, " uid %d gid %d", c.UID, c.GID)
		if c.Mark != 0 {
			fmt.Fprintf(&b, " mark %d", c.Mark)
		}
		iface = c.OutIface
	}
	if iface == "" {
		iface = "eth0"
	}
	if c.Dir == trace.In {
		b.WriteString(" on " + iface)
	} else {
		b.WriteString(" (remote via " + iface + ")")
	}
	return b.String()
}
