//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// env is one test's world: a child cgroup v2 with the programs attached, a pod namespace
// registered with the node, a "remote" namespace behind a veth with echo servers, and an
// unregistered namespace.
type env struct {
	t      *testing.T
	cgroup *testutil.Cgroup
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
	e.cgroup = testutil.NewCgroup(t)

	e.pinDir = filepath.Join("/sys/fs/bpf", resourceName())
	t.Cleanup(func() {
		if err := Unload(e.pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
	})
	n, err := Load(Options{Cgroup: e.cgroup.Path, PinDir: e.pinDir})
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
	err := n.Do(func() error {
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
func (e *env) command(n *testutil.NetNS, cred *testutil.Cred, role string, args ...string) *exec.Cmd {
	cmd := n.Command(cred, append([]string{helperBin}, args...)...)
	cmd.Env = append(cmd.Env, helperEnv+"="+role)
	return e.cgroup.Place(cmd)
}

// start starts a long-running helper and waits for its "ready"; it is killed when the test ends.
func (e *env) start(n *testutil.NetNS, cred *testutil.Cred, role string, args ...string) {
	e.t.Helper()
	n.StartCmd(e.t, e.command(n, cred, role, args...))
}

// app runs the app helper in n as cred against targets and returns its results by target.
func (e *env) app(n *testutil.NetNS, cred *testutil.Cred, args ...string) map[string]appResult {
	e.t.Helper()
	cmd := e.command(n, cred, "app", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
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
		DNSRedirected:      after.DNSRedirected - before.DNSRedirected,
		DNSAnswered:        after.DNSAnswered - before.DNSAnswered,
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

// startHeld runs the app with -hold against one target and waits until its connection is open
// and its payloads checked. The returned finish lets it close the connection and waits for it to
// exit, failing the test if it reported an error.
func (e *env) startHeld(n *testutil.NetNS, cred *testutil.Cred, target string) (finish func()) {
	e.t.Helper()
	cmd := e.command(n, cred, "app", "-hold", target)
	stdout := testutil.NewReadyWriter()
	var stderr testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
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
