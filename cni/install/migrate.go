package install

import (
	"context"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/podstate"
)

// podsLoop acts on the pods the plugin recorded: with Config.MigratePods, once the plugin is installed
// (the conflist names the new backend, so pods added from then on get it), it moves them to the
// node's backend; then it audits them until ctx is done (Config.Audit). A migration is never audited
// half-way: the audit starts after it.
func (in *Installer) podsLoop(ctx context.Context) {
	if in.cfg.MigratePods {
		select {
		case <-ctx.Done():
			return
		case <-in.firstReady:
		}
		in.migratePods(ctx)
	}
	if in.audit != nil {
		in.audit.loop(ctx)
	}
}

// migratePods moves the node's recorded pods to the backend new pods get (Config.MigratePods).
func (in *Installer) migratePods(ctx context.Context) {
	target := backend.ForNewPods(backend.Settings{NativeNFTables: in.cfg.Entry.Backend == cni.BackendNFTables,
		IptablesVariant: in.cfg.Entry.IptablesVariant}).Backend
	if in.audit != nil {
		in.audit.run.Lock() // no audit (POST /audit) of a pod half-way
		defer in.audit.run.Unlock()
	}
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
