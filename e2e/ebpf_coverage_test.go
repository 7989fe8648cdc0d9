//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestEBPFCoverage proves the eBPF fast path over every kind of rules that
// can sit underneath it, and that it judges a connection by the identity
// the rules' owner match does.
//
// rules: the same eBPF pod (load, join, the reference sidecar in the pod's
// cgroup) over iptables-nft, iptables-legacy and native nftables, each in
// REDIRECT and in TPROXY mode, IPv4 and IPv6: F1 from the remote through the
// inbound listener and the proxy's passthrough to the app, F2 captured by the
// connect hook, F4 through the proxy and back in, F5, F6 and F7 left alone.
// ipv6_off: F2 with IPv6 off in the rules and in join.
//
// owner: processes whose real and effective uid or gid differ, and sockets
// opened by one identity and connected by another, in a pod with the
// iptables rules only and in an eBPF pod (see testEBPFOwner).
// userns: a pod whose network namespace is owned by a user namespace
// (hostUsers: false), on the rules alone and with eBPF (testEBPFUserNS).
func TestEBPFCoverage(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("rules", func(t *testing.T) {
		for _, v := range variants {
			for _, mode := range modes {
				t.Run(string(v)+"/"+mode, func(t *testing.T) {
					t.Parallel()
					testEBPFOverRules(t, v, mode)
				})
			}
		}
	})
	t.Run("ipv6_off", func(t *testing.T) {
		for _, v := range variants {
			t.Run(string(v), func(t *testing.T) {
				t.Parallel()
				testEBPFIPv6Off(t, v)
			})
		}
	})
	t.Run("owner", testEBPFOwner)
	t.Run("userns", testEBPFUserNS)
	t.Run("task_ids", testEBPFTaskIDs)
}

// taskIDsEnv makes `shunt ebpf` load and register with the object of
// kernels before 6.7 (ebpf.OwnerIDs "task"), which judges owners by the
// calling task's real ids.
var taskIDsEnv = []string{"SHUNT_EBPF_OWNER_IDS=task"}

// testEBPFTaskIDs runs the flows through the object of kernels before 6.7
// in both modes, and checks that it refuses a user-namespaced pod, whose
// proxy it would see under the node's uid: that pod stays on its rules.
func testEBPFTaskIDs(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testEBPFOverRulesEnv(t, variant("nft"), mode, taskIDsEnv)
		})
	}
	t.Run("userns_refused", func(t *testing.T) {
		t.Parallel()
		u := newUsernsPod(t, usernsIDs)
		u.env = taskIDsEnv
		_, join := coverCapture("REDIRECT", true)
		u.load(t)
		out, err := u.ebpfCmd(t, append([]string{"join", "--netns", u.ns.Path(), "--pin-dir", u.pins}, join...)...)
		if err == nil || !strings.Contains(err.Error(), "user namespace of its own") {
			t.Fatalf("join of a user-namespaced pod with the task-ids object: %v\n%s; want it refused", err, out)
		}
		if s := u.status(t); len(s.Pods) != 0 {
			t.Errorf("after the refused join: pods %+v, want none", s.Pods)
		}
	})
}

// coverCapture returns the rules' flags, the injector's for mode plus an
// excluded port (ppExcludedPort) and excluded CIDRs (the far networks), and
// join's, the outbound ones of them.
func coverCapture(mode string, ipv6 bool) (rules, join []string) {
	var exclude []string
	for _, f := range families {
		exclude = append(exclude, f.farNet.String())
	}
	common := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-i", "*",
		"-o", fmt.Sprint(ppExcludedPort), "-x", strings.Join(exclude, ","), "--ipv6=" + strconv.FormatBool(ipv6)}
	rules = append(slices.Clone(common), "-m", mode, "-b", "*", "-d", "15090,15021,15020")
	return rules, common
}

// newCoverPod is a meshPod whose rules are variant v's in mode, loaded and
// joined, with the reference sidecar running as Istio runs it in mode.
func newCoverPod(t *testing.T, v variant, mode string, ipv6 bool, env ...string) *meshPod {
	t.Helper()
	m := newMeshPod(t)
	m.variant = v
	m.env = env
	rules, join := coverCapture(mode, ipv6)
	m.iptables(t, rules...)
	m.load(t)
	m.join(t, join...)
	startModeProxy(t, m, mode)
	return m
}

// startModeProxy starts the reference sidecar in m's cgroup in mode, as the
// identity Istio gives it there (uid 1337, or uid 0 gid 1337 in TPROXY
// mode), with the services of meshPod.startProxy.
func startModeProxy(t *testing.T, m *meshPod, mode string) {
	t.Helper()
	cred := proxyCred(mode)
	m.cg.Start(t, m.ns, &cred, startModeProxyArgs(t, mode)...)
}

// testEBPFOverRules runs the flows through an eBPF pod over v's rules in
// mode. In TPROXY mode the mangle rules leave the hook's connections alone:
// they go to 127.0.0.1 or ::1, which both the mangle OUTPUT mark rules ("!
// -d 127.0.0.1/32 -o lo ... -j MARK --set-xmark 0x53a") and the TPROXY rule
// ("! -d 127.0.0.1/32 ... -j TPROXY") leave out, and ISTIO_INBOUND returns
// unmarked packets on lo; the proxy's hairpin to its own pod IP (F4, as gid
// 1337) is marked and handed to 15006 by TPROXY.
func testEBPFOverRules(t *testing.T, v variant, mode string) { testEBPFOverRulesEnv(t, v, mode, nil) }

// testEBPFOverRulesEnv is testEBPFOverRules with env added to the
// environment of the pod's shunt ebpf commands.
func testEBPFOverRulesEnv(t *testing.T, v variant, mode string, env []string) {
	m := newCoverPod(t, v, mode, true, env...)
	wantOwner := "socket"
	if len(env) > 0 {
		wantOwner = "task"
	}
	if s := m.status(t); s.OwnerIDs != wantOwner {
		t.Fatalf("shunt ebpf status: owner ids %q, want %q", s.OwnerIDs, wantOwner)
	}
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			remote, own := addr(f.remote, ppPort), addr(f.pod, ppPort)
			// The peer the app sees on a connection the inbound listener
			// passed on: the passthrough address in REDIRECT mode; in
			// TPROXY mode the client's own, the pod's IP for the proxy's
			// hairpin (F4).
			inboundPeer, hairpinPeer := f.passthrough, f.passthrough
			if mode == "TPROXY" {
				inboundPeer, hairpinPeer = f.remote, f.pod
			}
			t.Run("F1/remote_to_app", func(t *testing.T) {
				m.runRemoteProbe(t, own, viaInbound(own)+ppReply("pod", inboundPeer, own))
			})
			outbound := func(orig netip.AddrPort) string { return viaOutbound(orig) + ppReply("remote", f.pod, remote) }
			direct := func(to netip.AddrPort, name string, peer netip.Addr) string { return ppReply(name, peer, to) }
			probes := []ebpfProbe{
				{"F2/app_to_remote", appUser, remote, 64<<10 + 1, outbound(remote), f.pod, true},
				{"F2/app_to_remote_service", appUser, f.remoteVIP, 4096, outbound(f.remoteVIP), f.pod, true},
				{"F4/app_to_own_service", appUser, f.selfVIP, 4096,
					viaOutbound(f.selfVIP) + viaInbound(own) + ppReply("pod", hairpinPeer, own), f.pod, true},
				{"F4/app_to_own_pod_ip", appUser, own, 4096, direct(own, "pod", f.pod), f.pod, false},
				{"F5/app_to_localhost", appUser, addr(f.localhost, ppPort), 4096,
					direct(addr(f.localhost, ppPort), "pod", f.localhost), f.localhost, false},
				{"F6/proxy_to_remote", proxyCred(mode), remote, 4096, direct(remote, "remote", f.pod), f.pod, false},
				{"F6/uid_1337_to_remote", proxyUID, remote, 4096, direct(remote, "remote", f.pod), f.pod, false},
				{"F6/gid_1337_to_remote", proxyGID, remote, 4096, direct(remote, "remote", f.pod), f.pod, false},
				{"F7/excluded_port", appUser, addr(f.remote, ppExcludedPort), 4096,
					direct(addr(f.remote, ppExcludedPort), "remote", f.pod), f.pod, false},
				{"F7/excluded_cidr", appUser, addr(f.far, ppPort), 4096,
					direct(addr(f.far, ppPort), "remote", f.pod), f.pod, false},
			}
			for _, p := range probes {
				t.Run(p.name, func(t *testing.T) { m.runEBPFProbe(t, p, true) })
			}
		})
	}
	if s := m.status(t); s.Counters.RedirectMisses != 0 {
		t.Errorf("redirect_misses = %d after the flows, want 0", s.Counters.RedirectMisses)
	}
}

// testEBPFIPv6Off runs a pod of variant v with IPv6 off in the rules and in
// join: IPv4 is captured by the connect hook; IPv6 is not, and what happens
// to it is up to the rules: nothing with the iptables variants, which leave
// ip6tables alone, and capture by the nat rules with native nftables, whose
// inet tables match IPv6 as well (TestIstioQuirkNativeIPv6Disabled).
func testEBPFIPv6Off(t *testing.T, v variant) {
	m := newCoverPod(t, v, "REDIRECT", false)
	remote4, remote6 := addr(ipv4.remote, ppPort), addr(ipv6.remote, ppPort)
	want6 := ppReply("remote", ipv6.pod, remote6)
	if v == native {
		want6 = viaOutbound(remote6) + want6
	}
	for _, p := range []ebpfProbe{
		{"ipv4/F2/app_to_remote", appUser, remote4, 4096,
			viaOutbound(remote4) + ppReply("remote", ipv4.pod, remote4), ipv4.pod, true},
		{"ipv6/F2/app_to_remote", appUser, remote6, 4096, want6, ipv6.pod, false},
	} {
		t.Run(p.name, func(t *testing.T) { m.runEBPFProbe(t, p, true) })
	}
}

// runRemoteProbe connects from the remote to `to` in the pod, checks the
// reply's path and that the pod's eBPF programs redirected nothing and
// answered no SO_ORIGINAL_DST: an inbound connection, and the proxy's
// passthrough to the app, are the rules' alone.
func (m *meshPod) runRemoteProbe(t *testing.T, to netip.AddrPort, want string) {
	t.Helper()
	before := m.status(t).Counters
	out, err := m.remote.Exec(&root, nil, bins.Path(t, pkgPingpong), "client", "-addr", to.String(), "-mode", "echo", "-bytes", "4096")
	delta := m.status(t).Counters.minus(before)
	r, err := parsePingpong(out, err)
	if err != nil {
		t.Fatalf("pingpong from the remote to %s: %v (result %+v)", to, err, r)
	}
	if got := peerPort.ReplaceAllString(r.Path, "peer=$1"); got != want {
		t.Errorf("path from the remote to %s:\n got: %s\nwant: %s", to, got, want)
	}
	if !r.Intact || r.Bytes != 4096 {
		t.Errorf("payload of 4096 bytes: got %d back, intact %t", r.Bytes, r.Intact)
	}
	if delta.ConnectsRedirected != 0 || delta.OrigdstAnswered != 0 || delta.RedirectMisses != 0 {
		t.Errorf("counters grew by %+v, want connects_redirected, origdst_answered and redirect_misses unchanged", delta)
	}
	t.Logf("remote -> %s: counters grew %+v", to, delta)
}

// parsePingpong reads what `pingpong client` printed; an error when it
// failed or printed no result.
func parsePingpong(out []byte, err error) (ppResult, error) {
	var r ppResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return r, fmt.Errorf("pingpong printed %q: %w", out, errors.Join(err, jerr))
	}
	return r, err
}

// ids is a process's real and effective uid and gid (saved and filesystem
// ids follow the effective ones, as setresuid and setresgid set them).
type ids struct {
	ruid, euid, rgid, egid int
}

func (i ids) String() string {
	return fmt.Sprintf("uid %d/%d gid %d/%d", i.ruid, i.euid, i.rgid, i.egid)
}

// pingpongAs runs `pingpong client -addr to` in m's namespace and cgroup as
// a process with the real and effective ids of id (setpriv), and returns
// what it printed.
func (m *meshPod) pingpongAs(t *testing.T, id ids, to netip.AddrPort) (ppResult, error) {
	t.Helper()
	argv := []string{"setpriv",
		"--ruid", fmt.Sprint(id.ruid), "--euid", fmt.Sprint(id.euid),
		"--rgid", fmt.Sprint(id.rgid), "--egid", fmt.Sprint(id.egid), "--clear-groups", "--",
		bins.Path(t, pkgPingpong), "client", "-addr", to.String(), "-mode", "echo", "-bytes", "1000"}
	cmd := m.cg.Place(m.ns.Command(nil, argv...))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return parsePingpong([]byte(stdout.String()), err)
}

// Owner outcomes: what became of a connection.
const (
	ownerEBPF    = "ebpf"    // the connect hook sent it to the outbound listener
	ownerNAT     = "nat"     // nat OUTPUT sent it to the outbound listener
	ownerHairpin = "hairpin" // nat OUTPUT sent it to the inbound listener (the proxy's hairpin, F4)
	ownerNone    = "-"       // it reached its destination uncaptured
)

// ownerCase is a connecting process and what becomes of its connections to
// the remote and to its own pod IP in a pod with the iptables rules only.
// The process has the real and effective ids of id (setpriv), or, when
// opener is set, opens its socket as opener and connects it as connector
// (sockopener). An eBPF pod over the same rules decides alike (ebpfOutcome).
type ownerCase struct {
	name              string
	id                ids
	opener, connector *testutil.Cred
	remote, own       string
}

func (c ownerCase) String() string {
	if c.opener != nil {
		return fmt.Sprintf("opened as %v, connected as %v", *c.opener, *c.connector)
	}
	return c.id.String()
}

// ownerCases: the iptables owner match (xt_owner, and nftables' meta
// skuid/skgid) reads the fsuid/fsgid of the credentials of the file that
// opened the socket (sk->sk_socket->file->f_cred), which follow the
// effective ids, and so does the connect hook (sock_owner in redirect.c).
// So, to the remote (F2/F6) and to the pod's own IP (F4), in a pod with the
// rules only:
//
//	process                                   remote  own IP
//	(uid real/eff, gid real/eff)
//	app      1000/1000 1000/1000              nat     -
//	proxy    1337/1337 1337/1337              -       hairpin
//	ruid app, euid proxy  1000/1337 1000      -       hairpin
//	ruid proxy, euid app  1337/1000 1000      nat     -
//	rgid app, egid proxy  1000 1000/1337      -       -
//	rgid proxy, egid app  1000 1337/1000      nat     -
//	socket opened as proxy, connected as app  -       hairpin
//	socket opened as app, connected as proxy  nat     -
//
// The eBPF pod decides the same in every row: what the rules capture to
// the remote the hook captures (ebpf), what they let out it lets out; to
// the own pod IP the hook passes every connection (it leaves loopback to
// the rules), so the rules decide there. Only a uid of 1337 is hairpinned,
// as "-o lo -m owner ! --uid-owner 1337 -j RETURN" returns every other uid
// on lo before the gid rules are reached.
var ownerCases = []ownerCase{
	{name: "app", id: ids{1000, 1000, 1000, 1000}, remote: ownerNAT, own: ownerNone},
	{name: "proxy", id: ids{1337, 1337, 1337, 1337}, remote: ownerNone, own: ownerHairpin},
	{name: "ruid_app_euid_proxy", id: ids{1000, 1337, 1000, 1000}, remote: ownerNone, own: ownerHairpin},
	{name: "ruid_proxy_euid_app", id: ids{1337, 1000, 1000, 1000}, remote: ownerNAT, own: ownerNone},
	{name: "rgid_app_egid_proxy", id: ids{1000, 1000, 1000, 1337}, remote: ownerNone, own: ownerNone},
	{name: "rgid_proxy_egid_app", id: ids{1000, 1000, 1337, 1000}, remote: ownerNAT, own: ownerNone},
	{name: "opened_by_proxy_connected_by_app", opener: &proxyUser, connector: &appUser, remote: ownerNone, own: ownerHairpin},
	{name: "opened_by_app_connected_by_proxy", opener: &appUser, connector: &proxyUser, remote: ownerNAT, own: ownerNone},
}

// ebpfOutcome is what becomes in an eBPF pod of a connection that has
// outcome in a pod with the rules only: the hook captures what nat would.
func ebpfOutcome(outcome string) string {
	if outcome == ownerNAT {
		return ownerEBPF
	}
	return outcome
}

const pkgSockopener = "github.com/shuntmesh/shunt/e2e/sockopener"

// testEBPFOwner runs ownerCases in two pods side by side, both with the
// injector's REDIRECT rules (iptables-nft) and the sidecar as uid 1337: one
// with the rules only, one loaded and joined.
func testEBPFOwner(t *testing.T) {
	rules, join := coverCapture("REDIRECT", true)
	plain := newMeshPod(t)
	plain.iptables(t, rules...)
	startModeProxy(t, plain, "REDIRECT")
	fast := newMeshPod(t)
	fast.iptables(t, rules...)
	fast.load(t)
	fast.join(t, join...)
	startModeProxy(t, fast, "REDIRECT")

	for _, f := range families {
		remote, own := addr(f.remote, ppPort), addr(f.pod, ppPort)
		for _, c := range ownerCases {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				for _, o := range []struct {
					pod  string
					m    *meshPod
					to   netip.AddrPort
					want string
				}{
					{"iptables", plain, remote, c.remote},
					{"iptables", plain, own, c.own},
					{"ebpf", fast, remote, ebpfOutcome(c.remote)},
					{"ebpf", fast, own, ebpfOutcome(c.own)},
				} {
					got, err := o.m.ownerOutcome(t, f, c, o.to, o.m == fast)
					if err != nil {
						t.Errorf("%s pod, %v, to %s: %v", o.pod, c, o.to, err)
						continue
					}
					if got != o.want {
						t.Errorf("%s pod, %v, to %s: %s, want %s", o.pod, c, o.to, got, o.want)
					}
				}
			})
		}
	}
}

// dial makes c's connection from m to `to` and returns the reply's path and
// the socket's local address.
func (m *meshPod) dial(t *testing.T, c ownerCase, to netip.AddrPort) (path, local string, err error) {
	t.Helper()
	if c.opener == nil {
		r, err := m.pingpongAs(t, c.id, to)
		if err != nil {
			return "", "", fmt.Errorf("%w (result %+v)", err, r)
		}
		if !r.Intact || r.Bytes != 1000 {
			return "", "", fmt.Errorf("payload of 1000 bytes: got %d back, intact %t", r.Bytes, r.Intact)
		}
		return r.Path, r.Local, nil
	}
	out, err := m.cg.Exec(m.ns, nil, bins.Path(t, pkgSockopener), "-addr", to.String(),
		"-open", fmt.Sprintf("%d:%d", c.opener.UID, c.opener.GID),
		"-connect", fmt.Sprintf("%d:%d", c.connector.UID, c.connector.GID))
	var r struct{ Path, Local, Error string }
	if jerr := json.Unmarshal(out, &r); jerr != nil || err != nil {
		return "", "", fmt.Errorf("sockopener printed %q: %w", out, errors.Join(err, jerr))
	}
	return r.Path, r.Local, nil
}

// ownerOutcome makes c's connection to `to` (the remote or the pod's own IP)
// and tells from the reply's path, the socket's local address and, in an
// eBPF pod, the counters, what became of it.
func (m *meshPod) ownerOutcome(t *testing.T, f family, c ownerCase, to netip.AddrPort, loaded bool) (string, error) {
	t.Helper()
	var before ebpfCounters
	if loaded {
		before = m.status(t).Counters
	}
	path, r, err := m.dial(t, c, to)
	if err != nil {
		return "", err
	}
	var delta ebpfCounters
	if loaded {
		delta = m.status(t).Counters.minus(before)
	}
	local, err := netip.ParseAddrPort(r)
	if err != nil {
		return "", err
	}
	server := "remote"
	if to.Addr() == f.pod {
		server = "pod"
	}
	path = peerPort.ReplaceAllString(path, "peer=$1")
	var got string
	switch path {
	case viaOutbound(to) + ppReply(server, f.pod, to):
		// Both come from the pod's address; the counters tell them apart.
		got = ownerNAT
		if loaded && delta.ConnectsRedirected > 0 {
			got = ownerEBPF
		}
	case viaInbound(to) + ppReply(server, f.passthrough, to):
		got = ownerHairpin
	case ppReply(server, f.pod, to):
		got = ownerNone
	default:
		return "", fmt.Errorf("path %q, local %s: none of the expected ones", path, local)
	}
	if want := uint64(0); loaded {
		if got == ownerEBPF {
			want = 1
		}
		if delta.ConnectsRedirected != want || delta.OrigdstAnswered != want {
			return "", fmt.Errorf("%s, but connects_redirected grew by %d", got, delta.ConnectsRedirected)
		}
	}
	t.Logf("%v to %s: %s (path %s, local %s)", c, to, got, path, local)
	return got, nil
}

// usernsHostID is where the ids of a user-namespaced pod start on the node:
// its uid 1337 is 101337 outside, as a pod with hostUsers: false gets them.
const usernsHostID = 100000

// usernsIDs maps ids 0-65535 to usernsHostID on, in one extent, as the
// kubelet maps a pod with hostUsers: false.
var usernsIDs = []syscall.SysProcIDMap{{ContainerID: 0, HostID: usernsHostID, Size: 65536}}

// usernsManyIDs maps ids 0-65535 in seven extents, more than a uid_gid_map
// holds inline (5): the kernel then keeps them in arrays sorted by either
// side, which the connect hook searches. The proxy's 1337 is an extent of
// its own whose node id sorts before the app's, so that the order of the
// two sides differs.
var usernsManyIDs = []syscall.SysProcIDMap{
	{ContainerID: 0, HostID: 300000, Size: 1000},
	{ContainerID: 1000, HostID: 400000, Size: 337},
	{ContainerID: 1337, HostID: 250000, Size: 1},
	{ContainerID: 1338, HostID: 500000, Size: 662},
	{ContainerID: 2000, HostID: 600000, Size: 1000},
	{ContainerID: 3000, HostID: 700000, Size: 1000},
	{ContainerID: 4000, HostID: 800000, Size: 61536},
}

// usernsSeq numbers the names usernsPod binds its namespace to, apart from
// testutil.NewNetNS's (and in the pattern RemoveStaleNetNS cleans up).
var usernsSeq atomic.Int64

// usernsPod is a meshPod whose network namespace is owned by a user
// namespace of its own that maps ids 0-65535 to node ids (usernsIDs): a pod
// with hostUsers: false, whose network namespace the runtime creates inside
// the pod's user namespace (containerd 2.x, containerd/containerd#10607).
// The pod's processes run in both namespaces (inPod); m.ns is the network
// namespace bound under /run/netns, for the commands run as the node's
// root.
type usernsPod struct {
	*meshPod
	holder int // pid of the process holding the namespaces
}

// newUsernsPod builds a usernsPod whose user namespace maps uids and gids
// with ids, with the topology and pingpong servers of newMeshPod;
// everything goes when t ends.
func newUsernsPod(t *testing.T, ids []syscall.SysProcIDMap) *usernsPod {
	t.Helper()
	remote := testutil.NewNetNS(t) // first: /run/netns exists for the bind mount below
	holder := exec.Command("sleep", "infinity")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNET,
		UidMappings: ids, GidMappings: ids, GidMappingsEnableSetgroups: true}
	if err := holder.Start(); err != nil {
		t.Fatalf("start the namespaces' holder: %v", err)
	}
	t.Cleanup(func() {
		_ = holder.Process.Kill()
		_ = holder.Wait()
	})
	name := fmt.Sprintf("shunt-%d-%d", os.Getpid(), 1_000_000+usernsSeq.Add(1))
	bound := filepath.Join("/run/netns", name)
	if err := os.WriteFile(bound, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid), bound, "", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(bound)
		t.Fatalf("bind the pod's network namespace: %v", err)
	}
	ns := &testutil.NetNS{Name: name, LockFile: filepath.Join(t.TempDir(), "xtables.lock")}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	u := &usernsPod{
		meshPod: &meshPod{pod: &pod{variant: "nft", ns: ns, remote: remote},
			cg: testutil.NewCgroup(t), pins: testutil.NewPinDir(t)},
		holder: holder.Process.Pid,
	}
	p := u.pod
	p.ns.Run(t, "ip", "link", "add", "eth0", "index", "10", "type", "veth",
		"peer", "name", "eth0", "index", "20", "netns", p.remote.Name)
	for _, f := range families {
		addAddr(t, p.ns, "eth0", f.pod, f.bits)
		addAddr(t, p.remote, "eth0", f.remote, f.bits)
		addAddr(t, p.remote, "lo", f.far, f.far.BitLen())
	}
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		ns.Run(t, "ip", "link", "set", "eth0", "addrgenmode", "none", "up")
	}
	for _, ns := range []*testutil.NetNS{p.ns, p.remote} {
		ns.WaitLinkUp(t, "eth0")
	}
	for _, f := range families {
		p.ns.Run(t, "ip", familyFlag(f), "route", "add", "default", "via", f.remote.String(), "dev", "eth0")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pod %s state at failure:\n%s", p.ns.Name, p.dump(t))
		}
	})
	pp := bins.Path(t, pkgPingpong)
	p.remote.Start(t, &root, pp, "serve", "-name", "remote", "-tcp", fmt.Sprint(ppPort))
	p.ns.StartCmd(t, u.inPod(&appUser, pp, "serve", "-name", "pod", "-tcp", fmt.Sprint(ppPort)))
	return u
}

// inPod returns a command that runs argv in the pod's user and network
// namespaces and its cgroup, as cred inside the user namespace (root there
// when nil).
func (u *usernsPod) inPod(cred *testutil.Cred, argv ...string) *exec.Cmd {
	args := []string{fmt.Sprintf("--user=/proc/%d/ns/user", u.holder), fmt.Sprintf("--net=/proc/%d/ns/net", u.holder), "--"}
	if cred != nil {
		args = append(args, "setpriv", fmt.Sprintf("--reuid=%d", cred.UID), fmt.Sprintf("--regid=%d", cred.GID), "--clear-groups", "--")
	}
	cmd := exec.Command("nsenter", append(args, argv...)...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+u.ns.LockFile)
	return u.cg.Place(cmd)
}

// pingpongIn runs `pingpong client -addr to` in the pod as cred and returns
// the reply's path with the peers' ports removed and the socket's local
// address; the path also when the client failed after reading it.
func (u *usernsPod) pingpongIn(t *testing.T, cred testutil.Cred, to netip.AddrPort) (path, local string, err error) {
	t.Helper()
	cmd := u.inPod(&cred, bins.Path(t, pkgPingpong), "client", "-addr", to.String(), "-mode", "echo", "-bytes", "1000")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r, err := parsePingpong([]byte(stdout.String()), err)
	if err != nil {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return peerPort.ReplaceAllString(r.Path, "peer=$1"), r.Local, err
}

// testEBPFUserNS runs F1, F2 and F6 in a user-namespaced pod, first on the
// iptables rules alone, then with the eBPF data path: with the ids mapped as
// the kubelet maps them, then in seven extents (extents). The rules, written
// from inside the pod's user namespace as its init container writes them,
// match the proxy's uid 1337 as the pod sees it: xt_owner maps the rule's
// uid through the network namespace's user namespace (make_kuid(net->user_ns,
// ...)), nftables' meta skuid the socket's (from_kuid_munged(sock_net(sk)->
// user_ns, ...)). The connect hook maps the socket opener's ids the same
// way (101337 on the node is 1337 in the pod), so the app's connection is
// captured once and the proxy's own is left alone, as with the rules.
func testEBPFUserNS(t *testing.T) {
	testEBPFUserNSWith(t, usernsIDs)
	t.Run("extents", func(t *testing.T) { testEBPFUserNSWith(t, usernsManyIDs) })
}

// testEBPFUserNSWith is testEBPFUserNS in a pod whose ids map with ids.
func testEBPFUserNSWith(t *testing.T, ids []syscall.SysProcIDMap) {
	u := newUsernsPod(t, ids)
	rules, join := coverCapture("REDIRECT", true)
	argv := append(append([]string{bins.Path(t, pkgShunt), "iptables"}, u.variant.args()...), rules...)
	if out, err := output(u.inPod(nil, argv...)); err != nil {
		t.Fatalf("shunt iptables in the pod's user namespace: %v\n%s", err, out)
	}
	u.ns.StartCmd(t, u.inPod(&proxyUser, startModeProxyArgs(t, "REDIRECT")...))

	// probe connects as cred to the remote and returns the path; when it
	// is want, the connection must also have succeeded from wantLocal.
	probe := func(t *testing.T, f family, cred testutil.Cred, want string, wantLocal netip.Addr) string {
		t.Helper()
		remote := addr(f.remote, ppPort)
		path, local, err := u.pingpongIn(t, cred, remote)
		if path != want {
			t.Logf("%v to %s: path %q, local %s, error %v", cred, remote, path, local, err)
			return path
		}
		if err != nil {
			t.Errorf("%v to %s: %v", cred, remote, err)
		}
		if l, perr := netip.ParseAddrPort(local); perr != nil || l.Addr() != wantLocal {
			t.Errorf("getsockname = %s, want %s:*", local, wantLocal)
		}
		return path
	}
	for _, f := range families {
		remote, own := addr(f.remote, ppPort), addr(f.pod, ppPort)
		viaProxy := viaOutbound(remote) + ppReply("remote", f.pod, remote)
		direct := ppReply("remote", f.pod, remote)
		t.Run("rules/"+f.name, func(t *testing.T) {
			t.Run("F1/remote_to_app", func(t *testing.T) {
				out, err := u.remote.Exec(&root, nil, bins.Path(t, pkgPingpong), "client", "-addr", own.String(), "-mode", "echo", "-bytes", "1000")
				r, err := parsePingpong(out, err)
				want := viaInbound(own) + ppReply("pod", f.passthrough, own)
				if got := peerPort.ReplaceAllString(r.Path, "peer=$1"); err != nil || got != want {
					t.Errorf("from the remote to %s: %v\n got: %s\nwant: %s", own, err, got, want)
				}
			})
			t.Run("F2/app_to_remote", func(t *testing.T) {
				if got := probe(t, f, appUser, viaProxy, f.pod); got != viaProxy {
					t.Errorf("path: got %q, want %q", got, viaProxy)
				}
			})
			t.Run("F6/proxy_to_remote", func(t *testing.T) {
				if got := probe(t, f, proxyUser, direct, f.pod); got != direct {
					t.Errorf("path: got %q, want %q", got, direct)
				}
			})
		})
	}
	if t.Failed() {
		return
	}

	u.load(t)
	u.join(t, join...)
	// dial probes as cred and checks that the connect hook redirected
	// want connections meanwhile (origdst answered as many).
	dial := func(t *testing.T, f family, cred testutil.Cred, wantPath string, want uint64) {
		t.Helper()
		before := u.status(t).Counters
		if got := probe(t, f, cred, wantPath, f.pod); got != wantPath {
			t.Errorf("path: got %q, want %q", got, wantPath)
		}
		d := u.status(t).Counters.minus(before)
		if d.ConnectsRedirected != want || d.OrigdstAnswered != want {
			t.Errorf("connects_redirected grew by %d, origdst_answered by %d: want %d", d.ConnectsRedirected, d.OrigdstAnswered, want)
		}
	}
	for _, f := range families {
		remote := addr(f.remote, ppPort)
		viaProxy := viaOutbound(remote) + ppReply("remote", f.pod, remote)
		direct := ppReply("remote", f.pod, remote)
		t.Run("ebpf/"+f.name, func(t *testing.T) {
			t.Run("F2/app_to_remote", func(t *testing.T) {
				dial(t, f, appUser, viaProxy, 1)
			})
			t.Run("F6/proxy_to_remote", func(t *testing.T) {
				dial(t, f, proxyUser, direct, 0)
			})
		})
	}
}

// startModeProxyArgs is the command line startModeProxy runs.
func startModeProxyArgs(t *testing.T, mode string) []string {
	args := []string{bins.Path(t, pkgRefproxy), "-mode", mode}
	for _, f := range families {
		args = append(args,
			"-service", f.selfVIP.String()+"="+addr(f.pod, ppPort).String(),
			"-service", f.remoteVIP.String()+"="+addr(f.remote, ppPort).String())
	}
	return args
}

// output runs cmd and returns its standard output; a failure's error
// carries standard error.
func output(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return []byte(stdout.String()), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return []byte(stdout.String()), nil
}
