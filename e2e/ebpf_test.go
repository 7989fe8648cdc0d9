//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
)

const pkgPingpong = "github.com/shuntmesh/shunt/e2e/pingpong"

// The pingpong servers: the remote serves ppPort and ppExcludedPort on all
// its addresses (far included), the pod ppPort on all of its own.
const (
	ppPort         = 7070
	ppExcludedPort = 7071 // excluded from outbound capture (-o) where a test says so
)

// meshPod is a pod for the eBPF fast path: the e2e topology's pod and remote
// joined by eth0 (both families, the pod's default routes through it, far on
// the remote's lo), pingpong servers in both, a child cgroup v2 in which the
// pod's processes run (the cgroup programs are attached to it) and a pin
// directory of its own.
type meshPod struct {
	*pod
	cg   *testutil.Cgroup
	pins string
	env  []string // added to the environment of the pod's shunt ebpf commands
}

// newMeshPod builds a meshPod; everything it made goes when tb ends. Unlike
// newPod it takes a testing.TB (the data-path benchmark uses it too), has one
// link, serves pingpong instead of echoserver and runs the pod's processes in
// the cgroup; its rules are iptables-nft's.
func newMeshPod(tb testing.TB) *meshPod {
	tb.Helper()
	m := &meshPod{
		pod: &pod{variant: "nft", ns: testutil.NewNetNS(tb), remote: testutil.NewNetNS(tb)},
		cg:  testutil.NewCgroup(tb), pins: testutil.NewPinDir(tb),
	}
	p := m.pod
	p.ns.Run(tb, "ip", "link", "add", "eth0", "index", "10", "type", "veth",
		"peer", "name", "eth0", "index", "20", "netns", p.remote.Name)
	for _, f := range families {
		for _, a := range []struct {
			ns   *testutil.NetNS
			dev  string
			addr netip.Addr
			bits int
		}{
			{p.ns, "eth0", f.pod, f.bits},
			{p.remote, "eth0", f.remote, f.bits},
			{p.remote, "lo", f.far, f.far.BitLen()},
		} {
			args := []string{"ip", "addr", "add", netip.PrefixFrom(a.addr, a.bits).String(), "dev", a.dev}
			if a.addr.Is6() {
				args = append(args, "nodad")
			}
			a.ns.Run(tb, args...)
		}
	}
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		ns.Run(tb, "ip", "link", "set", "eth0", "addrgenmode", "none", "up")
	}
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		ns.WaitLinkUp(tb, "eth0")
	}
	for _, f := range families {
		p.ns.Run(tb, "ip", familyFlag(f), "route", "add", "default", "via", f.remote.String(), "dev", "eth0")
	}
	if t, ok := tb.(*testing.T); ok {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("pod %s state at failure:\n%s", p.ns.Name, p.dump(t))
			}
		})
	}
	pp := bins.Path(tb, pkgPingpong)
	p.remote.Start(tb, &root, pp, "serve", "-name", "remote", "-tcp", fmt.Sprintf("%d,%d", ppPort, ppExcludedPort))
	m.cg.Start(tb, p.ns, &appUser, pp, "serve", "-name", "pod", "-tcp", fmt.Sprint(ppPort))
	return m
}

// ebpfCmd runs `shunt ebpf ARGS...` in the test's own namespaces (it names
// the cgroup, pin directory and pod namespace by path; ip netns exec would
// hide /sys/fs/cgroup and /sys/fs/bpf behind a fresh sysfs) and returns its
// standard output; an error carries standard error and the exit status.
func (m *meshPod) ebpfCmd(tb testing.TB, args ...string) (string, error) {
	tb.Helper()
	cmd := exec.Command(bins.Path(tb, pkgShunt), append([]string{"ebpf"}, args...)...)
	if len(m.env) > 0 {
		cmd.Env = append(os.Environ(), m.env...)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("shunt ebpf %s: %w\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func (m *meshPod) mustEBPF(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := m.ebpfCmd(tb, args...)
	if err != nil {
		tb.Fatalf("%v\nstdout:\n%s", err, out)
	}
	return out
}

// load runs `shunt ebpf load` for the pod's cgroup and pin directory, and
// unloads when tb ends (before the pin directory and cgroup go).
func (m *meshPod) load(tb testing.TB) {
	tb.Helper()
	// Registered first: a load that fails half way is undone too.
	tb.Cleanup(func() {
		if tb.Failed() {
			out, err := m.ebpfCmd(tb, "status", "--pin-dir", m.pins, "--json")
			tb.Logf("$ shunt ebpf status --json at failure: %v\n%s", err, out)
		}
		if out, err := m.ebpfCmd(tb, "unload", "--pin-dir", m.pins); err != nil {
			tb.Errorf("%v\nstdout:\n%s", err, out)
		}
	})
	m.mustEBPF(tb, "load", "--cgroup", m.cg.Path, "--pin-dir", m.pins)
}

// join registers the pod with `shunt ebpf join` and flags.
func (m *meshPod) join(tb testing.TB, flags ...string) {
	tb.Helper()
	m.mustEBPF(tb, append([]string{"join", "--netns", m.ns.Path(), "--pin-dir", m.pins}, flags...)...)
}

// iptables programs the pod's rules with `shunt iptables` and flags.
func (m *meshPod) iptables(tb testing.TB, flags ...string) {
	tb.Helper()
	argv := append(append([]string{bins.Path(tb, pkgShunt), "iptables"}, m.variant.args()...), flags...)
	if out, err := m.ns.Exec(nil, nil, argv...); err != nil {
		tb.Fatalf("%v\nstdout:\n%s", err, out)
	}
}

// defaultCapture are the sidecar injector's flags in REDIRECT mode, IPv6 on.
var defaultCapture = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
	"-i", "*", "-b", "*", "-d", "15090,15021,15020", "--ipv6=true"}

// joinCapture are the settings of defaultCapture the eBPF data path reads, which `shunt ebpf join`
// takes: the outbound ones (inbound capture stays with the iptables rules).
var joinCapture = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-i", "*", "--ipv6=true"}

// startProxy starts the reference sidecar as the proxy user inside the
// pod's cgroup, with selfVIP and remoteVIP of both families as services of
// the pingpong servers, and extra flags.
func (m *meshPod) startProxy(tb testing.TB, extra ...string) {
	tb.Helper()
	args := []string{bins.Path(tb, pkgRefproxy), "-mode", "REDIRECT"}
	for _, f := range families {
		args = append(args,
			"-service", f.selfVIP.String()+"="+addr(f.pod, ppPort).String(),
			"-service", f.remoteVIP.String()+"="+addr(f.remote, ppPort).String())
	}
	m.cg.Start(tb, m.ns, &proxyUser, append(args, extra...)...)
}

// ppResult is what `pingpong client` prints.
type ppResult struct {
	Path      string  `json:"path"`
	Local     string  `json:"local"`
	Peer      string  `json:"peer"`
	Error     string  `json:"error"`
	Bytes     int64   `json:"bytes"`
	Intact    bool    `json:"intact"`
	MiBPerSec float64 `json:"mib_per_s"`
	Count     int     `json:"count"`
	P50NS     int64   `json:"p50_ns"`
	P99NS     int64   `json:"p99_ns"`
}

// pingpong runs `pingpong client -addr to args...` in the pod and its cgroup
// as cred and returns what it printed; an error when it failed or printed
// no result.
func (m *meshPod) pingpong(tb testing.TB, cred testutil.Cred, to netip.AddrPort, args ...string) (ppResult, error) {
	tb.Helper()
	argv := append([]string{bins.Path(tb, pkgPingpong), "client", "-addr", to.String()}, args...)
	out, err := m.cg.Exec(m.ns, &cred, argv...)
	var r ppResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return r, fmt.Errorf("pingpong printed %q: %w", out, errors.Join(err, jerr))
	}
	return r, err
}

// ebpfStatus is `shunt ebpf status --json`.
type ebpfStatus struct {
	Loaded   bool   `json:"loaded"`
	OwnerIDs string `json:"owner_ids"`
	Pods     []struct {
		NetnsCookie uint64 `json:"netns_cookie"`
	} `json:"pods"`
	Counters ebpfCounters `json:"counters"`
}

type ebpfCounters struct {
	ConnectsRedirected uint64 `json:"connects_redirected"`
	SocketsPaired      uint64 `json:"sockets_paired"`
	MessagesRedirected uint64 `json:"messages_redirected"`
	RedirectMisses     uint64 `json:"redirect_misses"`
	OrigdstAnswered    uint64 `json:"origdst_answered"`
}

func (c ebpfCounters) minus(o ebpfCounters) ebpfCounters {
	return ebpfCounters{
		ConnectsRedirected: c.ConnectsRedirected - o.ConnectsRedirected,
		SocketsPaired:      c.SocketsPaired - o.SocketsPaired,
		MessagesRedirected: c.MessagesRedirected - o.MessagesRedirected,
		RedirectMisses:     c.RedirectMisses - o.RedirectMisses,
		OrigdstAnswered:    c.OrigdstAnswered - o.OrigdstAnswered,
	}
}

// status runs `shunt ebpf status --json`; every counter the contract names
// must be there.
func (m *meshPod) status(tb testing.TB) ebpfStatus {
	tb.Helper()
	out := m.mustEBPF(tb, "status", "--pin-dir", m.pins, "--json")
	var s ebpfStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		tb.Fatalf("shunt ebpf status --json: %v\n%s", err, out)
	}
	var raw struct {
		Counters map[string]json.RawMessage `json:"counters"`
	}
	_ = json.Unmarshal([]byte(out), &raw)
	for _, k := range []string{"connects_redirected", "sockets_paired", "messages_redirected", "redirect_misses", "origdst_answered"} {
		if _, ok := raw.Counters[k]; !ok {
			tb.Fatalf("shunt ebpf status --json: no counter %q:\n%s", k, out)
		}
	}
	return s
}

// netnsCookie returns the pod namespace's cookie (SO_NETNS_COOKIE).
func (m *meshPod) netnsCookie(tb testing.TB) uint64 {
	tb.Helper()
	out := m.ns.Run(tb, bins.Path(tb, pkgPingpong), "netns-cookie")
	c, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		tb.Fatalf("netns cookie %q: %v", out, err)
	}
	return c
}

func (s ebpfStatus) has(cookie uint64) bool {
	return slices.ContainsFunc(s.Pods, func(p struct {
		NetnsCookie uint64 `json:"netns_cookie"`
	}) bool {
		return p.NetnsCookie == cookie
	})
}

// ebpfProbe is one connection from the pod and what must come of it.
type ebpfProbe struct {
	name string
	as   testutil.Cred
	to   netip.AddrPort
	size int64 // echo payload
	// path is the reply's path with the peers' ports removed.
	path string
	// local is the address the app's socket is bound to: the pod's own
	// address when connect(2) was redirected by eBPF (which binds it there),
	// else the source the route picks.
	local netip.Addr
	// redirected says eBPF redirected the connect: connects_redirected and
	// origdst_answered grow by exactly 1, and by 0 otherwise.
	redirected bool
}

// runEBPFProbe sends p and checks the reply, the app socket's addresses, the
// payload and the counters' growth. skMsg says the pod's sockets are in the
// socket hash: a redirected connection must have had messages redirected;
// without it none may be.
func (m *meshPod) runEBPFProbe(t *testing.T, p ebpfProbe, skMsg bool) {
	t.Helper()
	before := m.status(t).Counters
	r, err := m.pingpong(t, p.as, p.to, "-mode", "echo", "-bytes", fmt.Sprint(p.size))
	delta := m.status(t).Counters.minus(before)
	if err != nil {
		t.Fatalf("pingpong to %s as %v: %v (result %+v)", p.to, p.as, err, r)
	}
	if got := peerPort.ReplaceAllString(r.Path, "peer=$1"); got != p.path {
		t.Errorf("path to %s as %v:\n got: %s\nwant: %s", p.to, p.as, got, p.path)
	}
	if !r.Intact || r.Bytes != p.size {
		t.Errorf("payload of %d bytes: got %d back, intact %t", p.size, r.Bytes, r.Intact)
	}
	// getpeername shows the address the app dialed, redirected or not.
	if r.Peer != p.to.String() {
		t.Errorf("getpeername = %s, want the dialed %s", r.Peer, p.to)
	}
	if local, err := netip.ParseAddrPort(r.Local); err != nil || local.Addr() != p.local {
		t.Errorf("getsockname = %s, want %s:*", r.Local, p.local)
	}
	want := uint64(0)
	if p.redirected {
		want = 1
	}
	if delta.ConnectsRedirected != want || delta.OrigdstAnswered != want {
		t.Errorf("connects_redirected grew by %d and origdst_answered by %d, want %d each",
			delta.ConnectsRedirected, delta.OrigdstAnswered, want)
	}
	if delta.RedirectMisses != 0 {
		t.Errorf("redirect_misses grew by %d", delta.RedirectMisses)
	}
	switch {
	case p.redirected && skMsg && (delta.MessagesRedirected == 0 || delta.SocketsPaired == 0):
		t.Errorf("sockets_paired grew by %d and messages_redirected by %d, want both > 0",
			delta.SocketsPaired, delta.MessagesRedirected)
	case !skMsg && delta.MessagesRedirected != 0:
		t.Errorf("messages_redirected grew by %d with --no-sk-msg", delta.MessagesRedirected)
	}
	t.Logf("%s -> %s: local %s peer %s, counters grew %+v", p.as, p.to, r.Local, r.Peer, delta)
}

// Path tags, ports removed.

// viaOutboundFrom is the outbound tag of a proxy started with -tag-peer for
// a connection it accepted from peer.
func viaOutboundFrom(orig netip.AddrPort, peer netip.Addr) string {
	return fmt.Sprintf("proxy=outbound orig=%s peer=%s;", orig, host(peer))
}

func ppReply(name string, peer netip.Addr, local netip.AddrPort) string {
	return fmt.Sprintf("pingpong=%s peer=%s local=%s", name, host(peer), local)
}

// TestEBPF proves the eBPF fast path with real sockets: `shunt ebpf load` on
// a child cgroup v2, the injector's iptables rules in the pod as the safety
// net, `shunt ebpf join` for the pod, the reference sidecar as uid 1337 and
// the apps in the cgroup. For each family it sends connections along F2, F4,
// F5, F6 and F7 and reads from each the path, the app socket's addresses,
// the payload (1 B to 1 MiB) and the counters, which tell eBPF's work from
// the nat rules'. Then leave and unload, which must leave nothing behind.
func TestEBPF(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("flows", func(t *testing.T) {
		t.Parallel()
		testEBPFFlows(t)
	})
	t.Run("no_sk_msg", func(t *testing.T) {
		t.Parallel()
		testEBPFNoSkMsg(t)
	})
}

func testEBPFFlows(t *testing.T) {
	m := newMeshPod(t)
	var exclude []string
	for _, f := range families {
		exclude = append(exclude, f.farNet.String())
	}
	capture := []string{"-o", fmt.Sprint(ppExcludedPort), "-x", strings.Join(exclude, ",")}
	m.iptables(t, append(slices.Clone(defaultCapture), capture...)...)
	m.load(t)

	// Loaded, nothing joined yet; a second load changes nothing.
	if s := m.status(t); !s.Loaded || len(s.Pods) != 0 {
		t.Fatalf("after load: status %+v, want loaded and no pods", s)
	}
	attached, err := testutil.CgroupPrograms(m.cg, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(attached) == 0 {
		t.Fatalf("after load: no program attached to %s", m.cg.Path)
	}
	m.mustEBPF(t, "load", "--cgroup", m.cg.Path, "--pin-dir", m.pins)
	again, err := testutil.CgroupPrograms(m.cg, false)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(attached)
	slices.Sort(again)
	if !slices.Equal(attached, again) {
		t.Fatalf("load is not idempotent: programs on the cgroup %v, after a second load %v", attached, again)
	}

	m.join(t, append(slices.Clone(joinCapture), capture...)...)
	cookie := m.netnsCookie(t)
	if s := m.status(t); !s.has(cookie) || len(s.Pods) != 1 {
		t.Fatalf("after join: pods %+v, want only the pod's namespace cookie %d", s.Pods, cookie)
	}
	m.startProxy(t, "-tag-peer")

	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			remote := addr(f.remote, ppPort)
			own := addr(f.pod, ppPort)
			// The proxy sees a redirected connection come from the pod's address, as with nat
			// REDIRECT: the app's socket is bound to it.
			outbound := func(orig netip.AddrPort) string {
				return viaOutboundFrom(orig, f.pod) + ppReply("remote", f.pod, remote)
			}
			probes := []ebpfProbe{
				{"F2/app_to_remote", appUser, remote, 4096, outbound(remote), f.pod, true},
				{"F2/app_to_remote_service", appUser, f.remoteVIP, 4096, outbound(f.remoteVIP), f.pod, true},
				{"F4/app_to_own_service", appUser, f.selfVIP, 4096,
					viaOutboundFrom(f.selfVIP, f.pod) + viaInbound(own) + ppReply("pod", f.passthrough, own), f.pod, true},
				{"F4/app_to_own_pod_ip", appUser, own, 4096, ppReply("pod", f.pod, own), f.pod, false},
				{"F5/app_to_localhost", appUser, addr(f.localhost, ppPort), 4096,
					ppReply("pod", f.localhost, addr(f.localhost, ppPort)), f.localhost, false},
				{"F6/uid_1337_to_remote", proxyUID, remote, 4096, ppReply("remote", f.pod, remote), f.pod, false},
				{"F6/gid_1337_to_remote", proxyGID, remote, 4096, ppReply("remote", f.pod, remote), f.pod, false},
				{"F7/excluded_port", appUser, addr(f.remote, ppExcludedPort), 4096,
					ppReply("remote", f.pod, addr(f.remote, ppExcludedPort)), f.pod, false},
				{"F7/excluded_cidr", appUser, addr(f.far, ppPort), 4096,
					ppReply("remote", f.pod, addr(f.far, ppPort)), f.pod, false},
			}
			for _, size := range []int64{1, 1000, 64<<10 + 1, 1 << 20} {
				probes = append(probes, ebpfProbe{fmt.Sprintf("F2/payload_%d", size), appUser, remote, size,
					outbound(remote), f.pod, true})
			}
			for _, p := range probes {
				t.Run(p.name, func(t *testing.T) { m.runEBPFProbe(t, p, true) })
			}
		})
	}
	if t.Failed() {
		return
	}
	if s := m.status(t); s.Counters.RedirectMisses != 0 {
		t.Errorf("redirect_misses = %d after the flows, want 0", s.Counters.RedirectMisses)
	}

	// shunt trace on the live pod: the connect hook's decision, the data path's state, and with
	// --watch the hook's counters moving for one connection.
	t.Run("trace_watch", func(t *testing.T) {
		remote := addr(families[0].remote, ppPort)
		cmd := exec.Command(bins.Path(t, pkgShunt), append(append([]string{"trace", "--network-namespace", m.ns.Path(),
			"--ebpf", "--ebpf-pin-dir", m.pins, "--dst", remote.String(), "--uid", fmt.Sprint(appUser.UID),
			"--gid", fmt.Sprint(appUser.GID), "--watch", "3s", "--json"}, defaultCapture...), capture...)...)
		var stdout strings.Builder
		cmd.Stdout = &stdout
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stderr).ReadString('\n')
		if !strings.Contains(line, "make the connection now") {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("shunt trace said %q (%v), want it watching", line, err)
		}
		if r, err := m.pingpong(t, appUser, remote, "-mode", "echo", "-bytes", "1"); err != nil {
			t.Errorf("connection during the watch: %v (%+v)", err, r)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("shunt trace: %v\n%s", err, stdout.String())
		}
		var rep struct {
			Verdict struct{ Kind string }
			EBPF    struct {
				Verdict string
				Port    uint16
				Live    struct {
					Loaded, Registered bool
					Moved              map[string]uint64
				}
			}
		}
		if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
			t.Fatalf("shunt trace --json: %v\n%s", err, stdout.String())
		}
		e := rep.EBPF
		if e.Verdict != "proxy" || e.Port != 15001 || !e.Live.Loaded || !e.Live.Registered || e.Live.Moved["connects_redirected"] < 1 {
			t.Errorf("trace of the app's connection to %s: eBPF %+v; want the hook proxying to :15001, the pod registered and connects_redirected moving", remote, e)
		}
		t.Logf("eBPF counters that moved during the watch: %v", e.Live.Moved)
	})

	// leave: eBPF no longer redirects the pod; the nat rules still do, and the proxy sees the
	// same downstream peer either way.
	m.mustEBPF(t, "leave", "--netns", m.ns.Path(), "--pin-dir", m.pins)
	if s := m.status(t); len(s.Pods) != 0 {
		t.Fatalf("after leave: pods %+v, want none", s.Pods)
	}
	for _, f := range families {
		remote := addr(f.remote, ppPort)
		t.Run("after_leave/"+f.name, func(t *testing.T) {
			m.runEBPFProbe(t, ebpfProbe{"F2", appUser, remote, 1 << 20,
				viaOutboundFrom(remote, f.pod) + ppReply("remote", f.pod, remote), f.pod, false}, true)
		})
	}

	// unload: nothing of this load is left, and the cgroup can go.
	objs, err := testutil.BPFForCgroup(m.cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded for the cgroup before unload:\n%s", objs)
	if len(objs.Links) == 0 || len(objs.Programs) < len(attached) || len(objs.Maps) == 0 {
		t.Fatalf("before unload: want links, programs and maps for the cgroup, found:\n%s", objs)
	}
	for _, p := range objs.Programs {
		if !strings.HasPrefix(p.Name, "shunt") {
			t.Errorf("program %d attached for the cgroup is named %q, not shunt*", p.ID, p.Name)
		}
	}
	m.mustEBPF(t, "unload", "--pin-dir", m.pins)
	if out, err := m.ebpfCmd(t, "status", "--pin-dir", m.pins, "--json"); exitCode(err) != 4 {
		t.Errorf("status after unload: %v (exit %d), want exit 4\n%s", err, exitCode(err), out)
	}
	if files, err := testutil.PinnedFiles(m.pins); err != nil || len(files) != 0 {
		t.Errorf("pins after unload: %q, %v", files, err)
	}
	if progs, err := testutil.CgroupPrograms(m.cg, false); err != nil || len(progs) != 0 {
		t.Errorf("programs on the cgroup after unload: %v, %v", progs, err)
	}
	// A link unpinned and closed is released by a kernel work item: the
	// IDs go a moment after unload returns.
	left, err := waitGone(objs, 5*time.Second)
	if err != nil || !left.Empty() {
		t.Errorf("left after unload (%v):\n%s", err, left)
	}
	m.mustEBPF(t, "unload", "--pin-dir", m.pins) // idempotent

	// The pod still works on the nat rules alone.
	for _, f := range families {
		remote := addr(f.remote, ppPort)
		r, err := m.pingpong(t, appUser, remote, "-mode", "echo", "-bytes", "1000")
		if got, want := peerPort.ReplaceAllString(r.Path, "peer=$1"), viaOutboundFrom(remote, f.pod)+ppReply("remote", f.pod, remote); err != nil || got != want {
			t.Errorf("after unload, to %s: %v\n got: %s\nwant: %s", remote, err, got, want)
		}
	}
	if err := m.cg.Remove(); err != nil {
		t.Errorf("remove cgroup: %v", err)
	}
	if _, err := os.Stat(m.cg.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cgroup %s after remove: %v, want it gone", m.cg.Path, err)
	}
}

// waitGone waits up to timeout for every object of objs to leave the
// kernel and returns what is left.
func waitGone(objs testutil.BPFObjects, timeout time.Duration) (testutil.BPFObjects, error) {
	deadline := time.Now().Add(timeout)
	for {
		left, err := testutil.StillLoaded(objs)
		if err != nil || left.Empty() || time.Now().After(deadline) {
			return left, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exitCode returns the exit status in err, 0 for nil, -1 for another error.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// testEBPFNoSkMsg joins a pod with --no-sk-msg: its connections are still
// redirected at connect(2), its bytes go through TCP.
func testEBPFNoSkMsg(t *testing.T) {
	m := newMeshPod(t)
	m.iptables(t, defaultCapture...)
	m.load(t)
	m.join(t, append(slices.Clone(joinCapture), "--no-sk-msg")...)
	m.startProxy(t, "-tag-peer")
	for _, f := range families {
		remote := addr(f.remote, ppPort)
		t.Run(f.name, func(t *testing.T) {
			m.runEBPFProbe(t, ebpfProbe{"F2", appUser, remote, 1 << 20,
				viaOutboundFrom(remote, f.pod) + ppReply("remote", f.pod, remote), f.pod, true}, false)
		})
	}
}
