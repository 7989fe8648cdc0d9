//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

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
	cg := testutil.NewCgroup(t).Path
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
	other := testutil.NewCgroup(t).Path
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
