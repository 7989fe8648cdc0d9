package cni

import (
	"errors"
	"net/netip"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/redirect"
)

// EBPFPod is what the node's eBPF agent needs to know of a pod joining it.
type EBPFPod struct {
	NetNS   string          // path of the pod's network namespace
	Config  redirect.Config // its capture settings, as for iptables
	IPs     []netip.Addr    // its addresses
	SockMsg bool            // splice its loopback sockets with sk_msg
}

// EBPFLayer is the eBPF data path of the node's agent whose maps are pinned at pinDir.
func EBPFLayer(pinDir string) DataPathLayer { return ebpfLayer{pinDir: pinDir} }

// ebpfLayer is the eBPF data path: the maps of the node's agent, pinned at pinDir.
type ebpfLayer struct{ pinDir string }

// Register adds pod to the agent's maps.
func (l ebpfLayer) Register(pod EBPFPod) error {
	node, err := shuntebpf.Open(l.pinDir)
	if err != nil {
		return err
	}
	defer node.Close()
	cookie, err := shuntebpf.NetNSCookie(pod.NetNS)
	if err != nil {
		return err
	}
	entry, err := shuntebpf.PodFromConfig(cookie, &pod.Config, pod.IPs)
	if err != nil {
		return err
	}
	entry.NoSockMsg = !pod.SockMsg
	if entry.UserNamespaced, err = shuntebpf.NetNSUserNamespaced(pod.NetNS); err != nil {
		return err
	}
	return node.AddPod(entry)
}

// Unregister removes the pod whose namespace is at netns from the agent's maps, if they hold it. A node
// without an agent has nothing to remove.
func (l ebpfLayer) Unregister(netns string) error {
	node, err := shuntebpf.Open(l.pinDir)
	if errors.Is(err, shuntebpf.ErrNotLoaded) {
		return nil
	}
	if err != nil {
		return err
	}
	defer node.Close()
	cookie, err := shuntebpf.NetNSCookie(netns)
	if err != nil {
		return err
	}
	return node.RemovePod(cookie)
}
