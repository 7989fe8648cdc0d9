package node

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestStatus: a captured pod exits 0; the same pod with its rules changed behind the agent's back is
// drifted, with the differences, and exits 2; nothing is repaired.
func TestStatus(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	run := func(args ...string) (string, error) {
		var out, stderr bytes.Buffer
		cmd := newStatusCmd(capture.Env{Stdout: &out, Stderr: &stderr})
		cmd.SetArgs(args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.Execute()
		return out.String(), err
	}
	if _, err := run("--state-dir", "pods"); err == nil || !strings.Contains(err.Error(), `--state-dir: invalid value "pods"`) {
		t.Errorf("relative --state-dir: %v", err)
	}
	ns := testutil.NewNetNS(t)
	store := podstate.Store{Dir: t.TempDir()}
	cfg := redirect.DefaultConfig()
	b, err := backend.Named("nftables", backend.Settings{NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(c redirect.Config) {
		plan, err := b.Plan(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(ctx, &plan, backend.Mode{Reconcile: true}); err != nil {
			t.Fatal(err)
		}
	}
	apply(cfg)
	if err := store.Put(podstate.Record{ContainerID: "c1", NetNS: ns.Path(), Namespace: "shop", Name: "cart", Backend: "nftables", Config: cfg}); err != nil {
		t.Fatal(err)
	}
	out, err := run("--state-dir", store.Dir)
	if err != nil || !strings.Contains(out, "shop/cart") || !strings.Contains(out, "captured") {
		t.Errorf("captured pod: %v\n%s", err, out)
	}
	changed := cfg
	changed.OutboundPortsExclude = []uint16{9999}
	apply(changed)
	out, err = run("--state-dir", store.Dir)
	var ee *capture.ExitError
	if !errors.As(err, &ee) || ee.Code != ExitStatusNotCaptured || !strings.Contains(out, "drifted") || !strings.Contains(out, "istio-output: unexpected rule") {
		t.Errorf("drifted pod: %v, want exit %d and the difference:\n%s", err, ExitStatusNotCaptured, out)
	}
	if _, err := run("--state-dir", store.Dir); err == nil {
		t.Error("status repaired the pod")
	}
}
