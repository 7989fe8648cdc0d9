//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// helperBin is a copy of the test binary that any uid can execute (go test's own lives in a
// directory only root can enter). Set by TestMain.
var helperBin string

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(runHelper(role, os.Args[1:]))
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		if err := testutil.RemoveStaleNetNS(); err != nil {
			fmt.Fprintln(os.Stderr, "remove stale namespaces:", err)
		}
		removeStale()
		dir, err := os.MkdirTemp("", "shunt-ebpf-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		helperBin = filepath.Join(dir, "helper")
		if err := copyExecutable(os.Args[0], helperBin); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Test resources are named shunt-test-PID-N: removeStale removes those of test processes that
// no longer run (killed before their cleanups).
var (
	staleResource = regexp.MustCompile(`^shunt-test-(\d+)-\d+$`)
	resourceSeq   atomic.Int64
)

func resourceName() string {
	return fmt.Sprintf("shunt-test-%d-%d", os.Getpid(), resourceSeq.Add(1))
}

func removeStale() {
	dirs := []string{"/sys/fs/bpf"}
	if mounts, err := os.ReadFile("/proc/mounts"); err == nil {
		if cg, err := cgroup2Mount(mounts); err == nil {
			dirs = append(dirs, cg)
		}
	}
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			m := staleResource.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			if _, err := os.Stat(filepath.Join("/proc", m[1])); err == nil {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if dir == "/sys/fs/bpf" {
				_ = Unload(path)
			} else {
				_ = removeCgroup(path)
			}
		}
	}
}

// env is one test's world: a child cgroup v2 with the programs attached, a pod namespace
// registered with the node, a "remote" namespace behind a veth with echo servers, and an
// unregistered namespace.
type env struct {
	t      *testing.T
	cgroup string
	pinDir string
	node   *Node
	pod    *testutil.NetNS
	remote *testutil.NetNS
	other  *testutil.NetNS
	cookie uint64
	cfg    redirect.Config
}

// Addresses of the test topology (documentation ranges, inside the test's own namespaces).
var (
	podIP4      = netip.MustParseAddr("192.0.2.1")
	remoteIP4   = netip.MustParseAddr("192.0.2.2")
	excludedIP4 = netip.MustParseAddr("192.0.2.200") // in OutboundIPRangesExclude
	remote2IP4  = netip.MustParseAddr("192.0.2.3")   // another remote address
	podIP6      = netip.MustParseAddr("2001:db8::1")
	remoteIP6   = netip.MustParseAddr("2001:db8::2")
	excludedIP6 = netip.MustParseAddr("2001:db8::200")
	otherIP4    = netip.MustParseAddr("198.51.100.1") // on lo of the unregistered namespace
)

// Ports of the remote echo servers.
const (
	echoPort     = 8080
	excludedPort = 8081 // in OutboundPortsExclude
	includedPort = 8083 // in OutboundPorts of the include-list config
	appPort      = 9090 // the app's own server in the pod
)

// testConfig is the sidecar injector's config with IPv6, one excluded port and one excluded
// address per family.
func testConfig() redirect.Config {
	cfg := redirect.DefaultConfig()
	cfg.IPv6 = true
	cfg.OutboundPortsExclude = []uint16{excludedPort}
	cfg.OutboundIPRangesExclude = []netip.Prefix{
		netip.MustParsePrefix("192.0.2.128/25"), netip.PrefixFrom(excludedIP6, 128),
	}
	return cfg
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, cfg: testConfig()}
	e.cgroup = newCgroup(t)

	e.pinDir = filepath.Join("/sys/fs/bpf", resourceName())
	t.Cleanup(func() {
		if err := Unload(e.pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
	})
	n, err := Load(Options{Cgroup: e.cgroup, PinDir: e.pinDir})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	e.node = n
	t.Cleanup(func() { n.Close() })

	e.pod = testutil.NewNetNS(t)
	e.remote = testutil.NewNetNS(t)
	e.other = testutil.NewNetNS(t)
	e.pod.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0r", "netns", e.remote.Name)
	for _, a := range []string{podIP4.String() + "/24", podIP6.String() + "/64"} {
		e.pod.Run(t, "ip", "addr", "add", a, "dev", "eth0", "nodad")
	}
	e.pod.Run(t, "ip", "addr", "add", "::6/128", "dev", "lo")
	e.pod.Run(t, "ip", "link", "set", "eth0", "up")
	for _, a := range []netip.Addr{remoteIP4, remote2IP4, excludedIP4} {
		e.remote.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "eth0r")
	}
	for _, a := range []netip.Addr{remoteIP6, excludedIP6} {
		e.remote.Run(t, "ip", "addr", "add", a.String()+"/64", "dev", "eth0r", "nodad")
	}
	e.remote.Run(t, "ip", "link", "set", "eth0r", "up")
	e.other.Run(t, "ip", "addr", "add", otherIP4.String()+"/32", "dev", "lo")
	e.pod.WaitLinkUp(t, "eth0")
	e.remote.WaitLinkUp(t, "eth0r")

	for _, port := range []int{echoPort, excludedPort, includedPort, 53} {
		e.echo(e.remote, fmt.Sprintf("[::]:%d", port), "remote")
	}
	// The pod's own servers, outside the cgroup: for the app calling its own pod IP and localhost.
	e.echo(e.pod, fmt.Sprintf("[::]:%d", echoPort), "self")
	e.echo(e.other, fmt.Sprintf("%s:%d", otherIP4, echoPort), "other")

	e.cookie, err = NetNSCookie(e.pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	e.addPod(e.cfg, false)
	return e
}

// addPod registers (or replaces) the pod with cfg.
func (e *env) addPod(cfg redirect.Config, noSockMsg bool) {
	e.t.Helper()
	p, err := PodFromConfig(e.cookie, &cfg, []netip.Addr{podIP4, podIP6})
	if err != nil {
		e.t.Fatal(err)
	}
	p.NoSockMsg = noSockMsg
	if err := e.node.AddPod(p); err != nil {
		e.t.Fatalf("add pod: %v", err)
	}
}

// newCgroup makes a child cgroup v2 and removes it when t ends, killing what still runs in it.
func newCgroup(t *testing.T) string {
	t.Helper()
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	root, err := cgroup2Mount(mounts)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, resourceName())
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroup(path); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cgroup %s still there: %v", path, err)
		}
	})
	return path
}

// removeCgroup kills every process in the cgroup, waits until it is empty and removes it.
func removeCgroup(path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		// Kernels before 5.14: kill one by one.
		procs, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	err := waitFor(10*time.Second, func() (bool, error) {
		events, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
		return bytes.Contains(events, []byte("populated 0")), err
	})
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", path, err)
	}
	return os.Remove(path)
}

// waitFor polls cond until it holds, for the kernel's asynchronous work (a socket's close, a
// freed object's id), failing after timeout.
func waitFor(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("condition not met")
			}
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// echo starts an echo server of this test process (outside the test cgroup) in n.
func (e *env) echo(n *testutil.NetNS, addr, name string) {
	e.t.Helper()
	var l net.Listener
	err := ns.WithNetNSPath(n.Path(), func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		e.t.Fatalf("listen on %s in %s: %v", addr, n.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serveEcho(l, name)
	}()
	e.t.Cleanup(func() {
		l.Close()
		<-done
	})
}

// Credentials of the processes in the pod.
var (
	appCred   = &testutil.Cred{UID: 1000, GID: 1000}
	proxyCred = &testutil.Cred{UID: 1337, GID: 1337}
	gidCred   = &testutil.Cred{UID: 1001, GID: 1337} // another uid with the proxy's gid
)

// command returns the helper role with args, to run in n and the test cgroup as cred.
func (e *env) command(n *testutil.NetNS, cred *testutil.Cred, role string, args ...string) (*exec.Cmd, func()) {
	e.t.Helper()
	cmd := n.Command(cred, append([]string{helperBin}, args...)...)
	cmd.Env = append(cmd.Env, helperEnv+"="+role)
	cg, err := os.Open(e.cgroup)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd, func() { cg.Close() }
}

// start starts a long-running helper and waits for its "ready"; it is killed when the test ends.
func (e *env) start(n *testutil.NetNS, cred *testutil.Cred, role string, args ...string) {
	e.t.Helper()
	cmd, release := e.command(n, cred, role, args...)
	defer release()
	n.StartCmd(e.t, cmd)
}

// app runs the app helper in n as cred against targets and returns its results by target.
func (e *env) app(n *testutil.NetNS, cred *testutil.Cred, args ...string) map[string]appResult {
	e.t.Helper()
	cmd, release := e.command(n, cred, "app", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	release()
	if err != nil {
		e.t.Fatalf("app %v: %v\n%s", args, err, stderr.String())
	}
	results := make(map[string]appResult)
	dec := json.NewDecoder(&stdout)
	for {
		var r appResult
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			e.t.Fatalf("app output: %v", err)
		}
		results[r.Target] = r
	}
	return results
}

func (e *env) stats() Stats {
	e.t.Helper()
	s, err := e.node.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// statsDelta returns after - before, field by field.
func statsDelta(before, after Stats) Stats {
	return Stats{
		ConnectsRedirected: after.ConnectsRedirected - before.ConnectsRedirected,
		SocketsPaired:      after.SocketsPaired - before.SocketsPaired,
		MessagesRedirected: after.MessagesRedirected - before.MessagesRedirected,
		BytesRedirected:    after.BytesRedirected - before.BytesRedirected,
		RedirectMisses:     after.RedirectMisses - before.RedirectMisses,
		MessagesFallback:   after.MessagesFallback - before.MessagesFallback,
		OrigDstAnswered:    after.OrigDstAnswered - before.OrigDstAnswered,
		PeerNamesAnswered:  after.PeerNamesAnswered - before.PeerNamesAnswered,
		Pods:               after.Pods,
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// expect is what a target must have shown: the proxy's greeting with the original destination
// (redirected), or the server's greeting only, and which server answered.
type expect struct {
	target     string
	redirected bool
	via        string         // the greeting's first word when redirected; "proxy" when empty
	orig       netip.AddrPort // when redirected; and the peer getpeername must show
	server     string
}

func check(t *testing.T, results map[string]appResult, want []expect) {
	t.Helper()
	for _, w := range want {
		r, ok := results[w.target]
		if !ok {
			t.Errorf("%s: no result", w.target)
			continue
		}
		if r.Err != "" {
			t.Errorf("%s: %s (greetings %q)", w.target, r.Err, r.Lines)
			continue
		}
		var lines []string
		if w.redirected {
			via := w.via
			if via == "" {
				via = "proxy"
			}
			lines = append(lines, via+" orig="+w.orig.String())
		}
		if len(r.Lines) != len(lines)+1 || !slices.Equal(r.Lines[:len(lines)], lines) ||
			!strings.HasPrefix(r.Lines[len(r.Lines)-1], "server "+w.server+" ") {
			t.Errorf("%s: greetings %q, want %q then the %s server's", w.target, r.Lines, lines, w.server)
		}
		if w.redirected {
			peer, err := netip.ParseAddrPort(r.Peer)
			if err != nil || netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()) != w.orig {
				t.Errorf("%s: getpeername %s, want the dialed %s", w.target, r.Peer, w.orig)
			}
		}
	}
}

// TestRedirect sends the app's connections through the proxy in both families, with every
// payload size, and checks what is not captured: excluded ports and ranges, the app's own pod IP,
// localhost, the proxy's uid and gid, and a namespace that is not registered.
func TestRedirect(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")

	for _, fam := range []struct {
		name                     string
		pod, remote, excl, local netip.Addr
	}{
		{"IPv4", podIP4, remoteIP4, excludedIP4, netip.MustParseAddr("127.0.0.1")},
		{"IPv6", podIP6, remoteIP6, excludedIP6, netip.MustParseAddr("::1")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			before := e.stats()
			remote := ap(fam.remote, echoPort).String()
			want := []expect{
				{target: remote, redirected: true, orig: ap(fam.remote, echoPort), server: "remote"},
				{target: ap(fam.remote, excludedPort).String(), server: "remote"},
				{target: ap(fam.excl, echoPort).String(), server: "remote"},
				{target: ap(fam.pod, echoPort).String(), server: "self"},
				{target: ap(fam.local, echoPort).String(), server: "self"},
			}
			targets := make([]string, len(want))
			for i, w := range want {
				targets[i] = w.target
			}
			if fam.name == "IPv4" {
				mapped := "mapped:" + ap(fam.remote, echoPort).String()
				want = append(want, expect{target: mapped, redirected: true, orig: ap(fam.remote, echoPort), server: "remote"})
				targets = append(targets, mapped)
			}
			check(t, e.app(e.pod, appCred, targets...), want)
			redirected := uint64(1)
			if fam.name == "IPv4" {
				redirected = 2
			}

			// The proxy's identities are never captured.
			check(t, e.app(e.pod, proxyCred, remote), []expect{{target: remote, server: "remote"}})
			check(t, e.app(e.pod, gidCred, remote), []expect{{target: remote, server: "remote"}})

			d := statsDelta(before, e.stats())
			// Go's dialer calls getpeername(2) too.
			if d.ConnectsRedirected != redirected || d.OrigDstAnswered != redirected || d.PeerNamesAnswered < redirected {
				t.Errorf("stats %+v: want %d connects redirected and original destinations answered, and peer names", d, redirected)
			}
			if d.SocketsPaired != 2*redirected || d.MessagesRedirected == 0 || d.RedirectMisses != 0 || d.MessagesFallback != 0 {
				t.Errorf("stats %+v: want %d sockets paired, messages redirected, no misses", d, 2*redirected)
			}
			// Every payload crossed app→proxy and proxy→app by sk_msg, plus the greetings.
			var payload uint64
			for _, s := range payloadSizes {
				payload += uint64(s)
			}
			if d.BytesRedirected < 2*redirected*payload {
				t.Errorf("stats %+v: want at least %d bytes redirected", d, 2*redirected*payload)
			}
		})
	}

	t.Run("UnregisteredNamespace", func(t *testing.T) {
		before := e.stats()
		target := ap(otherIP4, echoPort).String()
		check(t, e.app(e.other, appCred, target), []expect{{target: target, server: "other"}})
		if d := statsDelta(before, e.stats()); d.ConnectsRedirected != 0 || d.SocketsPaired != 0 {
			t.Errorf("stats %+v: the unregistered namespace was touched", d)
		}
	})

	t.Run("SocketsRemovedOnClose", func(t *testing.T) {
		// While a redirected connection is open, both of its loopback sockets are in the
		// socket hash and the app socket's original destination is published.
		target := ap(remoteIP4, echoPort).String()
		finish := e.startHeld(e.pod, appCred, target)
		nh, err1 := countKeys[redirectPairKey](e.node.maps.ShuntSockhash)
		no, err2 := countKeys[redirectPeerKey](e.node.maps.ShuntOrigkey)
		if err := errors.Join(err1, err2); err != nil || nh != 2 || no != 1 {
			t.Errorf("with one connection open: %d sockets in %s, %d entries in %s (%v); want 2 and 1",
				nh, redirectMapShuntSockhash, no, redirectMapShuntOrigkey, err)
		}
		finish()
		// The app has exited; the proxy closes its side when its relay ends, and the app's
		// socket reaches TCP_CLOSE when the proxy's FIN arrives.
		err := waitFor(10*time.Second, func() (bool, error) {
			nh, err1 := countKeys[redirectPairKey](e.node.maps.ShuntSockhash)
			no, err2 := countKeys[redirectPeerKey](e.node.maps.ShuntOrigkey)
			err := errors.Join(err1, err2)
			return nh == 0 && no == 0 && err == nil, fmt.Errorf("%d sockets in %s, %d entries in %s (%v)",
				nh, redirectMapShuntSockhash, no, redirectMapShuntOrigkey, err)
		})
		if err != nil {
			t.Error(err)
		}
	})
}

// startHeld runs the app with -hold against one target and waits until its connection is open
// and its payloads checked. The returned finish lets it close the connection and waits for it to
// exit, failing the test if it reported an error.
func (e *env) startHeld(n *testutil.NetNS, cred *testutil.Cred, target string) (finish func()) {
	e.t.Helper()
	cmd, release := e.command(n, cred, "app", "-hold", target)
	stdout := testutil.NewReadyWriter()
	var stderr testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	err = cmd.Start()
	release()
	if err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	finish = func() {
		once.Do(func() {
			stdin.Close()
			if err := <-exited; err != nil || strings.Contains(stdout.String(), `"err"`) {
				e.t.Errorf("held app: %v\n%s\n%s", err, stdout.String(), stderr.String())
			}
		})
	}
	e.t.Cleanup(finish)
	select {
	case <-stdout.Ready():
	case <-time.After(helperTimeout):
		e.t.Fatalf("held app not ready:\n%s\n%s", stdout.String(), stderr.String())
	}
	return finish
}

func countKeys[K any](m *cebpf.Map) (int, error) {
	n := 0
	err := keys(m, func(K) { n++ })
	return n, err
}

// TestPassthrough checks that the proxy's inbound passthrough connection, from 127.0.0.6 / ::6
// to the app's server on the pod IP, is paired and its bytes go by sk_msg.
func TestPassthrough(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, appCred, "server", "-listen", fmt.Sprintf("[::]:%d", appPort), "-name", "app")
	for _, c := range []struct {
		name string
		src  string
		dst  netip.AddrPort
	}{
		{"IPv4", "127.0.0.6", ap(podIP4, appPort)},
		{"IPv6", "::6", ap(podIP6, appPort)},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.stats()
			results := e.app(e.pod, proxyCred, "-bind", c.src, c.dst.String())
			check(t, results, []expect{{target: c.dst.String(), server: "app"}})
			r := results[c.dst.String()]
			_, peer, _ := strings.Cut(strings.Join(r.Lines, ""), " peer=")
			if got, err := netip.ParseAddrPort(peer); err != nil || got.Addr().Unmap() != netip.MustParseAddr(c.src) {
				t.Errorf("the app saw %q, want a peer at %s", r.Lines, c.src)
			}
			d := statsDelta(before, e.stats())
			if d.ConnectsRedirected != 0 || d.SocketsPaired != 2 || d.MessagesRedirected == 0 || d.RedirectMisses != 0 {
				t.Errorf("stats %+v: want no connect redirected, 2 sockets paired, messages redirected, no misses", d)
			}
		})
	}
}

// TestPeerNotPaired checks the fallback of a paired socket whose peer is not in the socket hash
// (here the pod's server outside the test cgroup, which the programs never see): its first
// message misses, every later one goes through TCP, and the bytes arrive intact and in order.
func TestPeerNotPaired(t *testing.T) {
	e := newEnv(t)
	before := e.stats()
	target := ap(podIP4, echoPort).String()
	check(t, e.app(e.pod, proxyCred, "-bind", "127.0.0.6", target), []expect{{target: target, server: "self"}})
	d := statsDelta(before, e.stats())
	if d.SocketsPaired != 1 || d.MessagesRedirected != 0 || d.RedirectMisses != 1 || d.MessagesFallback == 0 {
		t.Errorf("stats %+v: want 1 socket paired, 1 miss, then messages through TCP", d)
	}
}

// TestNoSockMsg checks the pod opt-out: connections still go through the proxy with their
// original destination, but no socket is paired and no message redirected.
func TestNoSockMsg(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	e.addPod(e.cfg, true)
	before := e.stats()
	targets := []string{ap(remoteIP4, echoPort).String(), ap(remoteIP6, echoPort).String()}
	check(t, e.app(e.pod, appCred, targets...), []expect{
		{target: targets[0], redirected: true, orig: ap(remoteIP4, echoPort), server: "remote"},
		{target: targets[1], redirected: true, orig: ap(remoteIP6, echoPort), server: "remote"},
	})
	d := statsDelta(before, e.stats())
	if d.ConnectsRedirected != 2 || d.OrigDstAnswered != 2 || d.SocketsPaired != 0 || d.MessagesRedirected != 0 {
		t.Errorf("stats %+v: want 2 connects redirected and answered, nothing paired or redirected", d)
	}
}

// TestReplacePod switches the pod to an include list with an always-captured port and checks
// both the new decisions and that no entry of the old settings is left.
func TestReplacePod(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	cfg := redirect.DefaultConfig()
	cfg.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{netip.PrefixFrom(remoteIP4, 32)}}
	cfg.OutboundPorts = []uint16{includedPort}
	e.addPod(cfg, false)

	included, other := ap(remoteIP4, echoPort), ap(excludedIP4, echoPort)
	alwaysCaptured := ap(excludedIP4, includedPort)
	v6 := ap(remoteIP6, echoPort) // IPv6 is off in this config
	check(t, e.app(e.pod, appCred, included.String(), other.String(), alwaysCaptured.String(), v6.String()), []expect{
		{target: included.String(), redirected: true, orig: included, server: "remote"},
		{target: other.String(), server: "remote"},
		{target: alwaysCaptured.String(), redirected: true, orig: alwaysCaptured, server: "remote"},
		{target: v6.String(), server: "remote"},
	})

	var pod redirectPod
	if err := e.node.maps.ShuntPods.Lookup(e.cookie, &pod); err != nil {
		t.Fatal(err)
	}
	var cidrs []redirectCidrKey
	if err := keys(e.node.maps.ShuntCidrs, func(k redirectCidrKey) { cidrs = append(cidrs, k) }); err != nil {
		t.Fatal(err)
	}
	var sets []redirectSetKey
	if err := keys(e.node.maps.ShuntSets, func(k redirectSetKey) { sets = append(sets, k) }); err != nil {
		t.Fatal(err)
	}
	// Two pod IPs and one included range; one included port.
	if len(cidrs) != 3 || len(sets) != 1 {
		t.Errorf("after the replace: prefixes %+v, set entries %+v; want 3 and 1", cidrs, sets)
	}
	for _, k := range cidrs {
		if k.Gen != pod.Gen || k.Kind == redirectCidrKindCIDR_EXCLUDE {
			t.Errorf("prefix entry %+v left from the old settings (pod generation %d)", k, pod.Gen)
		}
	}
	for _, k := range sets {
		if k.Gen != pod.Gen || k.Kind != redirectSetKindSET_PORT_INCLUDE {
			t.Errorf("set entry %+v left from the old settings (pod generation %d)", k, pod.Gen)
		}
	}

	if err := e.node.RemovePod(e.cookie); err != nil {
		t.Fatal(err)
	}
	if err := e.node.RemovePod(e.cookie); err != nil {
		t.Errorf("second remove: %v", err)
	}
	if s := e.stats(); s.Pods != 0 {
		t.Errorf("%d pods after remove", s.Pods)
	}
	nc, _ := countKeys[redirectCidrKey](e.node.maps.ShuntCidrs)
	ns, _ := countKeys[redirectSetKey](e.node.maps.ShuntSets)
	if nc != 0 || ns != 0 {
		t.Errorf("after remove: %d prefixes and %d set entries left", nc, ns)
	}
	check(t, e.app(e.pod, appCred, included.String()), []expect{{target: included.String(), server: "remote"}})
}

// TestLoadTwiceAndUnload checks that Load reopens what is pinned instead of attaching twice, that
// Open finds it and fails clearly when nothing is loaded, and that Unload leaves no program,
// link, map or pin behind.
func TestLoadTwiceAndUnload(t *testing.T) {
	testutil.RequireRoot(t)
	cg := newCgroup(t)
	pinDir := filepath.Join("/sys/fs/bpf", resourceName())
	t.Cleanup(func() { _ = Unload(pinDir) })

	if _, err := Open(pinDir); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("open before load: %v, want ErrNotLoaded", err)
	}
	n, err := Load(Options{Cgroup: cg, PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	progs, links, maps := n.ids(t)
	n2, err := Load(Options{Cgroup: cg, PinDir: pinDir})
	if err != nil {
		t.Fatalf("second load: %v", err)
	}
	progs2, links2, maps2 := n2.ids(t)
	if !slices.Equal(progs, progs2) || !slices.Equal(links, links2) || !slices.Equal(maps, maps2) {
		t.Errorf("second load: programs %v links %v maps %v, want the first's %v %v %v", progs2, links2, maps2, progs, links, maps)
	}
	n2.Close()
	if attached := cgroupLinks(t, cg); len(attached) != len(cgroupPrograms) {
		t.Errorf("%d links on the cgroup, want %d", len(attached), len(cgroupPrograms))
	}
	other := newCgroup(t)
	if _, err := Load(Options{Cgroup: other, PinDir: pinDir}); err == nil {
		t.Error("load for another cgroup over a loaded node: no error")
	}

	o, err := Open(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.AddPod(Pod{Cookie: 42, ProxyPort: 15001, InboundPort: 15006, ProxyUIDs: []uint32{1337},
		HostLoopback: netip.MustParsePrefix("127.0.0.1/32"), OwnerGroups: redirect.GroupFilter{All: true}}); err != nil {
		t.Fatal(err)
	}
	if pods, err := n.Pods(); err != nil || !slices.Equal(pods, []uint64{42}) {
		t.Errorf("pods through the loader's node: %v, %v; want [42]", pods, err)
	}
	o.Close()
	n.Close()

	// A node missing a pin (a Load that died half way) is replaced, not completed.
	if err := os.Remove(filepath.Join(pinDir, linkPinPrefix+redirectProgShuntSockopt)); err != nil {
		t.Fatal(err)
	}
	n3, err := Load(Options{Cgroup: cg, PinDir: pinDir})
	if err != nil {
		t.Fatalf("load over a partial node: %v", err)
	}
	progs3, links3, maps3 := n3.ids(t)
	n3.Close()
	if missing := missingPins(pinDir); len(missing) > 0 {
		t.Errorf("after the reload: missing %v", missing)
	}
	if attached := cgroupLinks(t, cg); len(attached) != len(cgroupPrograms) || !slices.Equal(attached, slices.Sorted(slices.Values(links3))) {
		t.Errorf("links on the cgroup after the reload: %v, want the new node's %v", attached, links3)
	}
	if pods, err := Open(pinDir); err == nil {
		if ids, _ := pods.Pods(); len(ids) != 0 {
			t.Errorf("pods of the replaced node survived: %v", ids)
		}
		pods.Close()
	}
	progs, links, maps = append(progs, progs3...), append(links, links3...), append(maps, maps3...)

	if err := Unload(pinDir); err != nil {
		t.Fatal(err)
	}
	if err := Unload(pinDir); err != nil {
		t.Errorf("second unload: %v", err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin dir %s still there: %v", pinDir, err)
	}
	err = waitFor(10*time.Second, func() (bool, error) {
		left := leftovers(progs, links, maps)
		return len(left) == 0, fmt.Errorf("left: %s", strings.Join(left, ", "))
	})
	if err != nil {
		t.Error(err)
	}
	if attached := cgroupLinks(t, cg); len(attached) > 0 {
		t.Errorf("links still on the cgroup: %v", attached)
	}
}

// ids returns the ids of the node's programs, links and maps.
func (n *Node) ids(t *testing.T) (progs []cebpf.ProgramID, links []link.ID, maps []cebpf.MapID) {
	t.Helper()
	for _, l := range n.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		links = append(links, info.ID)
		progs = append(progs, info.Program)
	}
	for _, name := range mapNames {
		m, _ := n.maps.byName(name)
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		maps = append(maps, id)
	}
	return progs, links, maps
}

// leftovers enumerates the kernel's programs and links and names those of ours still there,
// and our maps that still exist.
func leftovers(progs []cebpf.ProgramID, links []link.ID, maps []cebpf.MapID) []string {
	var left []string
	for id := cebpf.ProgramID(0); ; {
		next, err := cebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := cebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err == nil && strings.HasPrefix(info.Name, "shunt_") && slices.Contains(progs, id) {
			left = append(left, fmt.Sprintf("program %s (%d)", info.Name, id))
		}
	}
	it := new(link.Iterator)
	for it.Next() {
		l := it.Take()
		if info, err := l.Info(); err == nil && (slices.Contains(links, info.ID) || slices.Contains(progs, info.Program)) {
			left = append(left, fmt.Sprintf("link %d of program %d", info.ID, info.Program))
		}
		l.Close()
	}
	for _, id := range maps {
		if m, err := cebpf.NewMapFromID(id); err == nil {
			m.Close()
			left = append(left, fmt.Sprintf("map %d", id))
		}
	}
	return left
}

// cgroupLinks returns the links attached to the cgroup at path.
func cgroupLinks(t *testing.T, path string) []link.ID {
	t.Helper()
	id, err := cgroupID(path)
	if err != nil {
		t.Fatal(err)
	}
	var ids []link.ID
	it := new(link.Iterator)
	for it.Next() {
		l := it.Take()
		if info, err := l.Info(); err == nil {
			if cg := info.Cgroup(); cg != nil && cg.CgroupId == id {
				ids = append(ids, info.ID)
			}
		}
		l.Close()
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestProbe(t *testing.T) {
	testutil.RequireRoot(t)
	if err := Probe(); err != nil {
		t.Fatalf("probe on the test kernel: %v", err)
	}
}

func TestNetNSCookie(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
	ca, err := NetNSCookie(a.Path())
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := NetNSCookie(a.Path())
	if err != nil {
		t.Fatal(err)
	}
	cb, err := NetNSCookie(b.Path())
	if err != nil {
		t.Fatal(err)
	}
	if ca == 0 || ca != ca2 || ca == cb {
		t.Errorf("cookies %d, %d (same namespace) and %d (another): want stable, non-zero and distinct", ca, ca2, cb)
	}
	if _, err := NetNSCookie("/nonexistent"); err == nil {
		t.Error("cookie of a missing namespace: no error")
	}
}

// TestCaptureRules checks the rules beyond the default config's: TCP DNS to a listed server goes
// to the DNS proxy, owner groups include and exclude, and an included loopback range captures the
// app's connections to its own pod IP.
func TestCaptureRules(t *testing.T) {
	e := newEnv(t)
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15001")
	e.start(e.pod, proxyCred, "proxy", "-listen", "[::]:15053", "-name", "dns")
	remote, dns := ap(remoteIP4, echoPort), ap(remoteIP4, 53)
	otherDNS := ap(remote2IP4, 53) // not a listed DNS server

	t.Run("DNS", func(t *testing.T) {
		cfg := testConfig()
		cfg.RedirectDNS = true
		cfg.DNSServers = []netip.Addr{remoteIP4}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, dns.String(), otherDNS.String(), remote.String()), []expect{
			{target: dns.String(), redirected: true, via: "dns", orig: dns, server: "remote"},
			{target: otherDNS.String(), redirected: true, orig: otherDNS, server: "remote"}, // to the outbound proxy
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
		// The agent's own queries are not captured.
		check(t, e.app(e.pod, proxyCred, dns.String()), []expect{{target: dns.String(), server: "remote"}})
	})

	t.Run("OwnerGroupsInclude", func(t *testing.T) {
		cfg := testConfig()
		cfg.OwnerGroups = redirect.GroupFilter{Include: []uint32{2000}}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, remote.String()), []expect{{target: remote.String(), server: "remote"}})
		check(t, e.app(e.pod, &testutil.Cred{UID: 1002, GID: 2000}, remote.String()), []expect{
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
	})

	t.Run("OwnerGroupsExclude", func(t *testing.T) {
		cfg := testConfig()
		cfg.OwnerGroups = redirect.GroupFilter{All: true, Exclude: []uint32{uint32(appCred.GID)}}
		e.addPod(cfg, false)
		check(t, e.app(e.pod, appCred, remote.String()), []expect{{target: remote.String(), server: "remote"}})
		check(t, e.app(e.pod, &testutil.Cred{UID: 1002, GID: 2000}, remote.String()), []expect{
			{target: remote.String(), redirected: true, orig: remote, server: "remote"},
		})
	})

	t.Run("IncludedLoopbackRange", func(t *testing.T) {
		// istio-iptables then has no "-o lo ! --uid-owner 1337 RETURN": the app calling its
		// own pod IP is captured when the pod IP is included, localhost still is not.
		cfg := testConfig()
		cfg.OutboundIPRanges = redirect.PrefixList{Prefixes: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/8"), netip.PrefixFrom(podIP4, 32),
		}}
		e.addPod(cfg, false)
		self, local := ap(podIP4, echoPort), ap(netip.MustParseAddr("127.0.0.1"), echoPort)
		check(t, e.app(e.pod, appCred, self.String(), local.String(), remote.String()), []expect{
			{target: self.String(), redirected: true, orig: self, server: "self"},
			{target: local.String(), server: "self"},
			{target: remote.String(), server: "remote"},
		})
	})
}
