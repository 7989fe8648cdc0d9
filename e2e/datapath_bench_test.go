//go:build linux

package e2e

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// The data-path benchmark's workload, per row and round.
const (
	dpRoundTrips = 20000     // measured 64-byte round trips
	dpWarmup     = 2000      // round trips before measuring
	dpBulk       = 256 << 20 // bytes one way, each way
)

var dpRounds = flag.Int("datapath-rounds", 5, "BenchmarkDataPath: rounds over all rows; medians are reported")

// dpLocalVIP is the benchmark's service whose endpoint is the pingpong
// server on the pod's own 127.0.0.1.
var dpLocalVIP = netip.MustParseAddrPort("10.96.0.30:80")

// dpRow is one way of getting the app's bytes to the server.
type dpRow struct {
	name string
	m    *meshPod
	dial netip.AddrPort
	// check checks the path and addresses of a connection of this row.
	check func(r ppResult) error

	p50, p99, up, down []float64 // one per round
}

// dpTable is a server placement and its rows: no proxy, no interception,
// iptables, eBPF.
type dpTable struct {
	title string
	rows  []*dpRow
}

// BenchmarkDataPath measures what interception costs the bytes an app
// exchanges through its sidecar: the reference sidecar (refproxy as uid
// 1337, read/write loops) between a pingpong client in the pod and a
// pingpong server. Rows:
//
//   - no proxy: the app dials the server itself, for scale;
//   - no interception: no rules; the app dials 127.0.0.1:15001 itself and the
//     proxy relays to the server (refproxy -direct-upstream): what a
//     perfect, free interception would give;
//   - iptables: the injector's REDIRECT rules (shunt iptables, iptables-nft);
//   - eBPF: the same rules plus shunt ebpf load and join: connect(2) is
//     rewritten before a packet exists, sk_msg moves the bytes socket to socket.
//
// Two server placements, a table each: the remote namespace behind the veth
// (a real upstream), and the pod's own 127.0.0.1 reached through a service
// (the proxy's upstream leg is then loopback TCP, which neither iptables nor
// eBPF touch: what is left between the rows is the app ↔ proxy leg alone).
// Each pod, remote and cgroup serves one interception setup. Each round runs
// every row once, in an order that rotates from round to round: 64-byte round
// trips (p50 and p99 of dpRoundTrips after dpWarmup), then dpBulk bytes up
// (app → server, until the server confirms) and dpBulk down. The tables have
// the median over the rounds and, for p50, their range. `make bench` runs it
// with -benchtime 1x.
func BenchmarkDataPath(b *testing.B) {
	testutil.RequireRoot(b)
	f := ipv4
	remote := addr(f.remote, ppPort)
	local := addr(f.localhost, ppPort)
	direct := addr(f.localhost, 15001)
	want := func(path string, local netip.Addr, peer netip.AddrPort) func(ppResult) error {
		return func(r ppResult) error {
			got := peerPort.ReplaceAllString(r.Path, "peer=$1")
			l, _ := netip.ParseAddrPort(r.Local)
			if got != path || l.Addr() != local || r.Peer != peer.String() {
				return fmt.Errorf("path %q local %s peer %s, want %q local %s:* peer %s", got, r.Local, r.Peer, path, local, peer)
			}
			return nil
		}
	}
	service := []string{"-service", dpLocalVIP.String() + "=" + local.String()}

	plainRemote := newMeshPod(b)
	plainRemote.startProxy(b, "-direct-upstream", remote.String())
	plainLocal := newMeshPod(b)
	plainLocal.startProxy(b, "-direct-upstream", local.String())
	ipt := newMeshPod(b)
	ipt.iptables(b, defaultCapture...)
	ipt.startProxy(b, service...)
	bpf := newMeshPod(b)
	bpf.iptables(b, defaultCapture...)
	bpf.load(b)
	bpf.join(b, joinCapture...)
	bpf.startProxy(b, service...)

	toRemote := ppReply("remote", f.pod, remote)
	toLocal := ppReply("pod", f.localhost, local)
	tables := []*dpTable{
		{title: "server in the remote namespace, behind the veth", rows: []*dpRow{
			{name: "no proxy (app dials the server)", m: plainRemote, dial: remote, check: want(toRemote, f.pod, remote)},
			{name: "no interception (app dials 127.0.0.1:15001)", m: plainRemote, dial: direct,
				check: want(fmt.Sprintf("proxy=outbound direct=%s;", remote)+toRemote, f.localhost, direct)},
			{name: "iptables REDIRECT", m: ipt, dial: remote, check: want(viaOutbound(remote)+toRemote, f.pod, remote)},
			{name: "eBPF (connect + sk_msg)", m: bpf, dial: remote, check: want(viaOutbound(remote)+toRemote, f.localhost, remote)},
		}},
		{title: fmt.Sprintf("server on the pod's 127.0.0.1, as service %s", dpLocalVIP), rows: []*dpRow{
			{name: "no proxy (app dials the server)", m: plainLocal, dial: local, check: want(toLocal, f.localhost, local)},
			{name: "no interception (app dials 127.0.0.1:15001)", m: plainLocal, dial: direct,
				check: want(fmt.Sprintf("proxy=outbound direct=%s;", local)+toLocal, f.localhost, direct)},
			{name: "iptables REDIRECT", m: ipt, dial: dpLocalVIP, check: want(viaOutbound(dpLocalVIP)+toLocal, f.pod, dpLocalVIP)},
			{name: "eBPF (connect + sk_msg)", m: bpf, dial: dpLocalVIP, check: want(viaOutbound(dpLocalVIP)+toLocal, f.localhost, dpLocalVIP)},
		}},
	}

	// Programs that ancestors of the cgroups attached run in every row.
	inherited, err := testutil.CgroupPrograms(ipt.cg, true)
	if err != nil {
		b.Fatal(err)
	}
	before := bpf.status(b).Counters

	b.ResetTimer()
	for round := range *dpRounds {
		for _, t := range tables {
			for i := range t.rows {
				r := t.rows[(round+i)%len(t.rows)]
				client := func(args ...string) ppResult {
					res, err := r.m.pingpong(b, appUser, r.dial, args...)
					if err == nil {
						err = r.check(res)
					}
					if err != nil {
						b.Fatalf("%s, %s: pingpong %s: %v", t.title, r.name, strings.Join(args, " "), err)
					}
					return res
				}
				rr := client("-mode", "rr", "-size", "64", "-count", fmt.Sprint(dpRoundTrips), "-warmup", fmt.Sprint(dpWarmup))
				r.p50 = append(r.p50, float64(rr.P50NS))
				r.p99 = append(r.p99, float64(rr.P99NS))
				r.up = append(r.up, client("-mode", "up", "-bytes", fmt.Sprint(dpBulk)).MiBPerSec)
				r.down = append(r.down, client("-mode", "down", "-bytes", fmt.Sprint(dpBulk)).MiBPerSec)
			}
		}
	}
	b.StopTimer()
	// The eBPF rows are eBPF's work: every connection redirected at
	// connect(2), its bytes moved by sk_msg, no miss.
	delta := bpf.status(b).Counters.minus(before)
	conns := uint64(3 * len(tables) * *dpRounds)
	if delta.ConnectsRedirected != conns || delta.MessagesRedirected == 0 || delta.RedirectMisses != 0 {
		b.Fatalf("eBPF setup: counters grew by %+v, want %d connects redirected, messages redirected, no misses", delta, conns)
	}

	fmt.Printf("Data path: pingpong client (pod, uid 1000) -> refproxy (uid 1337, read/write loops, 32 KiB buffers) -> pingpong server. IPv4.\n")
	fmt.Printf("Per round and row: %d x 64 B round trips after %d warm-up, %d MiB up (until the server confirms), %d MiB down.\n",
		dpRoundTrips, dpWarmup, dpBulk>>20, dpBulk>>20)
	fmt.Printf("%d rounds, rows in rotating order, medians over the rounds; %d CPUs, shared with whatever else runs.\n", *dpRounds, runtime.NumCPU())
	if len(inherited) > 0 {
		fmt.Printf("Note: %d BPF programs attached to ancestor cgroups run in every row: %v\n", len(inherited), inherited)
	}
	for _, t := range tables {
		fmt.Printf("\n%s:\n", t.title)
		w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "path\trr p50\t(p50 range)\trr p99\tup MiB/s\tdown MiB/s\t")
		for _, r := range t.rows {
			fmt.Fprintf(w, "%s\t%s\t%s-%s\t%s\t%.0f\t%.0f\t\n", r.name, usf(median(r.p50)), usf(slices.Min(r.p50)), usf(slices.Max(r.p50)),
				usf(median(r.p99)), median(r.up), median(r.down))
		}
		ratio := func(of *dpRow, to *dpRow) string {
			return fmt.Sprintf("%.2fx\t\t%.2fx\t%.2fx\t%.2fx", median(of.p50)/median(to.p50), median(of.p99)/median(to.p99),
				median(of.up)/median(to.up), median(of.down)/median(to.down))
		}
		none, iptRow, bpfRow := t.rows[1], t.rows[2], t.rows[3]
		fmt.Fprintf(w, "eBPF / iptables\t%s\t\n", ratio(bpfRow, iptRow))
		fmt.Fprintf(w, "no interception / iptables\t%s\t\n", ratio(none, iptRow))
		fmt.Fprintf(w, "target for eBPF / iptables (issue 4)\t<= 0.60x\t\t\t>= 1.30x\t>= 1.30x\t\n")
		w.Flush()
	}
	fmt.Printf("\neBPF counters over its %d connections: connects_redirected %d, sockets_paired %d, messages_redirected %d, redirect_misses %d, origdst_answered %d\n",
		conns, delta.ConnectsRedirected, delta.SocketsPaired, delta.MessagesRedirected, delta.RedirectMisses, delta.OrigdstAnswered)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func usf(ns float64) string { return fmt.Sprintf("%.1f µs", ns/float64(time.Microsecond)) }
