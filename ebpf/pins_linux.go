//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	cebpf "github.com/cilium/ebpf"
)

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
	{redirectProgShuntSendmsg4, cebpf.AttachCGroupUDP4Sendmsg},
	{redirectProgShuntSendmsg6, cebpf.AttachCGroupUDP6Sendmsg},
	{redirectProgShuntRecvmsg4, cebpf.AttachCGroupUDP4Recvmsg},
	{redirectProgShuntRecvmsg6, cebpf.AttachCGroupUDP6Recvmsg},
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
	redirectMapShuntMsgstate, redirectMapShuntOrigkey, redirectMapShuntAccepted, redirectMapShuntSockhash,
	redirectMapShuntStats, redirectMapShuntDnsdst, redirectMapShuntDnsstats,
}

// pinNames returns every pin a complete node has.
func pinNames() []string {
	names := slices.Clone(mapNames)
	for _, p := range cgroupPrograms {
		names = append(names, linkPinPrefix+p.name)
	}
	return append(names, progPinPrefix+redirectProgShuntSkMsg)
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

// field returns the field of m that holds the map called name, nil when there is none.
func (m *redirectMaps) field(name string) **cebpf.Map {
	switch name {
	case redirectMapShuntPods:
		return &m.ShuntPods
	case redirectMapShuntCidrs:
		return &m.ShuntCidrs
	case redirectMapShuntSets:
		return &m.ShuntSets
	case redirectMapShuntOrigdst:
		return &m.ShuntOrigdst
	case redirectMapShuntMsgstate:
		return &m.ShuntMsgstate
	case redirectMapShuntOrigkey:
		return &m.ShuntOrigkey
	case redirectMapShuntAccepted:
		return &m.ShuntAccepted
	case redirectMapShuntSockhash:
		return &m.ShuntSockhash
	case redirectMapShuntStats:
		return &m.ShuntStats
	case redirectMapShuntDnsdst:
		return &m.ShuntDnsdst
	case redirectMapShuntDnsstats:
		return &m.ShuntDnsstats
	}
	return nil
}

// byName returns the map called name.
func (m *redirectMaps) byName(name string) (*cebpf.Map, error) {
	f := m.field(name)
	if f == nil {
		return nil, fmt.Errorf("no map %s", name)
	}
	return *f, nil
}

// set makes v the map called name.
func (m *redirectMaps) set(name string, v *cebpf.Map) {
	if f := m.field(name); f != nil {
		*f = v
	}
}
