package install

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// BenchmarkAudit times one drift audit of 100 pods, each in a namespace of its own holding the
// injector's rules (dual-stack) on the backend a new pod gets (iptables-nft), and reports the CPU time
// it takes — the node agent's cost every audit interval (target: ≤ 1 s of CPU for 100 pods).
func BenchmarkAudit(b *testing.B) {
	testutil.RequireRoot(b)
	const pods = 100
	ctx := context.Background()
	store := podstate.Store{Dir: b.TempDir()}
	cfg := redirect.DefaultConfig()
	cfg.IPv6 = true
	for i := range pods {
		ns := testutil.NewNetNS(b)
		be, err := backend.Named("iptables-nft", backend.Settings{NetNS: ns.Path()})
		if err != nil {
			b.Fatal(err)
		}
		plan, err := be.Plan(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := be.Apply(ctx, &plan, backend.Mode{}); err != nil {
			b.Fatal(err)
		}
		r := podstate.Record{ContainerID: fmt.Sprintf("c%03d", i), NetNS: ns.Path(), Namespace: "bench", Name: fmt.Sprintf("pod-%03d", i),
			Backend: "iptables-nft", Config: cfg}
		if err := store.Put(r); err != nil {
			b.Fatal(err)
		}
	}
	a := &auditor{store: store, log: slog.New(slog.DiscardHandler), metrics: newMetrics(), reported: map[string]string{}}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ResetTimer()
	start := cpu()
	for range b.N {
		for _, st := range a.audit(ctx) {
			if st.State != podstate.Captured {
				b.Fatalf("%s: %s %s%s", st.Pod, st.State, st.Drift, st.Err)
			}
		}
	}
	b.ReportMetric((cpu()-start).Seconds()/float64(b.N), "cpu-s/audit")
	b.ReportMetric(pods, "pods")
}
