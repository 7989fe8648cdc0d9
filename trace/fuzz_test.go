package trace

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

// fuzzAddrs are destinations and sources that the random configurations' prefixes, DNS servers and
// loopback ranges name, and some they do not.
var fuzzAddrs = []netip.Addr{
	netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.16.3.4"), netip.MustParseAddr("10.96.0.10"),
	netip.MustParseAddr("192.168.1.7"), netip.MustParseAddr("172.20.0.1"), netip.MustParseAddr("127.0.0.1"),
	netip.MustParseAddr("127.1.2.3"), netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("127.0.0.6"),
	netip.MustParseAddr("fd00::5"), netip.MustParseAddr("fd00:8000::1"), netip.MustParseAddr("2001:db8::1"),
	netip.MustParseAddr("::1"), netip.MustParseAddr("::6"), netip.MustParseAddr("::127.0.0.53"),
	netip.MustParseAddr("::ffff:10.0.0.5"), {},
}

var fuzzPorts = []uint16{0, 53, 80, 8080, 15001, 15006, 15008, 15020, 15021, 15053, 15090}

var fuzzIfaces = []string{"", "eth0", "eth7", "veth3", "kv0", "kv1", "lo"}

// FuzzWalk walks random connections through the plans of random configurations (both plan shapes):
// Walk must not panic, must be deterministic, and its path must name rules of the plan.
func FuzzWalk(f *testing.F) {
	for i := range 8 {
		f.Add(uint64(i), uint64(i*7919), uint32(1337), uint32(1337), uint32(0), false)
		f.Add(uint64(i), uint64(i*104729), uint32(1000), uint32(202), uint32(1337), true)
	}
	f.Fuzz(func(t *testing.T, cfgSeed, connSeed uint64, uid, gid, mark uint32, native bool) {
		base := redirect.DefaultConfig()
		base.NativeNFTables = native
		cfg := randconfig.Config(rand.New(rand.NewPCG(cfgSeed, 0)), base)
		plan, err := redirect.Build(cfg)
		if err != nil {
			t.Fatalf("randconfig made an invalid config: %v", err)
		}
		r := rand.New(rand.NewPCG(connSeed, 1))
		pick := func(n int) int { return r.IntN(n) }
		c := Conn{
			Dir:      Direction(pick(3)),
			Proto:    []string{"tcp", "udp", "icmp"}[pick(3)],
			Src:      netip.AddrPortFrom(fuzzAddrs[pick(len(fuzzAddrs))], fuzzPorts[pick(len(fuzzPorts))]),
			Dst:      netip.AddrPortFrom(fuzzAddrs[pick(len(fuzzAddrs))], fuzzPorts[pick(len(fuzzPorts))]),
			UID:      uid,
			GID:      gid,
			InIface:  fuzzIfaces[pick(len(fuzzIfaces))],
			OutIface: fuzzIfaces[pick(len(fuzzIfaces))],
			Mark:     mark,
		}
		for range pick(3) {
			c.PodAddrs = append(c.PodAddrs, fuzzAddrs[pick(len(fuzzAddrs))])
		}
		res, err := Walk(&plan, c)
		again, err2 := Walk(&plan, c)
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(res, again) {
			t.Fatalf("Walk is not deterministic: %v / %v", err, err2)
		}
		if err != nil {
			return
		}
		for _, ref := range res.Path {
			if plan.Rule(ref) == nil {
				t.Fatalf("path names %s, which the plan lacks", ref)
			}
		}
		v := res.Verdict
		switch v.Kind {
		case Captured, TProxied:
			if v.Port == 0 || v.Listener == "" || !v.OrigDst.IsValid() {
				t.Fatalf("verdict %+v lacks its listener", v)
			}
		case Delivered, PassedThrough, Dropped:
		default:
			t.Fatalf("verdict kind %d", v.Kind)
		}
		_ = Format(&plan, res)
	})
}
