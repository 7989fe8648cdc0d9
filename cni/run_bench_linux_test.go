package cni

import (
	"context"
	"fmt"
	"testing"

	"github.com/shuntmesh/shunt/cni/shim"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// BenchmarkRunAdd is the node agent's share of a meshed pod's ADD, as it runs a command for the shim:
// a pod from the agent's watch (here a fixed one), the backend chosen, the rules programmed in a
// real namespace, the record written and the report sent. Each iteration is a new namespace's first
// ADD; the namespaces are made outside the timer.
func BenchmarkRunAdd(b *testing.B) {
	testutil.RequireRoot(b)
	pod := dualStack(meshedPod(nil))
	p := Plugin{GetPod: func(context.Context, *NetConf, string, string, string) (*Pod, string, error) {
		return pod, PodSourceAgent, nil
	}, InAgent: true}
	nss := make([]*testutil.NetNS, b.N)
	for i := range nss {
		nss[i] = testutil.NewNetNS(b)
	}
	conf := withPrev(b, "")
	b.ResetTimer()
	for i := range b.N {
		req := &shim.Request{Command: "ADD", ContainerID: fmt.Sprintf("c%d", i), Netns: nss[i].Path(), IfName: "eth0",
			Args: podArgs, Path: "/opt/cni/bin", Stdin: conf}
		if resp := p.Run(req); resp.Failed {
			b.Fatalf("ADD: %s", resp.Output)
		}
	}
}
