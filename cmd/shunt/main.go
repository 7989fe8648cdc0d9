// Command shunt sets up transparent traffic interception for service-mesh sidecars: the capture
// commands (`shunt iptables`, a drop-in for Istio's istio-iptables, cleanup, validate), the CNI plugin
// and its node installer, and the eBPF data path. The init container has a leaner binary of its own,
// cmd/shunt-init.
package main

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/command/node"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/ebpf/agent"
	"github.com/shuntmesh/shunt/redirect"
)

func main() {
	// No signal handler here: it costs an OS thread at every start, and an init container's run is
	// over in a millisecond. Commands that wait (validation) install one.
	if runAsCNIPlugin() {
		return
	}
	capture.Exit("shunt", run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	env := capture.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}
	return capture.Execute(ctx, newRootCmd(env), args, env)
}

// newRootCmd returns the command tree: the capture commands, with --pod, and the node's.
func newRootCmd(env capture.Env) *cobra.Command {
	env.PodConfig = meshpod.ManifestConfig
	env.PodEBPF = podEBPF
	env.ConnectHook = connectHook
	env.EBPFState = ebpfState
	root := capture.NewRoot("shunt", "Transparent traffic interception for service-mesh sidecars")
	root.AddCommand(capture.Commands(env)...)
	root.AddCommand(capture.Tools(env)...)
	root.AddCommand(capture.NewMigrateCmd(env))
	root.AddCommand(node.Commands(env)...)
	return root
}

// podEBPF says whether the pod of a Pod manifest is on the eBPF data path (shunt.io/mode: ebpf).
func podEBPF(manifest []byte) (bool, error) {
	pod, err := meshpod.Decode(manifest)
	if err != nil {
		return false, err
	}
	dp, err := cni.DataPathForPod(pod.Metadata.Annotations)
	return dp.EBPF, err
}

// connectHook is the eBPF connect hook's decision for a connection of a pod captured with cfg, from
// the Pod entry the agent would write for it.
func connectHook(cfg *redirect.Config, podIPs []netip.Addr, c capture.HookConnect) (capture.HookDecision, error) {
	pod, err := shuntebpf.PodFromConfig(1, cfg, podIPs)
	if err != nil {
		return capture.HookDecision{}, err
	}
	d := shuntebpf.DecideConnect(&pod, shuntebpf.Connect{UDP: c.UDP, Dst: c.Dst, Src: c.Src, UID: c.UID, GID: c.GID})
	return capture.HookDecision{Verdict: d.Verdict.String(), Port: d.Port, Reason: d.Reason}, nil
}

// ebpfState reads the node's eBPF data path pinned in pinDir for the namespace at netns.
func ebpfState(pinDir, netns string) (capture.EBPFLive, error) {
	node, err := shuntebpf.Open(pinDir)
	if errors.Is(err, shuntebpf.ErrNotLoaded) {
		return capture.EBPFLive{}, nil
	}
	if err != nil {
		return capture.EBPFLive{}, err
	}
	defer node.Close()
	st, err := node.Stats()
	if err != nil {
		return capture.EBPFLive{}, err
	}
	cookies, err := node.Pods()
	if err != nil {
		return capture.EBPFLive{}, err
	}
	cookie, err := shuntebpf.NetNSCookie(netns)
	if err != nil {
		return capture.EBPFLive{}, err
	}
	return capture.EBPFLive{Loaded: true, Registered: slices.Contains(cookies, cookie), Counters: agent.Counters(st)}, nil
}
