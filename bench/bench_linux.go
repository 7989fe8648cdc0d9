package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/netns"
)

// The pod's side and the node's side of the pod's veth pair.
const (
	podAddr  = "10.244.0.2/24"
	nodeAddr = "10.244.0.1/24"
)

// measure runs opts.warmup+opts.n rounds per variant, variants interleaved, and returns the wall times
// of the measured ones. A round programs one fresh pod with each binary and each floor, in an order
// that rotates from round to round, and then checks that every pod holds the floor's rules.
func measure(ctx context.Context, opts *options) ([]result, error) {
	dir, err := os.MkdirTemp("", "shunt-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rules, err := defaultRules(ctx, opts.shunt)
	if err != nil {
		return nil, err
	}
	rulesFile := filepath.Join(dir, "rules")
	if err := os.WriteFile(rulesFile, rules, 0o600); err != nil {
		return nil, err
	}
	b := &bench{opts: opts, rules: rulesFile, dir: dir}
	results := make([]result, len(opts.variants))
	for j, v := range opts.variants {
		results[j] = result{variant: v, times: map[string][]time.Duration{}}
	}
	for i := range opts.warmup + opts.n {
		for j, v := range opts.variants {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			times, istioDiffers, err := b.round(ctx, v, i)
			if ctx.Err() != nil {
				return nil, errors.New("interrupted")
			}
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", v, i+1, err)
			}
			if i < opts.warmup {
				continue
			}
			for k, d := range times {
				results[j].times[k] = append(results[j].times[k], d)
			}
			if istioDiffers {
				results[j].istioDiffers++
			}
		}
	}
	return results, nil
}

// defaultRules returns the IPv4 iptables-restore input of `shunt iptables --dry-run` with the
// injector's arguments, run in a pod.
func defaultRules(ctx context.Context, shunt string) ([]byte, error) {
	p, err := newPod()
	if err != nil {
		return nil, err
	}
	defer p.Close()
	out, err := p.output(exec.CommandContext(ctx, shunt, append([]string{"iptables", "--dry-run"}, injectorArgs...)...))
	if err != nil {
		return nil, err
	}
	const header = "# iptables-restore (IPv4)\n"
	_, rules, ok := bytes.Cut(out, []byte(header))
	if !ok || bytes.Contains(rules, []byte("\n# ")) || !bytes.Contains(rules, []byte("-A OUTPUT -j ISTIO_OUTPUT")) {
		return nil, fmt.Errorf("shunt iptables --dry-run: want one %q section with the ISTIO_OUTPUT jump, got:\n%s",
			strings.TrimSpace(header), out)
	}
	return rules, nil
}

type bench struct {
	opts  *options
	rules string // file holding the floors' restore input
	dir   string // for the processes' output
}

// round times each binary and each floor once for variant, each in a fresh pod, in an order rotated
// by i. It returns the times by kind, and whether Istio's rules differed from the floor's.
func (b *bench) round(ctx context.Context, variant string, i int) (map[string]time.Duration, bool, error) {
	// native is shunt's nftables backend, next to the floor of iptables-nft-restore.
	floorVariant := variant
	if variant == "native" {
		floorVariant = "nft"
	}
	type step struct {
		kind  string
		cmd   func() *exec.Cmd
		stdin string
	}
	binary := func(path string) func() *exec.Cmd {
		return func() *exec.Cmd { return exec.CommandContext(ctx, path, binaryArgs(path, variant)...) }
	}
	restore := func(v string) func() *exec.Cmd {
		return func() *exec.Cmd { return exec.CommandContext(ctx, "iptables-"+v+"-restore", "--noflush") }
	}
	steps := []step{
		{kindShunt, binary(b.opts.shunt), os.DevNull},
		{kindInit, binary(b.opts.shuntInit), os.DevNull},
		{kindFloor, restore(floorVariant), b.rules},
	}
	if variant != "legacy" {
		steps = append(steps, step{kindLeg, restore("legacy"), b.rules})
	}
	if b.opts.istio != "" {
		steps = append(steps, step{kindIstio, binary(b.opts.istio), os.DevNull})
	}
	steps = append(steps, step{kindGo, func() *exec.Cmd { return exec.CommandContext(ctx, b.opts.goEmpty) }, os.DevNull})
	pods := map[string]*pod{}
	defer func() {
		for _, p := range pods {
			p.Close()
		}
	}()
	for _, s := range steps {
		p, err := newPod()
		if err != nil {
			return nil, false, err
		}
		pods[s.kind] = p
	}
	times := map[string]time.Duration{}
	for j := range steps {
		s := steps[(i+j)%len(steps)]
		d, err := b.timed(pods[s.kind], s.cmd(), s.stdin)
		if err != nil {
			return nil, false, err
		}
		times[s.kind] = d
	}

	// Not timed: prove that each did the work the floor did.
	want, err := pods[kindFloor].save(ctx, floorVariant)
	if err != nil {
		return nil, false, err
	}
	if p := pods[kindLeg]; p != nil {
		got, err := p.save(ctx, "legacy")
		if err != nil {
			return nil, false, err
		}
		if got != want {
			return nil, false, fmt.Errorf("iptables-legacy-restore's rules differ from iptables-%s-restore's\nlegacy:\n%s\n%s:\n%s",
				floorVariant, got, floorVariant, want)
		}
	}
	istioDiffers := false
	for _, s := range steps {
		if s.kind != kindShunt && s.kind != kindInit && s.kind != kindIstio {
			continue
		}
		p := pods[s.kind]
		if variant == "native" {
			got, err := p.output(exec.CommandContext(ctx, "nft", "list", "table", "inet", "istio-proxy-nat"))
			if err != nil {
				return nil, false, fmt.Errorf("%s: %w", s.kind, err)
			}
			if !bytes.Contains(got, []byte("jump istio-output")) || !bytes.Contains(got, []byte("redirect to :15001")) {
				return nil, false, fmt.Errorf("%s --native-nftables exited 0 but programmed no output jump and redirect:\n%s", s.kind, got)
			}
			continue
		}
		got, err := p.save(ctx, variant)
		if err != nil {
			return nil, false, err
		}
		if !strings.Contains(got, "-A OUTPUT -j ISTIO_OUTPUT") {
			return nil, false, fmt.Errorf("%s exited 0 but programmed no ISTIO_OUTPUT jump; the nat table holds:\n%s", s.kind, got)
		}
		switch {
		case got == want:
		case s.kind == kindIstio:
			istioDiffers = true
		default:
			return nil, false, fmt.Errorf("%s's rules differ from the floor's\n%s:\n%s\nfloor:\n%s", s.kind, s.kind, got, want)
		}
	}
	return times, istioDiffers, nil
}

// timed runs cmd in p with stdin read from the file stdin and returns the wall time from its start to
// its exit. Both kinds of process are started the same way: from a thread in p's namespace, every
// standard stream a file opened beforehand, environment inherited.
func (b *bench) timed(p *pod, cmd *exec.Cmd, stdin string) (time.Duration, error) {
	in, err := os.Open(stdin)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.CreateTemp(b.dir, "out-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, out
	var d time.Duration
	err = netns.Do(nsPath(p.ns), func() error {
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		err := cmd.Wait()
		d = time.Since(start)
		return err
	})
	if err != nil {
		msg, _ := os.ReadFile(out.Name())
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(msg))
	}
	return d, nil
}

// pod is a pod-like network namespace: lo up, eth0 with podAddr and a default route via nodeAddr on
// the other end of its veth pair, which lies in a second namespace (the node's side). Both namespaces
// live only as long as the files referring to them: Close, or bench's exit however it comes, removes
// them with their devices and tables.
type pod struct {
	ns, node *os.File
}

func newPod() (_ *pod, err error) {
	p := &pod{}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.node, err = newNetNS(); err != nil {
		return nil, err
	}
	if p.ns, err = newNetNS(); err != nil {
		return nil, err
	}
	// The veth pair is made on the node's side, its eth0 end born in the pod.
	err = withHandle(p.node, func(h *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(p.ns.Fd()))}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth pair: %w", err)
		}
		return linkUp(h, "veth0", nodeAddr)
	})
	if err != nil {
		return nil, err
	}
	err = withHandle(p.ns, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo", ""); err != nil {
			return err
		}
		if err := linkUp(h, "eth0", podAddr); err != nil {
			return err
		}
		gw, _, _ := net.ParseCIDR(nodeAddr)
		if err := h.RouteAdd(&netlink.Route{Gw: gw}); err != nil {
			return fmt.Errorf("add default route: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// withHandle calls fn with a netlink handle of the namespace ns.
func withHandle(ns *os.File, fn func(*netlink.Handle) error) error {
	return netns.Do(nsPath(ns), func() error {
		h, err := netlink.NewHandle() // its socket belongs to the thread's namespace: ns
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		return fn(h)
	})
}

// linkUp gives the link name the address addr (none when empty) and sets it up.
func linkUp(h *netlink.Handle, name, addr string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// output runs cmd in p and returns its standard output; an error carries its standard error.
func (p *pod) output(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := netns.Do(nsPath(p.ns), cmd.Run); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// save returns the pod's iptables rules of variant, without comments and counters.
func (p *pod) save(ctx context.Context, variant string) (string, error) {
	out, err := p.output(exec.CommandContext(ctx, "iptables-"+variant+"-save"))
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, ":") {
			line, _, _ = strings.Cut(line, " [") // ":OUTPUT ACCEPT [0:0]"
			line += "\n"
		}
		b.WriteString(line)
	}
	return b.String(), nil
}

// Close removes the pod's namespaces.
func (p *pod) Close() error {
	var errs []error
	for _, f := range []*os.File{p.ns, p.node} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// newNetNS returns a new network namespace. The calling thread's namespace does not change: the
// namespace is made on an OS thread of its own, which ends with it.
func newNetNS() (*os.File, error) {
	var ns *os.File
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no unlock: the runtime ends the thread with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		var err error
		ns, err = os.Open("/proc/thread-self/ns/net")
		errc <- err
	}()
	return ns, <-errc
}

// nsPath names the network namespace open as f, for netns.Do.
func nsPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
