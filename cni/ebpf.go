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

// joinEBPF registers pod in the maps of the eBPF agent pinned at pinDir.
func joinEBPF(pinDir string, pod EBPFPod) error {
	node, err := shuntebpf.Open(pinDir)
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
	return node.AddPod(entry)
}

// leaveEBPF removes the pod whose namespace is at netns from the agent's maps, if they hold it. A node
// without an agent has nothing to remove.
func leaveEBPF(pinDir, netns string) error {
	node, err := shuntebpf.Open(pinDir)
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
