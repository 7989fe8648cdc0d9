package podroute

import (
	"net/netip"
	"testing"
)

func TestIPv6Of(t *testing.T) {
	a := func(ss ...string) []netip.Addr {
		out := make([]netip.Addr, len(ss))
		for i, s := range ss {
			out[i] = netip.MustParseAddr(s)
		}
		return out
	}
	for _, tc := range []struct {
		addrs     []netip.Addr
		dualStack bool
		want      bool
	}{
		{nil, false, false},
		{a("127.0.0.1", "::1"), true, false},
		{a("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), false, false},
		{a("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), true, true},
		{a("::1", "fe80::1", "fd00::5", "10.0.0.5"), false, true},
		{a("fe80::1", "10.0.0.5"), true, false},
		{a("::ffff:10.0.0.5"), false, false},
	} {
		if got := ipv6Of(tc.addrs, tc.dualStack); got != tc.want {
			t.Errorf("ipv6Of(%v, dualStack=%v) = %v, want %v", tc.addrs, tc.dualStack, got, tc.want)
		}
	}
}
