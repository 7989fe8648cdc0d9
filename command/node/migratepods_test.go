package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestMigratePodsRefuses: bad values and flags that do not go together are errors naming the flag and
// value, before anything runs.
func TestMigratePodsRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, `--to: invalid value ""`},
		{[]string{"--to", "ipvs"}, `--to: invalid value "ipvs"`},
		{[]string{"--to", "nftables", "--iptables-variant", "nft"}, `--iptables-variant: invalid value "nft": only with --to iptables`},
		{[]string{"--to", "iptables", "--iptables-variant", "nf"}, `--iptables-variant: invalid value "nf"`},
		{[]string{"--to", "nftables", "--state-dir", "pods"}, `--state-dir: invalid value "pods": not an absolute path`},
		{[]string{"--to", "nftables", "--network-namespace", "/x"}, "unknown flag: --network-namespace"},
	} {
		err := testutil.ParseCommand(newMigratePodsCmd(capture.Env{}), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
	var fe *redirect.FieldError
	if err := testutil.ParseCommand(newMigratePodsCmd(capture.Env{}), []string{"--to=x"}); !errors.As(err, &fe) {
		t.Errorf("bad --to: %v, want a field error", err)
	}
}

// TestMigratePodsOutput: a node with no record says so in both outputs and exits 0; a pod that cannot
// be migrated makes the exit status 2 with the pod named.
func TestMigratePodsOutput(t *testing.T) {
	testutil.RequireRoot(t)
	run := func(args ...string) (string, error) {
		var out, stderr bytes.Buffer
		cmd := newMigratePodsCmd(capture.Env{Stdout: &out, Stderr: &stderr})
		cmd.SetArgs(args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.Execute()
		return out.String(), err
	}
	dir := t.TempDir()
	out, err := run("--to", "nftables", "--state-dir", dir, "--json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("no records, --json: %v %q, want []", err, out)
	}
	// A record whose namespace is a plain file: it exists, and cannot be entered.
	ns := dir + "/not-a-namespace"
	if err := (podstate.Store{Dir: dir}).Put(podstate.Record{ContainerID: "c1", NetNS: ns, Namespace: "shop", Name: "cart",
		Backend: "iptables-nft", Config: redirect.DefaultConfig()}); err != nil {
		t.Fatal(err)
	}
	if err := writeEmpty(ns); err != nil {
		t.Fatal(err)
	}
	out, err = run("--to", "nftables", "--state-dir", dir, "--json")
	var ee *capture.ExitError
	if !errors.As(err, &ee) || ee.Code != ExitMigratePodsFailed {
		t.Errorf("a pod that cannot be migrated: %v, want exit %d", err, ExitMigratePodsFailed)
	}
	var results []podstate.Result
	if jerr := json.Unmarshal([]byte(out), &results); jerr != nil || len(results) != 1 || results[0].Pod != "shop/cart" || results[0].Outcome != podstate.Failed {
		t.Errorf("--json: %v %+v\n%s", jerr, results, out)
	}
	out, _ = run("--to", "nftables", "--state-dir", dir)
	if !strings.Contains(out, "shop/cart") || !strings.Contains(out, "failed") {
		t.Errorf("table output:\n%s", out)
	}
}

func writeEmpty(path string) error { return os.WriteFile(path, nil, 0o600) }
