package testutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BPFFSMount is where the BPF file system is expected; NewPinDir mounts it
// there when it is not.
const BPFFSMount = "/sys/fs/bpf"

var (
	pinSeq   int64
	pinSeqMu sync.Mutex
	bpffsMu  sync.Mutex
)

// NewPinDir returns a fresh, empty directory on the BPF file system (which
// it mounts at BPFFSMount if nothing is mounted there) for one test's pins.
// When t ends the directory is removed with whatever is still pinned
// beneath it, which releases those objects. The mount is left in place:
// other processes may pin there too.
func NewPinDir(t testing.TB) string {
	t.Helper()
	if err := ensureBPFFS(); err != nil {
		t.Fatal(err)
	}
	pinSeqMu.Lock()
	pinSeq++
	dir := filepath.Join(BPFFSMount, fmt.Sprintf("shunt-test-%d-%d", os.Getpid(), pinSeq))
	pinSeqMu.Unlock()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("create pin directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pin directory: %v", err)
		}
	})
	return dir
}

// ensureBPFFS mounts a BPF file system at BPFFSMount unless one is there.
func ensureBPFFS() error {
	bpffsMu.Lock()
	defer bpffsMu.Unlock()
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFSMount, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", BPFFSMount, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpffs", BPFFSMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpf file system on %s: %w", BPFFSMount, err)
	}
	return nil
}

// PinnedFiles returns the paths of the files (pinned objects) beneath dir,
// none when dir does not exist.
func PinnedFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	return files, err
}

// BPFProgram is a loaded BPF program.
type BPFProgram struct {
	ID     cebpf.ProgramID
	Name   string // at most 15 bytes, as the kernel keeps it
	Type   cebpf.ProgramType
	MapIDs []cebpf.MapID
}

// BPFLink is a BPF link.
type BPFLink struct {
	ID      link.ID
	Program cebpf.ProgramID
	Type    link.Type
	// CgroupID is the cgroup of a cgroup link (see Cgroup.ID), zero for
	// other links.
	CgroupID uint64
}

// BPFMap is a BPF map.
type BPFMap struct {
	ID   cebpf.MapID
	Name string
	Type cebpf.MapType
}

// BPFObjects is an inventory of BPF objects in the kernel.
type BPFObjects struct {
	Programs []BPFProgram
	Links    []BPFLink
	Maps     []BPFMap
}

func (o BPFObjects) String() string {
	var b strings.Builder
	for _, p := range o.Programs {
		fmt.Fprintf(&b, "program %d %q %s maps %v\n", p.ID, p.Name, p.Type, p.MapIDs)
	}
	for _, l := range o.Links {
		fmt.Fprintf(&b, "link %d program %d type %d cgroup %d\n", l.ID, l.Program, l.Type, l.CgroupID)
	}
	for _, m := range o.Maps {
		fmt.Fprintf(&b, "map %d %q %s\n", m.ID, m.Name, m.Type)
	}
	return b.String()
}

// Empty reports whether o holds nothing.
func (o BPFObjects) Empty() bool {
	return len(o.Programs) == 0 && len(o.Links) == 0 && len(o.Maps) == 0
}

// ListBPF returns the loaded programs whose name starts with prefix (all
// of them for ""), the links of those programs, and the maps whose name
// starts with prefix. Objects that go away while it looks are left out.
func ListBPF(prefix string) (BPFObjects, error) {
	var o BPFObjects
	progs, err := listPrograms()
	if err != nil {
		return o, err
	}
	for _, p := range progs {
		if strings.HasPrefix(p.Name, prefix) {
			o.Programs = append(o.Programs, p)
		}
	}
	links, err := listLinks()
	if err != nil {
		return o, err
	}
	for _, l := range links {
		if slices.ContainsFunc(o.Programs, func(p BPFProgram) bool { return p.ID == l.Program }) {
			o.Links = append(o.Links, l)
		}
	}
	maps, err := listMaps()
	if err != nil {
		return o, err
	}
	for _, m := range maps {
		if strings.HasPrefix(m.Name, prefix) {
			o.Maps = append(o.Maps, m)
		}
	}
	return o, nil
}

// BPFForCgroup returns what is loaded for cgroup c: the programs attached
// to it (through links or not) and their links, every program that shares
// a map with those (an sk_msg program attached to their socket map), and
// the maps of all of them.
func BPFForCgroup(c *Cgroup) (BPFObjects, error) {
	var o BPFObjects
	progs, err := listPrograms()
	if err != nil {
		return o, err
	}
	links, err := listLinks()
	if err != nil {
		return o, err
	}
	mine := map[cebpf.ProgramID]bool{}
	for _, l := range links {
		if l.CgroupID == c.ID {
			mine[l.Program] = true
			o.Links = append(o.Links, l)
		}
	}
	attached, err := CgroupPrograms(c, false)
	if err != nil {
		return o, err
	}
	for _, id := range attached {
		mine[id] = true
	}
	// Close over shared maps.
	maps := map[cebpf.MapID]bool{}
	for changed := true; changed; {
		changed = false
		for _, p := range progs {
			shares := slices.ContainsFunc(p.MapIDs, func(id cebpf.MapID) bool { return maps[id] })
			if !mine[p.ID] && !shares {
				continue
			}
			if !mine[p.ID] {
				mine[p.ID], changed = true, true
			}
			for _, id := range p.MapIDs {
				if !maps[id] {
					maps[id], changed = true, true
				}
			}
		}
	}
	for _, p := range progs {
		if mine[p.ID] {
			o.Programs = append(o.Programs, p)
		}
	}
	for _, l := range links {
		if mine[l.Program] && l.CgroupID != c.ID {
			o.Links = append(o.Links, l)
		}
	}
	all, err := listMaps()
	if err != nil {
		return o, err
	}
	for _, m := range all {
		if maps[m.ID] {
			o.Maps = append(o.Maps, m)
		}
	}
	return o, nil
}

// StillLoaded returns the objects of o that are still in the kernel, found
// by ID.
func StillLoaded(o BPFObjects) (BPFObjects, error) {
	var left BPFObjects
	progs, err := listPrograms()
	if err != nil {
		return left, err
	}
	for _, p := range progs {
		if slices.ContainsFunc(o.Programs, func(q BPFProgram) bool { return q.ID == p.ID }) {
			left.Programs = append(left.Programs, p)
		}
	}
	links, err := listLinks()
	if err != nil {
		return left, err
	}
	for _, l := range links {
		if slices.ContainsFunc(o.Links, func(k BPFLink) bool { return k.ID == l.ID }) {
			left.Links = append(left.Links, l)
		}
	}
	maps, err := listMaps()
	if err != nil {
		return left, err
	}
	for _, m := range maps {
		if slices.ContainsFunc(o.Maps, func(k BPFMap) bool { return k.ID == m.ID }) {
			left.Maps = append(left.Maps, m)
		}
	}
	return left, nil
}

// cgroupAttachTypes are the attach types CgroupPrograms queries.
var cgroupAttachTypes = []cebpf.AttachType{
	cebpf.AttachCGroupInetIngress, cebpf.AttachCGroupInetEgress, cebpf.AttachCGroupInetSockCreate,
	cebpf.AttachCGroupSockOps, cebpf.AttachCGroupInet4Bind, cebpf.AttachCGroupInet6Bind,
	cebpf.AttachCGroupInet4Connect, cebpf.AttachCGroupInet6Connect,
	cebpf.AttachCGroupInet4PostBind, cebpf.AttachCGroupInet6PostBind,
	cebpf.AttachCGroupUDP4Sendmsg, cebpf.AttachCGroupUDP6Sendmsg,
	cebpf.AttachCGroupUDP4Recvmsg, cebpf.AttachCGroupUDP6Recvmsg,
	cebpf.AttachCGroupGetsockopt, cebpf.AttachCGroupSetsockopt,
	cebpf.AttachCgroupInet4GetPeername, cebpf.AttachCgroupInet6GetPeername,
	cebpf.AttachCgroupInet4GetSockname, cebpf.AttachCgroupInet6GetSockname,
	cebpf.AttachCgroupInetSockRelease,
}

// CgroupPrograms returns the programs of every socket-related cgroup
// attach type attached to c itself or, when effective, the programs that
// run for c's sockets: its own and those inherited from its ancestors.
func CgroupPrograms(c *Cgroup, effective bool) ([]cebpf.ProgramID, error) {
	var flags uint32
	if effective {
		flags = unix.BPF_F_QUERY_EFFECTIVE
	}
	var ids []cebpf.ProgramID
	for _, at := range cgroupAttachTypes {
		r, err := link.QueryPrograms(link.QueryOptions{Target: c.FD(), Attach: at, QueryFlags: flags})
		if err != nil {
			return nil, fmt.Errorf("query cgroup programs of attach type %s: %w", at, err)
		}
		for _, p := range r.Programs {
			ids = append(ids, p.ID)
		}
	}
	return ids, nil
}

func listPrograms() ([]BPFProgram, error) {
	var progs []BPFProgram
	var id cebpf.ProgramID
	for {
		next, err := cebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return progs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("next program after %d: %w", id, err)
		}
		id = next
		p, err := cebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("program %d: %w", id, err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			return nil, fmt.Errorf("program %d info: %w", id, err)
		}
		maps, _ := info.MapIDs()
		progs = append(progs, BPFProgram{ID: id, Name: info.Name, Type: info.Type, MapIDs: maps})
	}
}

func listLinks() ([]BPFLink, error) {
	var links []BPFLink
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			return nil, fmt.Errorf("link %d info: %w", it.ID, err)
		}
		l := BPFLink{ID: info.ID, Program: info.Program, Type: info.Type}
		if cg := info.Cgroup(); cg != nil {
			l.CgroupID = cg.CgroupId
		}
		links = append(links, l)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	return links, nil
}

func listMaps() ([]BPFMap, error) {
	var maps []BPFMap
	var id cebpf.MapID
	for {
		next, err := cebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return maps, nil
		}
		if err != nil {
			return nil, fmt.Errorf("next map after %d: %w", id, err)
		}
		id = next
		m, err := cebpf.NewMapFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("map %d: %w", id, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("map %d info: %w", id, err)
		}
		maps = append(maps, BPFMap{ID: id, Name: info.Name, Type: info.Type})
	}
}
