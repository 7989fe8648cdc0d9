//go:build linux

package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil/cri"
)

// podStatus is one pod of `shunt status --json`.
type podStatus struct {
	Pod         string `json:"pod"`
	ContainerID string `json:"container_id"`
	Backend     string `json:"backend"`
	State       string `json:"state"`
	Drift       string `json:"drift"`
}

// nodeStatus runs `shunt status --json` on the records in stateDir and returns the statuses by sandbox
// ID and the exit code.
func nodeStatus(t *testing.T, stateDir string) (map[string]podStatus, int) {
	t.Helper()
	out, err := exec.Command(bins.Path(t, pkgShunt), "status", "--json", "--state-dir", stateDir).Output()
	code := exitCode(err)
	var sts []podStatus
	if jerr := json.Unmarshal(out, &sts); jerr != nil {
		t.Fatalf("shunt status --json: exit %d (%v): %v\n%s", code, err, jerr, out)
	}
	byID := map[string]podStatus{}
	for _, st := range sts {
		byID[st.ContainerID] = st
	}
	return byID, code
}

// testNodeStatusAndMigration checks, on a containerd node whose pods were set up by the installed
// plugin (records in stateDir), that `shunt status --json` lists every pod captured on iptables-nft,
// that `shunt migrate-pods --to nftables` moves them all — their iptables rules gone, Istio's native
// nftables tables in place — and that status then lists them captured on nftables.
func testNodeStatusAndMigration(t *testing.T, stateDir string, pods ...*cri.Pod) {
	captured := func(t *testing.T, backend string) {
		t.Helper()
		sts, code := nodeStatus(t, stateDir)
		if code != 0 {
			t.Errorf("shunt status: exit %d, want 0: %+v", code, sts)
		}
		for _, p := range pods {
			st, ok := sts[p.ID]
			if !ok || st.State != "captured" || st.Backend != backend {
				t.Errorf("sandbox %.12s: status %+v (listed %v), want captured on %s", p.ID, st, ok, backend)
			}
		}
	}
	t.Run("status", func(t *testing.T) { captured(t, "iptables-nft") })
	t.Run("migrate_pods", func(t *testing.T) {
		out, err := exec.Command(bins.Path(t, pkgShunt), "migrate-pods", "--to", "nftables", "--state-dir", stateDir, "--json").Output()
		if err != nil {
			t.Fatalf("shunt migrate-pods: %v\n%s", err, out)
		}
		var results []struct {
			Pod         string `json:"pod"`
			ContainerID string `json:"container_id"`
			Outcome     string `json:"outcome"`
		}
		if err := json.Unmarshal(out, &results); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		migrated := map[string]string{}
		for _, r := range results {
			migrated[r.ContainerID] = r.Outcome
		}
		for _, p := range pods {
			if migrated[p.ID] != "migrated" {
				t.Errorf("sandbox %.12s: outcome %q, want migrated:\n%s", p.ID, migrated[p.ID], out)
			}
			if rules := ourRules(save(t, p.NetNS, false)); rules != "" {
				t.Errorf("sandbox %.12s: iptables rules remain after the migration:\n%s", p.ID, rules)
			}
			if nft := p.NetNS.Run(t, "nft", "list", "table", "inet", "istio-proxy-nat"); !strings.Contains(nft, "istio-output") {
				t.Errorf("sandbox %.12s: no native nftables rules after the migration:\n%s", p.ID, nft)
			}
		}
		captured(t, "nftables")
	})
}
