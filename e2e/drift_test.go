//go:build linux

package e2e

import (
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestRepairUnderTraffic is the node agent's drift repair as the kernel sees it: while the app keeps
// opening connections out and the remote keeps opening connections in, the pod's rules drift (another
// configuration's reconciled over them) and are reconciled back, again and again — the reconcile the
// agent runs for a drifted pod. Every connection reaches the proxy with its original destination, on
// every backend, in both modes: the repair itself opens no gap.
func TestRepairUnderTraffic(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range []variant{"nft", "legacy", native} {
		for _, mode := range modes {
			t.Run(v.title()+"/"+mode, func(t *testing.T) {
				t.Parallel()
				p := newPod(t, v)
				args := append(v.args(), injectorArgs(mode)...)
				p.capture(t, nil, args...)
				p.startProxy(t, mode)
				out, podApp := addr(ipv4.remote, appPort), addr(ipv4.pod, appPort)
				inboundPeer := ipv4.passthrough
				if mode == "TPROXY" {
					inboundPeer = ipv4.remote
				}
				outs := startStream(t, p.ns, appUser, out)
				ins := startStream(t, p.remote, root, podApp)
				outs.waitFor(3)
				ins.waitFor(3)
				// Drift that leaves this traffic captured (another port excluded), then the repair.
				drifted := append(append([]string(nil), args...), "-o", "9090", "--reconcile")
				for range 5 {
					n := outs.count() + ins.count()
					p.capture(t, nil, drifted...)
					p.capture(t, nil, append(args, "--reconcile")...)
					outs.waitFor(outs.count() + 1)
					ins.waitFor(ins.count() + 1)
					if outs.count()+ins.count() <= n {
						t.Fatal("no connection during a repair")
					}
				}
				o := outs.end(viaOutbound(out) + app("remote", ipv4.pod, out))
				i := ins.end(viaInbound(podApp) + app("pod", inboundPeer, podApp))
				t.Logf("%d outbound and %d inbound connections across 5 drifts and repairs", o, i)
			})
		}
	}
}
