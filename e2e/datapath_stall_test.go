//go:build linux

package e2e

import (
	"fmt"
	"slices"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// dpStallConns is how many short connections BenchmarkDataPathStalls makes
// per run, dpStallRuns how many runs per pod.
const (
	dpStallConns = 8000
	dpStallRuns  = 3
)

// BenchmarkDataPathStalls makes many short connections (pingpong -mode
// conn: connect, write one byte at once, read the proxy's tag and the byte
// back up to the end of the stream, close) from an app in an eBPF pod to the
// remote, through refproxy, once with sk_msg and once joined with
// --no-sk-msg, and reports per pod the connections that stalled (no byte or
// no end of stream within 2 s) and how the eBPF counters grew. It fails if
// any stalled or an sk_msg redirect missed: the reproduction of a stall the
// data-path benchmark found, 1 in 3000 to 5000 connections with sk_msg on a
// loaded 2-CPU VM, with about as many redirect misses, and none without
// sk_msg. A client that writes later after connect (Go's net package, at
// half the rate) saw neither in 32000 connections.
func BenchmarkDataPathStalls(b *testing.B) {
	testutil.RequireRoot(b)
	pp := bins.Path(b, pkgPingpong)
	to := addr(ipv4.remote, dpConnPort)
	for _, skMsg := range []bool{true, false} {
		m := newMeshPod(b)
		m.remote.Start(b, &root, pp, "serve", "-name", "remote", "-conn", fmt.Sprint(dpConnPort))
		m.iptables(b, defaultCapture...)
		m.load(b)
		join := slices.Clone(joinCapture)
		if !skMsg {
			join = append(join, "--no-sk-msg")
		}
		m.join(b, join...)
		m.startProxy(b)
		before := m.status(b).Counters
		stalled := 0
		for run := range dpStallRuns {
			res, err := dpClient(b, m, to, "-mode", "conn", "-count", fmt.Sprint(dpStallConns), "-warmup", "0", "-timeout", dpExchangeTimeout)
			if err != nil {
				b.Fatalf("sk_msg %t, run %d: %v", skMsg, run, err)
			}
			fmt.Printf("sk_msg %t, run %d: %d connections, %.0f/s, %d stalled %s\n", skMsg, run, dpStallConns, res.PerSec, res.Stalled, res.Stall)
			stalled += res.Stalled
		}
		d := m.status(b).Counters.minus(before)
		fmt.Printf("sk_msg %t: %d of %d stalled; counters grew by %+v\n", skMsg, stalled, dpStallRuns*dpStallConns, d)
		if stalled > 0 || d.RedirectMisses > 0 {
			b.Errorf("sk_msg %t: %d connections stalled, %d redirect misses", skMsg, stalled, d.RedirectMisses)
		}
	}
}
