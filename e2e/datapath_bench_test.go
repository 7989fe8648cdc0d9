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

	"github.com/shuntmesh/shunt/internal/testutil"
)

// The data-path benchmark's workload, per row and round.
const (
	dpRoundTrips      = 20000     // measured 64-byte round trips
	dpWarmup          = 2000      // round trips before measuring
	dpBulk            = 256 << 20 // bytes one way, each way
	dpConns           = 2000      // measured short connections
	dpConnWarmup      = 200       // short connections before measuring
	dpUDPQueries      = 2000      // measured DNS queries over UDP
	dpTCPQueries      = 1000      // measured DNS queries over TCP, a connection each
	dpQueryWarmup     = 100       // DNS queries before measuring, each network
	dpExchangeTimeout = "2s"      // a connection or query of the rate modes stalled after this
)

// dpConnPort is the servers' connection-rate port (pingpong serve -conn);
// dpDirectConnPort the outbound port of the second refproxy of the rows
// without interception, which relays to it.
const (
	dpConnPort       = 7072
	dpDirectConnPort = 15011
)

var (
	dpRounds = flag.Int("datapath-rounds", 5, "BenchmarkDataPath: rounds over all rows; medians and ranges are reported")
	dpAwake  = flag.Bool("datapath-awake", true,
		"BenchmarkDataPath: keep every CPU awake with a SCHED_IDLE busy loop during round trips, connections and DNS queries")
	dpProxy = flag.String("datapath-proxy", "",
		"BenchmarkDataPath: command (split at spaces, no shell) run as the sidecar instead of refproxy: any SO_ORIGINAL_DST proxy on :15001; see the benchmark's doc")
)

// dpLocalVIP and dpLocalConnVIP are the benchmark's services whose endpoints
// are the pingpong server on the pod's own 127.0.0.1: its -tcp and its
// -conn port.
var (
	dpLocalVIP     = netip.MustParseAddrPort("10.96.0.30:80")
	dpLocalConnVIP = netip.MustParseAddrPort("10.96.0.30:81")
)

// dpPath is where a row's client connects for one kind of run and what it
// must find there.
type dpPath struct {
	dial netip.AddrPort
	// tags is what the proxies on the way write, greeting the server's line
	// (peer ports removed): the path is tags + greeting.
	tags, greeting string
	// locals are the addresses the app's socket may be bound to; nil: not
	// checked (nor the peer).
	locals []netip.Addr
}

// dpRow is one way of getting the app's bytes to the server.
type dpRow struct {
	name  string
	short string // in the ratio rows
	m     *meshPod
	// a is the path of round trips and bulk (of UDP queries in the DNS
	// table), b of short connections (of TCP queries).
	a, b dpPath
	// relaxed: the path need only end with the greeting (a foreign
	// proxy's, which may write what it likes first).
	relaxed bool

	samples map[string][]float64 // per column key, one per round
	stalls  []string             // exchanges of the rate modes that stalled
	eagains int                  // blocking reads of the rate modes that ended early with EAGAIN
}

func (r *dpRow) add(key string, v float64) {
	if r.samples == nil {
		r.samples = map[string][]float64{}
	}
	r.samples[key] = append(r.samples[key], v)
}

// check checks the path and addresses res reports for p. Where a proxy
// tags the path, the tag is matched by its beginning up to its ";" (the
// e2e tests check the tags; a tag may grow, for example by the source
// address the proxy saw).
func (r *dpRow) check(res dpResult, p dpPath) error {
	got := peerPort.ReplaceAllString(res.Path, "peer=$1")
	ok := got == p.tags+p.greeting
	if !ok && (r.relaxed || p.tags != "") {
		ok = strings.HasPrefix(got, strings.TrimSuffix(p.tags, ";")) && strings.HasSuffix(got, p.greeting)
	}
	if !ok {
		return fmt.Errorf("path %q, want %q", got, p.tags+p.greeting)
	}
	if p.locals == nil {
		return nil
	}
	l, _ := netip.ParseAddrPort(res.Local)
	if !slices.Contains(p.locals, l.Addr()) || res.Peer != p.dial.String() {
		return fmt.Errorf("local %s peer %s, want local %v:* peer %s", res.Local, res.Peer, p.locals, p.dial)
	}
	return nil
}

// dpCol is a column of a table: a metric per round and row.
type dpCol struct {
	key, head string
	scale     float64 // the value shown is the sample divided by it
	format    string
	higher    bool // higher is better
	// target is eBPF / iptables' target, direct eBPF / no interception's;
	// 0 for none.
	target, direct float64
}

// dpTable is a table of the output: its columns, rows and how a row is
// measured in a round.
type dpTable struct {
	title   string
	cols    []dpCol
	rows    []*dpRow
	measure func(r *dpRow)
	// ipt and bpf are the rows of the eBPF / iptables ratio, direct the row
	// without interception (nil if none).
	ipt, bpf, direct *dpRow
}

// BenchmarkDataPath measures what interception costs the bytes, connections
// and DNS queries an app exchanges through its sidecar: the reference
// sidecar (refproxy as uid 1337, read/write loops) between a pingpong
// client in the pod and a pingpong server. Rows:
//
//   - no proxy: the app dials the server itself, for scale;
//   - no interception: no rules; the app dials 127.0.0.1:15001 itself and the
//     proxy relays to the server (refproxy -direct-upstream; for short
//     connections a second refproxy on 127.0.0.1:15011): what a perfect,
//     free interception would give;
//   - iptables: the injector's REDIRECT rules (shunt iptables, iptables-nft);
//   - eBPF: the same rules plus shunt ebpf load and join: connect(2) is
//     rewritten before a packet exists, sk_msg moves the bytes socket to socket.
//
// Two server placements, a table each: the remote namespace behind the veth
// (a real upstream), and the pod's own 127.0.0.1 reached through a service
// (the proxy's upstream leg is then loopback TCP, which neither iptables nor
// eBPF touch: what is left between the rows is the app ↔ proxy leg alone).
// A third table has DNS through the DNS proxy (refproxy's, on 15053) to a
// server in the remote namespace, in pods captured with --redirect-dns
// --dns-servers=<remote>: the iptables rules, and a pod joined to eBPF with
// the same DNS settings (whatever it does with DNS today, it is measured),
// against the app asking the server itself.
//
// Each pod, remote and cgroup serves one interception setup. Each round runs
// every row once, in an order that rotates from round to round: 64-byte round
// trips (p50 and p99 of dpRoundTrips after dpWarmup) and dpConns short
// connections after dpConnWarmup (connect, one byte each way, close: pingpong
// -mode conn), then dpBulk bytes up (app → server, until the server
// confirms) and dpBulk down; in the DNS table dpUDPQueries UDP queries and
// dpTCPQueries TCP queries (a connection each), one at a time. During the
// latency runs (round trips, connections, queries) one SCHED_IDLE busy loop
// per CPU keeps the CPUs from idling between messages, which on VMs makes
// round trips bimodal (-datapath-awake=false turns it off). Every cell is
// the median over the rounds and their range; the ratio rows are ratios of
// the medians with the range of the per-round ratios, and the targets of
// issue 16 are judged against that range: met, missed, or inside the noise
// when the target lies within it. A short connection or DNS query whose
// answer does not come within dpExchangeTimeout has stalled: it is left out
// of the figures and listed under its table, and the benchmark fails after
// printing the tables (an app would have waited forever), as it does when
// the eBPF counters show a redirect miss. `make bench` runs it with -benchtime 1x;
// the 5 default rounds took 3.5 minutes on a 2-CPU VM under a load of 5–11,
// setup included; a round is about 40 s there.
//
// -datapath-proxy CMD runs CMD (split at spaces) as the sidecar of the
// iptables and eBPF pods instead of refproxy, to measure with any proxy
// that honours the contract: it runs as uid and gid 1337 in the pod's network
// namespace and cgroup, is ready once it listens on TCP port 15001 (at least
// IPv4), relays each connection accepted there to its original destination
// (getsockopt SOL_IP SO_ORIGINAL_DST) as a transparent byte stream, both
// ways, half-closing each side when the other is done, and is killed
// (SIGKILL) when the benchmark ends. Only the server's greeting is checked at
// the end of the path then (bytes a proxy writes before it are allowed).
// Without refproxy's -direct-upstream and service map, the rows without
// interception and the table of the pod's own 127.0.0.1 are left out; the
// DNS table keeps refproxy as the DNS proxy (istio-agent's part, not the
// sidecar's).
func BenchmarkDataPath(b *testing.B) {
	testutil.RequireRoot(b)
	f := ipv4
	foreign := strings.Fields(*dpProxy)
	pp := bins.Path(b, pkgPingpong)
	refproxy := bins.Path(b, pkgRefproxy)
	remote, remoteConn := addr(f.remote, ppPort), addr(f.remote, dpConnPort)
	local, localConn := addr(f.localhost, ppPort), addr(f.localhost, dpConnPort)
	remoteDNS := addr(f.remote, dnsPort)
	dnsServers := "--dns-servers=" + ipv4.remote.String() + "," + ipv6.remote.String()

	// newPod is a meshPod whose remote also serves connections and DNS, and
	// whose pod serves connections.
	newPod := func() *meshPod {
		m := newMeshPod(b)
		m.remote.Start(b, &root, pp, "serve", "-name", "remote", "-conn", fmt.Sprint(dpConnPort), "-dns", fmt.Sprint(dnsPort))
		m.cg.Start(b, m.ns, &appUser, pp, "serve", "-name", "pod", "-conn", fmt.Sprint(dpConnPort))
		return m
	}
	// direct starts the refproxies of the rows without interception.
	direct := func(m *meshPod, rr, conn netip.AddrPort) {
		m.startProxy(b, "-direct-upstream", rr.String())
		m.cg.Start(b, m.ns, &proxyUser, refproxy, "-mode", "REDIRECT", "-outbound-port", fmt.Sprint(dpDirectConnPort),
			"-inbound-port", "15016", "-dns-port", "15063", "-direct-upstream", conn.String())
	}
	sidecar := func(m *meshPod) {
		if len(foreign) > 0 {
			startForeignProxy(b, m, foreign)
			return
		}
		m.startProxy(b, "-service", dpLocalVIP.String()+"="+local.String(), "-service", dpLocalConnVIP.String()+"="+localConn.String())
	}

	plainRemote := newPod()
	var plainLocal *meshPod
	if len(foreign) == 0 {
		direct(plainRemote, remote, remoteConn)
		plainLocal = newPod()
		direct(plainLocal, local, localConn)
	}
	ipt := newPod()
	ipt.iptables(b, defaultCapture...)
	sidecar(ipt)
	bpf := newPod()
	bpf.iptables(b, defaultCapture...)
	bpf.load(b)
	bpf.join(b, joinCapture...)
	sidecar(bpf)
	dnsIpt := newPod()
	dnsIpt.iptables(b, append(slices.Clone(defaultCapture), "--redirect-dns", dnsServers)...)
	dnsIpt.startProxy(b, "-dns-upstream", remoteDNS.String())
	dnsBPF := newPod()
	dnsBPF.iptables(b, append(slices.Clone(defaultCapture), "--redirect-dns", dnsServers)...)
	dnsBPF.load(b)
	dnsBPF.join(b, append(slices.Clone(joinCapture), "--redirect-dns", dnsServers)...)
	dnsBPF.startProxy(b, "-dns-upstream", remoteDNS.String())

	waker := newCPUWaker(b)
	latency := func(run func()) {
		if *dpAwake {
			waker.start()
			defer waker.stop()
		}
		run()
	}
	client := func(t *dpTable, r *dpRow, p dpPath, args ...string) dpResult {
		res, err := dpClient(b, r.m, p.dial, args...)
		if err == nil {
			err = r.check(res, p)
		}
		if err != nil {
			b.Fatalf("%s, %s: pingpong -addr %s %s: %v", t.title, r.name, p.dial, strings.Join(args, " "), err)
		}
		if res.Stalled > 0 {
			r.stalls = append(r.stalls, fmt.Sprintf("%s: %d of %d stalled, first %s", args[1], res.Stalled, res.Stalled+res.Count, res.Stall))
		}
		r.eagains += res.EAGAINs
		return res
	}

	tcpCols := []dpCol{
		{key: "p50", head: "rr p50 µs", scale: 1e3, format: "%.1f", target: 0.90, direct: 1.00},
		{key: "p99", head: "rr p99 µs", scale: 1e3, format: "%.1f"},
		{key: "conn", head: "conn/s", scale: 1, format: "%.0f", higher: true, target: 1.00},
		{key: "up", head: "up MiB/s", scale: 1, format: "%.0f", higher: true, target: 1.30},
		{key: "down", head: "down MiB/s", scale: 1, format: "%.0f", higher: true, target: 1.30},
	}
	var tables []*dpTable
	tcpTable := func(title string, plain *meshPod, peer netip.Addr, rrSrv, connSrv, rrVIP, connVIP netip.AddrPort, name string) {
		t := &dpTable{title: title, cols: tcpCols}
		path := func(dial, srv netip.AddrPort, tags string, locals ...netip.Addr) dpPath {
			return dpPath{dial: dial, tags: tags, greeting: ppReply(name, peer, srv), locals: locals}
		}
		outbound := func(vip netip.AddrPort) string {
			if len(foreign) > 0 {
				return ""
			}
			return viaOutbound(vip)
		}
		t.rows = append(t.rows, &dpRow{name: "no proxy (app dials the server)", m: plain,
			a: path(rrSrv, rrSrv, "", peer), b: path(connSrv, connSrv, "", peer)})
		if len(foreign) == 0 {
			t.direct = &dpRow{name: "no interception (app dials 127.0.0.1:15001)", short: "no interception", m: plain,
				a: path(addr(f.localhost, 15001), rrSrv, fmt.Sprintf("proxy=outbound direct=%s;", rrSrv), f.localhost),
				b: path(addr(f.localhost, dpDirectConnPort), connSrv, fmt.Sprintf("proxy=outbound direct=%s;", connSrv), f.localhost)}
			t.rows = append(t.rows, t.direct)
		}
		t.ipt = &dpRow{name: "iptables REDIRECT", short: "iptables", m: ipt, relaxed: len(foreign) > 0,
			a: path(rrVIP, rrSrv, outbound(rrVIP), f.pod), b: path(connVIP, connSrv, outbound(connVIP), f.pod)}
		// eBPF redirects connect(2) to 127.0.0.1 from the pod's own address,
		// as REDIRECT does.
		t.bpf = &dpRow{name: "eBPF (connect + sk_msg)", short: "eBPF", m: bpf, relaxed: len(foreign) > 0,
			a: path(rrVIP, rrSrv, outbound(rrVIP), f.pod), b: path(connVIP, connSrv, outbound(connVIP), f.pod)}
		t.rows = append(t.rows, t.ipt, t.bpf)
		t.measure = func(r *dpRow) {
			latency(func() {
				rr := client(t, r, r.a, "-mode", "rr", "-size", "64", "-count", fmt.Sprint(dpRoundTrips), "-warmup", fmt.Sprint(dpWarmup))
				r.add("p50", float64(rr.P50NS))
				r.add("p99", float64(rr.P99NS))
				r.add("conn", client(t, r, r.b, "-mode", "conn", "-count", fmt.Sprint(dpConns), "-warmup", fmt.Sprint(dpConnWarmup),
					"-timeout", dpExchangeTimeout).PerSec)
			})
			r.add("up", client(t, r, r.a, "-mode", "up", "-bytes", fmt.Sprint(dpBulk)).MiBPerSec)
			r.add("down", client(t, r, r.a, "-mode", "down", "-bytes", fmt.Sprint(dpBulk)).MiBPerSec)
		}
		tables = append(tables, t)
	}
	tcpTable("server in the remote namespace, behind the veth", plainRemote, f.pod, remote, remoteConn, remote, remoteConn, "remote")
	if len(foreign) == 0 {
		tcpTable(fmt.Sprintf("server on the pod's 127.0.0.1, as services %s and %s", dpLocalVIP, dpLocalConnVIP),
			plainLocal, f.localhost, local, localConn, dpLocalVIP, dpLocalConnVIP, "pod")
	}

	// DNS: the server answers UDP with "pingpong=remote peer=IP:PORT" (no
	// local address), TCP with the full greeting.
	udpGreeting := fmt.Sprintf("pingpong=remote peer=%s", f.pod)
	tcpGreeting := ppReply("remote", f.pod, remoteDNS)
	dns := &dpTable{title: fmt.Sprintf("DNS to %s through the DNS proxy (refproxy, :15053), pods captured with --redirect-dns", remoteDNS),
		cols: []dpCol{
			{key: "udp", head: "UDP queries/s", scale: 1, format: "%.0f", higher: true, target: 1.00},
			{key: "udp p50", head: "UDP p50 µs", scale: 1e3, format: "%.1f"},
			{key: "tcp", head: "TCP queries/s", scale: 1, format: "%.0f", higher: true, target: 1.00},
			{key: "tcp p50", head: "TCP p50 µs", scale: 1e3, format: "%.1f"},
		}}
	dns.ipt = &dpRow{name: "iptables (--redirect-dns)", short: "iptables", m: dnsIpt,
		a: dpPath{dial: remoteDNS, tags: "dns=proxy;", greeting: udpGreeting},
		b: dpPath{dial: remoteDNS, tags: fmt.Sprintf("dns=proxy orig=%s;", remoteDNS), greeting: tcpGreeting}}
	dns.bpf = &dpRow{name: "eBPF pod (join --redirect-dns)", short: "eBPF", m: dnsBPF, a: dns.ipt.a, b: dns.ipt.b}
	dns.rows = []*dpRow{
		{name: "no DNS proxy (app asks the server)", m: plainRemote,
			a: dpPath{dial: remoteDNS, greeting: udpGreeting}, b: dpPath{dial: remoteDNS, greeting: tcpGreeting}},
		dns.ipt, dns.bpf,
	}
	dns.measure = func(r *dpRow) {
		latency(func() {
			u := client(dns, r, r.a, "-mode", "dns", "-network", "udp", "-count", fmt.Sprint(dpUDPQueries),
				"-warmup", fmt.Sprint(dpQueryWarmup), "-timeout", dpExchangeTimeout)
			r.add("udp", u.PerSec)
			r.add("udp p50", float64(u.P50NS))
			t := client(dns, r, r.b, "-mode", "dns", "-network", "tcp", "-count", fmt.Sprint(dpTCPQueries),
				"-warmup", fmt.Sprint(dpQueryWarmup), "-timeout", dpExchangeTimeout)
			r.add("tcp", t.PerSec)
			r.add("tcp p50", float64(t.P50NS))
		})
	}
	tables = append(tables, dns)

	// Programs that ancestors of the cgroups attached run in every row.
	inherited, err := testutil.CgroupPrograms(ipt.cg, true)
	if err != nil {
		b.Fatal(err)
	}
	before, dnsBefore := bpf.status(b).Counters, dnsBPF.status(b).Counters

	b.ResetTimer()
	for round := range *dpRounds {
		for _, t := range tables {
			for i := range t.rows {
				t.measure(t.rows[(round+i)%len(t.rows)])
			}
		}
	}
	b.StopTimer()

	delta := bpf.status(b).Counters.minus(before)
	dnsDelta := dnsBPF.status(b).Counters.minus(dnsBefore)

	// Where an eBPF connection's time in the programs goes: one more run of
	// short connections with the kernel's run-time statistics on, outside the
	// rounds (they cost two clock reads per program run).
	cost := progCost{pins: bpf.pins}
	first := tables[0]
	cost.measure(b, 1+dpConnWarmup+dpConns, func() {
		client(first, first.bpf, first.bpf.b, "-mode", "conn", "-count", fmt.Sprint(dpConns), "-warmup", fmt.Sprint(dpConnWarmup),
			"-timeout", dpExchangeTimeout)
	})

	proxy := "refproxy (uid 1337, read/write loops, 32 KiB buffers)"
	if len(foreign) > 0 {
		proxy = fmt.Sprintf("%q (uid 1337)", *dpProxy)
	}
	fmt.Printf("Data path: pingpong client (pod, uid 1000) -> %s -> pingpong server. IPv4.\n", proxy)
	fmt.Printf("Per round and row: %d x 64 B round trips after %d warm-up; %d short connections after %d (connect, 1 byte each way, close);\n",
		dpRoundTrips, dpWarmup, dpConns, dpConnWarmup)
	fmt.Printf("%d MiB up (until the server confirms), %d MiB down; DNS: %d UDP queries and %d TCP queries (a connection each) after %d each, one at a time.\n",
		dpBulk>>20, dpBulk>>20, dpUDPQueries, dpTCPQueries, dpQueryWarmup)
	fmt.Printf("%d rounds, rows in rotating order; cells: median over the rounds (min–max); ratios: of the medians (min–max of the per-round ratios).\n", *dpRounds)
	awake := "CPUs kept awake during round trips, connections and DNS queries: a SCHED_IDLE busy loop per CPU"
	if !*dpAwake {
		awake = "CPUs free to idle between messages (-datapath-awake=false)"
	}
	fmt.Printf("%s; %d CPUs, shared with whatever else runs.\n", awake, runtime.NumCPU())
	if len(inherited) > 0 {
		fmt.Printf("Note: %d BPF programs attached to ancestor cgroups run in every row: %v\n", len(inherited), inherited)
	}
	for _, t := range tables {
		t.print()
	}
	fmt.Printf("\nTargets (issue 16): met when every per-round ratio meets it, missed when none does, else inside the noise.\n")
	fmt.Printf("\nThe eBPF programs' run time per short connection (%s; one more run of %d connections with BPF run-time statistics on;\n"+
		"the app's and the proxy's sockets both run them):\n%s", first.title, cost.conns, cost.String())
	// The eBPF rows are eBPF's work: every connection redirected at
	// connect(2) (round trips, up, down, the conn probe, the short
	// connections), its bytes moved by sk_msg. The DNS pod's TCP queries
	// are redirected at connect(2) too. A redirect miss is the data path's
	// designed fallback, not a failure: an app that writes before the
	// proxy's end of its connection is established (the last ACK still
	// queued, which happens under load) sends that connection's bytes
	// through TCP; the misses are reported.
	conns := uint64((len(tables) - 1) * *dpRounds * (3 + 1 + dpConnWarmup + dpConns))
	tcpQueries := uint64(*dpRounds * (1 + dpQueryWarmup + dpTCPQueries))
	for _, c := range []struct {
		name string
		n    uint64
		d    ebpfCounters
	}{{"eBPF pod", conns, delta}, {"eBPF DNS pod", tcpQueries, dnsDelta}} {
		fmt.Printf("%s counters over its %d TCP connections: connects_redirected %d, sockets_paired %d, messages_redirected %d, redirect_misses %d, origdst_answered %d\n",
			c.name, c.n, c.d.ConnectsRedirected, c.d.SocketsPaired, c.d.MessagesRedirected, c.d.RedirectMisses, c.d.OrigdstAnswered)
	}
	if delta.ConnectsRedirected != conns || delta.MessagesRedirected == 0 {
		b.Errorf("eBPF setup: counters grew by %+v, want %d connects redirected, messages redirected", delta, conns)
	}
	if dnsDelta.ConnectsRedirected < tcpQueries {
		b.Errorf("eBPF DNS setup: counters grew by %+v, want at least %d connects redirected (the TCP queries)", dnsDelta, tcpQueries)
	}
	// A stalled exchange is one an app would wait on forever.
	for _, t := range tables {
		for _, r := range t.rows {
			for _, s := range r.stalls {
				b.Errorf("%s, %s: %s", t.title, r.name, s)
			}
		}
	}
}

// print writes t: a row per path, the ratio rows and the targets.
func (t *dpTable) print() {
	fmt.Printf("\n%s:\n", t.title)
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	line := func(name string, cell func(c dpCol) string) {
		fmt.Fprint(w, name, "\t")
		for _, c := range t.cols {
			fmt.Fprint(w, cell(c), "\t")
		}
		fmt.Fprintln(w)
	}
	line("path", func(c dpCol) string { return c.head })
	for _, r := range t.rows {
		line(r.name, func(c dpCol) string {
			s := r.samples[c.key]
			v := func(x float64) string { return fmt.Sprintf(c.format, x/c.scale) }
			return fmt.Sprintf("%s (%s–%s)", v(median(s)), v(slices.Min(s)), v(slices.Max(s)))
		})
	}
	ratio := func(of, to *dpRow) {
		line(of.short+" / "+to.short, func(c dpCol) string {
			rs := perRound(of, to, c.key)
			return fmt.Sprintf("%.2fx (%.2f–%.2f)", median(of.samples[c.key])/median(to.samples[c.key]), slices.Min(rs), slices.Max(rs))
		})
	}
	target := func(of, to *dpRow, want func(c dpCol) float64) {
		line("target "+of.short+" / "+to.short, func(c dpCol) string {
			if want(c) == 0 {
				return ""
			}
			op := "<="
			if c.higher {
				op = ">="
			}
			return fmt.Sprintf("%s %.2fx: %s", op, want(c), verdict(perRound(of, to, c.key), want(c), c.higher))
		})
	}
	ratio(t.bpf, t.ipt)
	if t.direct != nil {
		ratio(t.bpf, t.direct)
		ratio(t.direct, t.ipt)
	}
	target(t.bpf, t.ipt, func(c dpCol) float64 { return c.target })
	if t.direct != nil {
		target(t.bpf, t.direct, func(c dpCol) float64 { return c.direct })
	}
	w.Flush()
	for _, r := range t.rows {
		for _, s := range r.stalls {
			fmt.Printf("STALLED (left out of the figures): %s, %s\n", r.name, s)
		}
		if r.eagains > 0 {
			fmt.Printf("%s: %d blocking reads ended early with EAGAIN and were polled and retried, as an event loop does\n", r.name, r.eagains)
		}
	}
}

// perRound returns of's samples of key divided by to's, round by round.
func perRound(of, to *dpRow, key string) []float64 {
	rs := make([]float64, len(of.samples[key]))
	for i, x := range of.samples[key] {
		rs[i] = x / to.samples[key][i]
	}
	return rs
}

// verdict judges the per-round ratios rs against target: "met" when all
// meet it, "missed" when none does, else "inside the noise".
func verdict(rs []float64, target float64, higher bool) string {
	meets := func(x float64) bool {
		if higher {
			return x >= target
		}
		return x <= target
	}
	switch lo, hi := meets(slices.Min(rs)), meets(slices.Max(rs)); {
	case lo && hi:
		return "met"
	case !lo && !hi:
		return "missed"
	}
	return "inside the noise"
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
