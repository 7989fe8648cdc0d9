//go:build linux

package e2e

import (
	"encoding/json"
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

// TestEBPFDNS proves DNS capture (F9) on the eBPF data path with real queries: UDP from a
// connected socket (as Go's and glibc's resolvers send) and from an unconnected one (sendto, the
// answer's source checked), and TCP, in both families, to the DNS proxy of the reference sidecar;
// its answers show the server the app asked. The proxy's own queries, and queries to a server not
// listed, go straight to the server. In "ebpf_only" the pod's iptables rules have no DNS capture,
// so only the programs can send a query to the proxy; in "with_iptables_dns" the rules capture DNS
// too, underneath, and the counters tell the programs' work from theirs.
func TestEBPFDNS(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("ebpf_only", func(t *testing.T) {
		t.Parallel()
		testEBPFDNS(t, false)
	})
	t.Run("with_iptables_dns", func(t *testing.T) {
		t.Parallel()
		testEBPFDNS(t, true)
	})
}

// dnsProbe is one DNS query from the pod and what must come of it: the answer, with the peers'
// ports removed, and how much each counter of `shunt ebpf status` grows.
type dnsProbe struct {
	name    string
	as      testutil.Cred
	network string // "tcp", "udp" (connected) or "sendto" (unconnected UDP)
	to      netip.AddrPort
	want    string
	grow    map[string]uint64 // counters not named must not grow
}

func testEBPFDNS(t *testing.T, rulesDNS bool) {
	m := newMeshPod(t)
	var servers []string
	for _, f := range families {
		servers = append(servers, f.remote.String())
	}
	dnsFlags := []string{"--redirect-dns", "--dns-servers=" + strings.Join(servers, ",")}
	rules := slices.Clone(defaultCapture)
	if rulesDNS {
		rules = append(rules, dnsFlags...)
	}
	m.iptables(t, rules...)
	// DNS servers on the remote, each on its own address so that it answers from it: the listed
	// server on remote, an unlisted one on far.
	var dnsAddrs []string
	for _, f := range families {
		dnsAddrs = append(dnsAddrs, addr(f.remote, dnsPort).String(), addr(f.far, dnsPort).String())
	}
	m.remote.Start(t, &root, bins.Path(t, pkgEchoserver), "serve", "-name", "remote", "-dns", strings.Join(dnsAddrs, ","))
	m.load(t)
	m.join(t, append(slices.Clone(joinCapture), dnsFlags...)...)
	var upstreams []string
	for _, f := range families {
		upstreams = append(upstreams, "-dns-upstream", addr(f.remote, dnsPort).String())
	}
	m.startProxy(t, upstreams...)

	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			listed, unlisted := addr(f.remote, dnsPort), addr(f.far, dnsPort)
			proxied := "dns=proxy;" + dnsAnswer("remote", f.pod)
			direct := dnsAnswer("remote", f.pod)
			m.runDNSProbes(t, []dnsProbe{
				// read(2) on the connected socket: no source to rewrite.
				{"app_udp", appUser, "udp", listed, proxied, map[string]uint64{"dns_redirected": 1}},
				{"app_udp_sendto", appUser, "sendto", listed, proxied, map[string]uint64{"dns_redirected": 1, "dns_answered": 1}},
				{"app_tcp", appUser, "tcp", listed, fmt.Sprintf("dns=proxy orig=%s;", listed) + direct,
					map[string]uint64{"connects_redirected": 1, "origdst_answered": 1}},
				{"proxy_udp", proxyUser, "udp", listed, direct, nil},
				{"proxy_udp_sendto", proxyUser, "sendto", listed, direct, nil},
				{"proxy_tcp", proxyUser, "tcp", listed, direct, nil},
				{"proxy_gid_udp", proxyGID, "udp", listed, direct, nil},
				{"app_udp_unlisted_server", appUser, "sendto", unlisted, direct, nil},
			})
		})
	}

	// --capture-all-dns: the unlisted server's queries go to the proxy too, and its answer
	// comes from the server asked.
	m.join(t, append(slices.Clone(joinCapture), "--redirect-dns", "--capture-all-dns")...)
	for _, f := range families {
		t.Run("capture_all_dns/"+f.name, func(t *testing.T) {
			unlisted := addr(f.far, dnsPort)
			m.runDNSProbes(t, []dnsProbe{
				{"app_udp_sendto", appUser, "sendto", unlisted, "dns=proxy;" + dnsAnswer("remote", f.pod),
					map[string]uint64{"dns_redirected": 1, "dns_answered": 1}},
				{"proxy_udp_sendto", proxyUser, "sendto", unlisted, dnsAnswer("remote", f.pod), nil},
			})
		})
	}

	// Joined without DNS capture: the programs leave DNS alone, and the rules capture it where
	// they have DNS capture.
	m.join(t, joinCapture...)
	for _, f := range families {
		t.Run("ebpf_without_dns/"+f.name, func(t *testing.T) {
			want := dnsAnswer("remote", f.pod)
			if rulesDNS {
				want = "dns=proxy;" + want
			}
			m.runDNSProbes(t, []dnsProbe{
				{"app_udp", appUser, "udp", addr(f.remote, dnsPort), want, nil},
				{"app_udp_sendto", appUser, "sendto", addr(f.remote, dnsPort), want, nil},
			})
		})
	}
}

// runDNSProbes runs each probe as a subtest, from the pod's cgroup.
func (m *meshPod) runDNSProbes(t *testing.T, probes []dnsProbe) {
	t.Helper()
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			before := m.counters(t)
			got := m.dnsQuery(t, p.as, p.network, p.to)
			after := m.counters(t)
			if got != p.want {
				t.Errorf("%s %s as %v:\n got: %s\nwant: %s", p.network, p.to, p.as, got, p.want)
			}
			for name, v := range after {
				if d := v - before[name]; d != p.grow[name] {
					t.Errorf("counter %s grew by %d, want %d", name, d, p.grow[name])
				}
			}
			for name := range p.grow {
				if _, ok := after[name]; !ok {
					t.Errorf("shunt ebpf status --json has no counter %s", name)
				}
			}
		})
	}
}

// dnsQuery sends one DNS query from the pod's cgroup as cred, with echoserver client, and returns
// the answer with the peers' ports removed, or the client's error.
func (m *meshPod) dnsQuery(t *testing.T, cred testutil.Cred, network string, to netip.AddrPort) string {
	t.Helper()
	args := []string{bins.Path(t, pkgEchoserver), "client", "-" + network, to.String()}
	if network == "sendto" {
		args = []string{bins.Path(t, pkgEchoserver), "client", "-udp", to.String(), "-sendto"}
	}
	out, err := m.cg.Exec(m.ns, &cred, args...)
	if err != nil {
		return fmt.Sprintf("ERROR %v (read %q)", err, out)
	}
	return peerPort.ReplaceAllString(strings.TrimSpace(string(out)), "peer=$1")
}

// counters returns the counters of `shunt ebpf status --json` by name, but for those that count
// what other sockets of the pod do too (the sk_msg ones).
func (m *meshPod) counters(t testing.TB) map[string]uint64 {
	t.Helper()
	out := m.mustEBPF(t, "status", "--pin-dir", m.pins, "--json")
	var s struct {
		Counters map[string]uint64 `json:"counters"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("shunt ebpf status --json: %v\n%s", err, out)
	}
	for _, name := range []string{"sockets_paired", "messages_redirected", "bytes_redirected", "messages_fallback",
		"redirect_misses", "peernames_answered"} {
		delete(s.Counters, name)
	}
	return s.Counters
}

// dnsBenchQueries is how many queries one row sends per round, after dnsBenchWarmup.
const (
	dnsBenchQueries = 3000
	dnsBenchWarmup  = 300
)

var dnsBenchRounds = flag.Int("dns-rounds", 5, "BenchmarkEBPFDNS: rounds over all rows; medians are reported")

// BenchmarkEBPFDNS measures DNS over UDP through the reference sidecar's DNS proxy: queries per
// second of an app in the pod asking the remote's server, one query at a time on one socket,
// IPv4, the proxy asking the remote in turn. Rows: the injector's rules with DNS capture (nat
// REDIRECT to 15053, conntrack zones) and the same rules with the eBPF data path joined with DNS
// capture on top (sendmsg or connect rewrite, recvmsg), each from a connected socket and with
// sendto(2); a pod each. Each round runs every row once, in an order that rotates; the table has
// the medians and ranges. Run it with -benchtime 1x.
func BenchmarkEBPFDNS(b *testing.B) {
	testutil.RequireRoot(b)
	f := ipv4
	server := addr(f.remote, dnsPort)
	dnsFlags := []string{"--redirect-dns", "--dns-servers=" + f.remote.String()}
	pod := func(ebpf bool) *meshPod {
		m := newMeshPod(b)
		m.iptables(b, append(slices.Clone(defaultCapture), dnsFlags...)...)
		m.remote.Start(b, &root, bins.Path(b, pkgEchoserver), "serve", "-name", "remote", "-dns", server.String())
		if ebpf {
			m.load(b)
			m.join(b, append(slices.Clone(joinCapture), dnsFlags...)...)
		}
		m.startProxy(b, "-dns-upstream", server.String())
		return m
	}
	type row struct {
		name   string
		m      *meshPod
		sendto bool
		qps    []float64
	}
	rulesPod, ebpfPod := pod(false), pod(true)
	rows := []*row{
		{name: "iptables, connected", m: rulesPod},
		{name: "iptables, sendto", m: rulesPod, sendto: true},
		{name: "eBPF, connected", m: ebpfPod},
		{name: "eBPF, sendto", m: ebpfPod, sendto: true},
	}
	run := func(r *row, n int) float64 {
		args := []string{bins.Path(b, pkgEchoserver), "client", "-udp", server.String(), "-count", fmt.Sprint(n)}
		if r.sendto {
			args = append(args, "-sendto")
		}
		out, err := r.m.cg.Exec(r.m.ns, &appUser, args...)
		var got int
		var qps float64
		if _, serr := fmt.Sscanf(string(out), "queries=%d per_second=%g", &got, &qps); err != nil || serr != nil || got != n {
			b.Fatalf("%s: %v %v: %q", r.name, err, serr, out)
		}
		return qps
	}
	before := ebpfPod.counters(b)
	for _, r := range rows {
		run(r, dnsBenchWarmup)
	}
	for round := range *dnsBenchRounds {
		for i := range rows {
			r := rows[(i+round)%len(rows)]
			r.qps = append(r.qps, run(r, dnsBenchQueries))
		}
	}
	after := ebpfPod.counters(b)
	b.StopTimer()

	fmt.Printf("\nDNS over UDP through the DNS proxy, %d queries per row and round, %d rounds, rows in rotating order; %d CPUs, shared with whatever else runs.\n",
		dnsBenchQueries, *dnsBenchRounds, runtime.NumCPU())
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "row\tqueries/s\trange\tvs iptables\t\n")
	for i, r := range rows {
		ratio := median(r.qps) / median(rows[i%2].qps)
		fmt.Fprintf(w, "%s\t%.0f\t%.0f-%.0f\t%.2fx\t\n", r.name, median(r.qps), slices.Min(r.qps), slices.Max(r.qps), ratio)
		b.ReportMetric(median(r.qps), strings.NewReplacer(", ", "_", " ", "_").Replace(r.name)+"_queries/s")
	}
	w.Flush()
	sent := uint64(len(rows)/2) * uint64(dnsBenchWarmup+*dnsBenchRounds*dnsBenchQueries)
	fmt.Printf("eBPF counters over its %d queries: dns_redirected %d (a connect, or a datagram sent with sendto), dns_answered %d\n",
		sent, after["dns_redirected"]-before["dns_redirected"], after["dns_answered"]-before["dns_answered"])
}
