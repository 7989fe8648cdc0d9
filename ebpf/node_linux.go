//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Node is a loaded fast path: its maps and, when Load attached them, its links. Close it when
// done; the pins keep everything in place until Unload.
type Node struct {
	pinDir string
	maps   redirectMaps
	links  []link.Link
	log    *slog.Logger
}

// cgroupPrograms are the programs attached to the cgroup, each pinned as a link named after it.
var cgroupPrograms = []struct {
	name   string
	attach cebpf.AttachType
}{
	{redirectProgShuntConnect4, cebpf.AttachCGroupInet4Connect},
	{redirectProgShuntConnect6, cebpf.AttachCGroupInet6Connect},
	{redirectProgShuntSockops, cebpf.AttachCGroupSockOps},
	{redirectProgShuntSockopt, cebpf.AttachCGroupGetsockopt},
	{redirectProgShuntPeername4, cebpf.AttachCgroupInet4GetPeername},
	{redirectProgShuntPeername6, cebpf.AttachCgroupInet6GetPeername},
}

// Pin names under the pin directory: maps by their names, links and the sk_msg program (attached
// to the socket hash, which has no bpf_link) with a prefix.
const (
	linkPinPrefix = "link_"
	progPinPrefix = "prog_"
)

// mapNames are every map of the programs, all pinned.
var mapNames = []string{
	redirectMapShuntPods, redirectMapShuntCidrs, redirectMapShuntSets, redirectMapShuntOrigdst,
	redirectMapShuntMsgstate, redirectMapShuntOrigkey, redirectMapShuntSockhash, redirectMapShuntStats,
}

// pinNames returns every pin a complete node has.
func pinNames() []string {
	names := slices.Clone(mapNames)
	for _, p := range cgroupPrograms {
		names = append(names, linkPinPrefix+p.name)
	}
	return append(names, progPinPrefix+redirectProgShuntSkMsg)
}

// Load loads the programs, attaches them to opts.Cgroup (as bpf_links, which never exclude other
// programs) and to the socket hash, and pins maps and links under opts.PinDir, mounting a bpffs at
// /sys/fs/bpf first when none is. When a complete node is already pinned there, Load opens it
// instead of attaching twice; it is an error if that node is attached to another cgroup. A partial
// one, left by a Load that died, is removed first. Load needs CAP_BPF, CAP_NET_ADMIN and
// CAP_SYS_ADMIN (root).
func Load(opts Options) (*Node, error) {
	log := logger(opts.Logger)
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	cgroup := opts.Cgroup
	if cgroup == "" {
		mounts, err := os.ReadFile("/proc/mounts")
		if err != nil {
			return nil, err
		}
		if cgroup, err = cgroup2Mount(mounts); err != nil {
			return nil, err
		}
	}
	cgroupID, err := cgroupID(cgroup)
	if err != nil {
		return nil, err
	}
	if err := ensureBPFFS(filepath.Dir(pinDir), log); err != nil {
		return nil, err
	}
	unlock, err := lockDir(filepath.Dir(pinDir))
	if err != nil {
		return nil, err
	}
	defer unlock()

	switch missing := missingPins(pinDir); {
	case len(missing) == 0:
		n, err := openNode(pinDir, log, true)
		if err != nil {
			return nil, err
		}
		if err := n.checkCgroup(cgroupID, cgroup); err != nil {
			n.Close()
			return nil, err
		}
		log.Debug("eBPF fast path already loaded", "pin_dir", pinDir, "cgroup", cgroup)
		return n, nil
	case len(missing) < len(pinNames()):
		log.Warn("removing a partially loaded eBPF fast path", "pin_dir", pinDir, "missing", missing)
		if err := unload(pinDir, log); err != nil {
			return nil, err
		}
	}

	n, err := load(pinDir, cgroup, log)
	if err != nil {
		return nil, errors.Join(err, unload(pinDir, log))
	}
	log.Info("eBPF fast path loaded", "pin_dir", pinDir, "cgroup", cgroup)
	return n, nil
}

func load(pinDir, cgroup string, log *slog.Logger) (*Node, error) {
	spec, err := loadRedirect()
	if err != nil {
		return nil, err
	}
	var objs redirectObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var verr *cebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load programs: %+v", verr)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	// The node keeps the maps; the programs are held by their links (and the socket hash).
	defer objs.redirectPrograms.Close()
	n := &Node{pinDir: pinDir, maps: objs.redirectMaps, log: log}
	fail := func(err error) (*Node, error) {
		n.Close()
		return nil, err
	}

	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fail(err)
	}
	for _, name := range mapNames {
		m, err := n.maps.byName(name)
		if err != nil {
			return fail(err)
		}
		if err := m.Pin(filepath.Join(pinDir, name)); err != nil {
			return fail(fmt.Errorf("pin map %s: %w", name, err))
		}
	}

	progs := map[string]*cebpf.Program{
		redirectProgShuntConnect4:  objs.ShuntConnect4,
		redirectProgShuntConnect6:  objs.ShuntConnect6,
		redirectProgShuntSockops:   objs.ShuntSockops,
		redirectProgShuntSockopt:   objs.ShuntSockopt,
		redirectProgShuntPeername4: objs.ShuntPeername4,
		redirectProgShuntPeername6: objs.ShuntPeername6,
	}
	// sk_msg first: a socket put in the hash before its program is attached would never get it.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  n.maps.ShuntSockhash.FD(),
		Program: objs.ShuntSkMsg,
		Attach:  cebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fail(fmt.Errorf("attach %s to %s: %w", redirectProgShuntSkMsg, redirectMapShuntSockhash, err))
	}
	if err := objs.ShuntSkMsg.Pin(filepath.Join(pinDir, progPinPrefix+redirectProgShuntSkMsg)); err != nil {
		return fail(fmt.Errorf("pin program %s: %w", redirectProgShuntSkMsg, err))
	}
	for _, p := range cgroupPrograms {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: p.attach, Program: progs[p.name]})
		if err != nil {
			return fail(fmt.Errorf("attach %s to cgroup %s: %w", p.name, cgroup, err))
		}
		n.links = append(n.links, l)
		// A cgroup attachment without bpf_link (kernels before 5.7) cannot be pinned.
		if err := l.Pin(filepath.Join(pinDir, linkPinPrefix+p.name)); err != nil {
			return fail(fmt.Errorf("pin link %s: %w", p.name, err))
		}
		log.Debug("attached", "program", p.name, "cgroup", cgroup)
	}
	return n, nil
}

// Open opens the pinned maps of the node loaded at pinDir (DefaultPinDir when empty), to register
// and remove pods. It returns an error wrapping ErrNotLoaded when nothing is loaded there, and an
// error when the pinned maps are not the ones this package's programs use (another version is
// loaded: Unload and Load again).
func Open(pinDir string) (*Node, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	return openNode(pinDir, nil, false)
}

func openNode(pinDir string, log *slog.Logger, withLinks bool) (*Node, error) {
	if missing := missingPins(pinDir); len(missing) > 0 {
		return nil, fmt.Errorf("%s: %w (missing %s)", pinDir, ErrNotLoaded, strings.Join(missing, ", "))
	}
	spec, err := loadRedirect()
	if err != nil {
		return nil, err
	}
	n := &Node{pinDir: pinDir, log: logger(log)}
	for _, name := range mapNames {
		m, err := cebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("open map %s: %w", name, err)
		}
		if err := spec.Maps[name].Compatible(m); err != nil {
			m.Close()
			n.Close()
			return nil, fmt.Errorf("pinned map %s is not this version's (unload and load again): %w", name, err)
		}
		n.maps.set(name, m)
	}
	if withLinks {
		for _, p := range cgroupPrograms {
			l, err := link.LoadPinnedLink(filepath.Join(pinDir, linkPinPrefix+p.name), nil)
			if err != nil {
				n.Close()
				return nil, fmt.Errorf("open link %s: %w", p.name, err)
			}
			n.links = append(n.links, l)
		}
	}
	return n, nil
}

// missingPins returns the pins of a complete node that pinDir lacks.
func missingPins(pinDir string) []string {
	var missing []string
	for _, name := range pinNames() {
		if _, err := os.Lstat(filepath.Join(pinDir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	return missing
}

// checkCgroup fails when the node's links attach to another cgroup than id.
func (n *Node) checkCgroup(id uint64, path string) error {
	for _, l := range n.links {
		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("link info: %w", err)
		}
		if cg := info.Cgroup(); cg != nil && cg.CgroupId != id {
			return fmt.Errorf("the eBPF fast path at %s is attached to cgroup id %d, not to %s (id %d): unload it first",
				n.pinDir, cg.CgroupId, path, id)
		}
	}
	return nil
}

// Close closes the node's file descriptors. The pins keep the programs attached and the maps in
// place.
func (n *Node) Close() error {
	var errs []error
	for _, l := range n.links {
		errs = append(errs, l.Close())
	}
	n.links = nil
	for _, name := range mapNames {
		if m, _ := n.maps.byName(name); m != nil {
			errs = append(errs, m.Close())
		}
		n.maps.set(name, nil)
	}
	return errors.Join(errs...)
}

// Unload detaches every program of the node pinned at pinDir (DefaultPinDir when empty) and
// removes its pins and the directory (an error if the directory holds anything else). Nothing of the node is left once the last file descriptor
// of its maps (a Node not yet closed) is closed; with none, nothing is left at return. Unloading
// what is not loaded is not an error.
func Unload(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Lstat(pinDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	unlock, err := lockDir(filepath.Dir(pinDir))
	if err != nil {
		return err
	}
	defer unlock()
	return unload(pinDir, logger(nil))
}

func unload(pinDir string, log *slog.Logger) error {
	var errs []error
	for _, p := range cgroupPrograms {
		path := filepath.Join(pinDir, linkPinPrefix+p.name)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open link %s: %w", p.name, err))
			continue
		}
		// Detach even while other processes hold the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p.name, err))
		}
		errs = append(errs, l.Unpin(), l.Close())
		log.Debug("detached", "program", p.name)
	}
	errs = append(errs, detachSkMsg(pinDir))
	// Only our pins: a directory that holds anything else is reported, not emptied.
	for _, name := range pinNames() {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unload %s: %w", pinDir, err)
	}
	log.Info("eBPF fast path unloaded", "pin_dir", pinDir)
	return nil
}

// detachSkMsg detaches the sk_msg program from the pinned socket hash, if both are there.
func detachSkMsg(pinDir string) error {
	prog, err := cebpf.LoadPinnedProgram(filepath.Join(pinDir, progPinPrefix+redirectProgShuntSkMsg), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open program %s: %w", redirectProgShuntSkMsg, err)
	}
	defer prog.Close()
	m, err := cebpf.LoadPinnedMap(filepath.Join(pinDir, redirectMapShuntSockhash), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open map %s: %w", redirectMapShuntSockhash, err)
	}
	defer m.Close()
	err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: cebpf.AttachSkMsgVerdict})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach %s: %w", redirectProgShuntSkMsg, err)
	}
	return nil
}

func (m *redirectMaps) byName(name string) (*cebpf.Map, error) {
	switch name {
	case redirectMapShuntPods:
		return m.ShuntPods, nil
	case redirectMapShuntCidrs:
		return m.ShuntCidrs, nil
	case redirectMapShuntSets:
		return m.ShuntSets, nil
	case redirectMapShuntOrigdst:
		return m.ShuntOrigdst, nil
	case redirectMapShuntMsgstate:
		return m.ShuntMsgstate, nil
	case redirectMapShuntOrigkey:
		return m.ShuntOrigkey, nil
	case redirectMapShuntSockhash:
		return m.ShuntSockhash, nil
	case redirectMapShuntStats:
		return m.ShuntStats, nil
	}
	return nil, fmt.Errorf("no map %s", name)
}

func (m *redirectMaps) set(name string, v *cebpf.Map) {
	switch name {
	case redirectMapShuntPods:
		m.ShuntPods = v
	case redirectMapShuntCidrs:
		m.ShuntCidrs = v
	case redirectMapShuntSets:
		m.ShuntSets = v
	case redirectMapShuntOrigdst:
		m.ShuntOrigdst = v
	case redirectMapShuntMsgstate:
		m.ShuntMsgstate = v
	case redirectMapShuntOrigkey:
		m.ShuntOrigkey = v
	case redirectMapShuntSockhash:
		m.ShuntSockhash = v
	case redirectMapShuntStats:
		m.ShuntStats = v
	}
}

// AddPod registers p, or replaces what was registered under its cookie, at once: the pod's new
// lists are written under a new generation before its entry switches to it, and the old
// generation's entries are removed after. Calls for the same cookie must not run concurrently;
// calls for different pods may.
func (n *Node) AddPod(p Pod) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%v: %w", p, err)
	}
	var gen uint16 = 1
	var old redirectPod
	if err := n.maps.ShuntPods.Lookup(p.Cookie, &old); err == nil {
		gen = old.Gen + 1
		if gen == 0 {
			gen = 1
		}
	} else if !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("%v: lookup: %w", p, err)
	}
	cidrs, sets := p.entries(gen)
	var written []any
	rollback := func(err error) error {
		for _, k := range written {
			switch k := k.(type) {
			case redirectCidrKey:
				_ = n.maps.ShuntCidrs.Delete(&k)
			case redirectSetKey:
				_ = n.maps.ShuntSets.Delete(&k)
			}
		}
		return fmt.Errorf("%v: %w", p, err)
	}
	one := uint8(1)
	for _, k := range cidrs {
		if err := n.maps.ShuntCidrs.Update(&k, &one, cebpf.UpdateAny); err != nil {
			return rollback(fmt.Errorf("add prefix: %w", err))
		}
		written = append(written, k)
	}
	for _, k := range sets {
		if err := n.maps.ShuntSets.Update(&k, &one, cebpf.UpdateAny); err != nil {
			return rollback(fmt.Errorf("add port or group: %w", err))
		}
		written = append(written, k)
	}
	v := p.kernel(gen)
	if err := n.maps.ShuntPods.Update(p.Cookie, &v, cebpf.UpdateAny); err != nil {
		return rollback(fmt.Errorf("add pod: %w", err))
	}
	if err := n.deleteEntries(p.Cookie, gen); err != nil {
		return fmt.Errorf("%v: remove the previous settings: %w", p, err)
	}
	n.log.Debug("pod added", "netns_cookie", p.Cookie, "generation", gen, "prefixes", len(cidrs), "set_entries", len(sets))
	return nil
}

// RemovePod unregisters the pod of the namespace cookie: its new connections are no longer
// captured (established ones keep their redirection). Removing an unknown pod is not an error.
func (n *Node) RemovePod(cookie uint64) error {
	if err := n.maps.ShuntPods.Delete(cookie); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove pod netns cookie %d: %w", cookie, err)
	}
	if err := n.deleteEntries(cookie, 0); err != nil {
		return fmt.Errorf("remove pod netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Pods returns the namespace cookies of the registered pods, in increasing order.
func (n *Node) Pods() ([]uint64, error) {
	var cookies []uint64
	var cookie uint64
	var pod redirectPod
	it := n.maps.ShuntPods.Iterate()
	for it.Next(&cookie, &pod) {
		cookies = append(cookies, cookie)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.Sort(cookies)
	return slices.Compact(cookies), nil
}

// Stats returns the counters, summed over CPUs, and the number of pods registered.
func (n *Node) Stats() (Stats, error) {
	var s Stats
	fields := map[redirectStat]*uint64{
		redirectStatSTAT_CONNECT_REDIRECTED: &s.ConnectsRedirected,
		redirectStatSTAT_SOCKETS_PAIRED:     &s.SocketsPaired,
		redirectStatSTAT_MSG_REDIRECTED:     &s.MessagesRedirected,
		redirectStatSTAT_MSG_BYTES:          &s.BytesRedirected,
		redirectStatSTAT_MSG_MISS:           &s.RedirectMisses,
		redirectStatSTAT_MSG_FALLBACK:       &s.MessagesFallback,
		redirectStatSTAT_ORIGDST_ANSWERED:   &s.OrigDstAnswered,
		redirectStatSTAT_PEERNAME_ANSWERED:  &s.PeerNamesAnswered,
	}
	for idx, field := range fields {
		var perCPU []uint64
		if err := n.maps.ShuntStats.Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("read counter %d: %w", idx, err)
		}
		for _, v := range perCPU {
			*field += v
		}
	}
	pods, err := n.Pods()
	if err != nil {
		return Stats{}, err
	}
	s.Pods = len(pods)
	return s, nil
}

// deleteEntries removes the prefix and set entries of cookie of every generation but keep (0
// keeps none).
func (n *Node) deleteEntries(cookie uint64, keep uint16) error {
	var errs []error
	var cidrs []redirectCidrKey
	errs = append(errs, keys(n.maps.ShuntCidrs, func(k redirectCidrKey) {
		if k.Cookie == cookie && (keep == 0 || k.Gen != keep) {
			cidrs = append(cidrs, k)
		}
	}))
	for _, k := range cidrs {
		if err := n.maps.ShuntCidrs.Delete(&k); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	var sets []redirectSetKey
	errs = append(errs, keys(n.maps.ShuntSets, func(k redirectSetKey) {
		if k.Cookie == cookie && (keep == 0 || k.Gen != keep) {
			sets = append(sets, k)
		}
	}))
	for _, k := range sets {
		if err := n.maps.ShuntSets.Delete(&k); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keys calls fn with every key of m. It walks with NextKey only, which every map type supports
// (the values of some, like the socket hash, cannot be read).
func keys[K any](m *cebpf.Map, fn func(K)) error {
	var k K
	var next K
	first := true
	// A key deleted under the walk restarts it from the start; the bound keeps that finite.
	for range int(m.MaxEntries())*2 + 16 {
		var err error
		if first {
			err = m.NextKey(nil, &next)
		} else {
			err = m.NextKey(&k, &next)
		}
		if errors.Is(err, cebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		fn(next)
		k, first = next, false
	}
	return fmt.Errorf("walk of map %v did not end", m)
}

// kernel returns p as the value of shunt_pods for generation gen.
func (p *Pod) kernel(gen uint16) redirectPod {
	v := redirectPod{
		ProxyPort:   p.ProxyPort,
		InboundPort: p.InboundPort,
		DnsPort:     p.DNSPort,
		Gen:         gen,
	}
	for i := range MaxProxyIDs {
		v.Uids[i], v.Gids[i] = ^uint32(0), ^uint32(0)
		if i < len(p.ProxyUIDs) {
			v.Uids[i] = p.ProxyUIDs[i]
		}
		if i < len(p.ProxyGIDs) {
			v.Gids[i] = p.ProxyGIDs[i]
		}
	}
	lo := p.HostLoopback.Masked()
	v.Lo4Addr = nativeBE(lo.Addr().As4())
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-lo.Bits()))
	v.Lo4Mask = nativeBE(mask)
	flags := map[redirectPodFlag]bool{
		redirectPodFlagPOD_NO_SOCKMSG:     p.NoSockMsg,
		redirectPodFlagPOD_IPV6:           p.IPv6,
		redirectPodFlagPOD_INCLUDE_ALL:    p.IncludeAll,
		redirectPodFlagPOD_CAPTURE_LOCAL:  p.captureLocal(),
		redirectPodFlagPOD_DNS:            p.DNSPort != 0,
		redirectPodFlagPOD_DNS_ALL:        p.DNSPort != 0 && p.DNSAll,
		redirectPodFlagPOD_GROUPS_INCLUDE: !p.OwnerGroups.All,
	}
	for f, on := range flags {
		if on {
			v.Flags |= f
		}
	}
	return v
}

// entries returns the keys of p's prefixes and set entries for generation gen.
func (p *Pod) entries(gen uint16) ([]redirectCidrKey, []redirectSetKey) {
	var cidrs []redirectCidrKey
	add := func(kind redirectCidrKind, pr netip.Prefix) {
		cidrs = append(cidrs, cidrKey(p.Cookie, gen, kind, pr))
	}
	for _, ip := range p.IPs {
		add(redirectCidrKindCIDR_SELF, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
	}
	for _, pr := range p.Exclude {
		add(redirectCidrKindCIDR_EXCLUDE, pr)
	}
	if !p.IncludeAll {
		for _, pr := range p.Include {
			add(redirectCidrKindCIDR_INCLUDE, pr)
		}
	}
	if p.DNSPort != 0 && !p.DNSAll {
		for _, s := range p.DNSServers {
			add(redirectCidrKindCIDR_DNS, netip.PrefixFrom(s.Unmap(), s.Unmap().BitLen()))
		}
	}
	var sets []redirectSetKey
	set := func(kind redirectSetKind, v uint32) {
		sets = append(sets, redirectSetKey{Cookie: p.Cookie, Kind: kind, Value: v, Gen: gen})
	}
	for _, port := range p.PortsExclude {
		set(redirectSetKindSET_PORT_EXCLUDE, uint32(port))
	}
	for _, port := range p.Ports {
		set(redirectSetKindSET_PORT_INCLUDE, uint32(port))
	}
	if p.OwnerGroups.All {
		for _, g := range p.OwnerGroups.Exclude {
			set(redirectSetKindSET_GID_EXCLUDE, g)
		}
	} else {
		for _, g := range p.OwnerGroups.Include {
			set(redirectSetKindSET_GID_INCLUDE, g)
		}
	}
	return cidrs, sets
}

// cidrBits is the length of the part of a shunt_cidrs key before the address (CIDR_FIXED_BITS).
const cidrBits = 128

func cidrKey(cookie uint64, gen uint16, kind redirectCidrKind, pr netip.Prefix) redirectCidrKey {
	pr = pr.Masked()
	a := pr.Addr()
	bits := pr.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), max(bits-96, 0)
	}
	k := redirectCidrKey{Prefixlen: uint32(cidrBits + bits), Kind: kind, Cookie: cookie, Gen: gen, Family: 6}
	if a.Is4() {
		k.Family = 4
		k.Addr[0] = nativeBE(a.As4())
	} else {
		b := a.As16()
		for i := range 4 {
			k.Addr[i] = nativeBE([4]byte(b[4*i : 4*i+4]))
		}
	}
	return k
}

// nativeBE returns the uint32 whose in-memory bytes (on this little- or big-endian host) are b,
// as the kernel programs see a network byte order address.
func nativeBE(b [4]byte) uint32 { return binary.NativeEndian.Uint32(b[:]) }

// ensureBPFFS makes sure dir is on a bpffs, mounting one when dir is /sys/fs/bpf.
func ensureBPFFS(dir string, log *slog.Logger) error {
	var st unix.Statfs_t
	err := unix.Statfs(dir, &st)
	if err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if filepath.Clean(dir) != "/sys/fs/bpf" {
		if err != nil {
			return fmt.Errorf("pin directory parent %s: %w", dir, err)
		}
		return fmt.Errorf("pin directory parent %s is not on a bpf file system", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	log.Info("mounted bpffs", "path", dir)
	return nil
}

// lockDir takes an exclusive flock on dir, serialising Load and Unload between processes.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// cgroupID returns the id of the cgroup v2 directory path (its inode number).
func cgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not a cgroup v2 directory", path)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return s.Ino, nil
}
