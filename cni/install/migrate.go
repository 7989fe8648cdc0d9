package install

import (
	"context"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/podstate"
)

// migratePods moves the node's recorded pods to the backend new pods get (Config.MigratePods).
func (in *Installer) migratePods(ctx context.Context) {
	target := backend.ForNewPods(backend.Settings{NativeNFTables: in.cfg.Entry.Backend == cni.BackendNFTables,
		IptablesVariant: in.cfg.Entry.IptablesVariant}).Backend
	in.log.Info("migrating the node's pods", "to", target, "state_dir", in.cfg.Entry.StateDir)
	results, err := podstate.MigrateAll(ctx, podstate.Store{Dir: in.cfg.Entry.StateDir}, target, in.log)
	count := map[string]int{}
	for _, r := range results {
		in.metrics.migrations.WithLabelValues(r.Outcome).Inc()
		count[r.Outcome]++
	}
	if err != nil {
		in.log.Error("read the pod records", "state_dir", in.cfg.Entry.StateDir, "error", err)
	}
	in.log.Info("node's pods migrated", "to", target, "migrated", count[podstate.Migrated],
		"unchanged", count[podstate.Unchanged], "failed", count[podstate.Failed],
		"forgotten", count[podstate.Forgotten])
}
