//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Node is a loaded fast path: its maps and, when Load attached them, its links. Close it when
// done; the pins keep everything in place until Unload.
type Node struct {
	pinDir string
	maps   redirectMaps
	links  []link.Link
	log    *slog.Logger
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
	owner, _ := OwnerIDs()
	log.Info("eBPF fast path loaded", "pin_dir", pinDir, "cgroup", cgroup, "owner_ids", owner)
	return n, nil
}

func load(pinDir, cgroup string, log *slog.Logger) (*Node, error) {
	spec, err := redirectSpec()
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
		redirectProgShuntSendmsg4:  objs.ShuntSendmsg4,
		redirectProgShuntSendmsg6:  objs.ShuntSendmsg6,
		redirectProgShuntRecvmsg4:  objs.ShuntRecvmsg4,
		redirectProgShuntRecvmsg6:  objs.ShuntRecvmsg6,
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
