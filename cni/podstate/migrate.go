package podstate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/shuntmesh/shunt/backend"
)

// Outcomes of a pod's migration.
const (
	Migrated  = "migrated"  // the target's rules in place, every other backend's removed
	Unchanged = "unchanged" // the target alone held the pod's rules already
	Failed    = "failed"    // the migration stopped (Err); the pod is captured by the old or new rules
	Forgotten = "forgotten" // the sandbox's namespace is gone: its record was removed
)

// Result is what MigrateAll did to one pod.
type Result struct {
	Pod         string   `json:"pod"`
	ContainerID string   `json:"container_id"`
	NetNS       string   `json:"netns"`
	From        []string `json:"from"` // the backends that held rules of ours before
	To          string   `json:"to"`
	Outcome     string   `json:"outcome"`
	Reason      string   `json:"reason,omitempty"`
	Err         string   `json:"error,omitempty"`
	Changes     []string `json:"changes,omitempty"`
}

// maxPasses bounds MigrateAll's passes over the records: a pod that ADD recorded (with the old
// backend) while a pass ran is taken by the next one.
const maxPasses = 3

// MigrateAll moves every recorded pod to the backend called target ("nftables", "iptables-nft" or
// "iptables-legacy") with backend.Migrate — the target's rules first, then the others removed, so no
// connection escapes the proxy, in TPROXY mode too — and records the new backend. Records whose
// namespace is gone are removed. One pod's failure does not stop the others. It holds the store's
// Lock throughout. It returns one Result per pod and the error of listing the records, if any.
func MigrateAll(ctx context.Context, s Store, target string, log *slog.Logger) ([]Result, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := backend.Named(target, backend.Settings{}); err != nil {
		return nil, err
	}
	// The node agent's drift audit must not check a pod half-way.
	unlock, err := s.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var results []Result
	seen := map[string]bool{}
	var listErr error
	for pass := 0; pass < maxPasses; pass++ {
		recs, err := s.List()
		listErr = err
		recs = slices.DeleteFunc(recs, func(r Record) bool { return seen[r.ContainerID] })
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if err := ctx.Err(); err != nil {
				return results, err
			}
			seen[r.ContainerID] = true
			res := migrateOne(ctx, s, r, target, log)
			results = append(results, res)
			attrs := []any{"pod", res.Pod, "container_id", res.ContainerID, "from", res.From, "to", target, "outcome", res.Outcome}
			switch {
			case res.Err != "":
				log.Error("pod not migrated", append(attrs, "error", res.Err)...)
			case res.Reason != "":
				log.Info("pod migration", append(attrs, "reason", res.Reason)...)
			default:
				log.Info("pod migration", attrs...)
			}
		}
	}
	return results, listErr
}

func migrateOne(ctx context.Context, s Store, r Record, target string, log *slog.Logger) Result {
	res := Result{Pod: r.Pod(), ContainerID: r.ContainerID, NetNS: r.NetNS, To: target}
	if _, err := os.Stat(r.NetNS); errors.Is(err, fs.ErrNotExist) {
		res.Outcome, res.Reason = Forgotten, "the sandbox's network namespace is gone"
		if err := s.Delete(r.ContainerID); err != nil {
			res.Outcome, res.Err = Failed, err.Error()
		}
		return res
	}
	found, err := backend.Installed(ctx, r.NetNS)
	if err != nil {
		res.Outcome, res.Err = Failed, fmt.Sprintf("read the installed rules: %v", err)
		return res
	}
	for _, f := range found {
		res.From = append(res.From, f.Backend)
	}
	if len(found) == 1 && found[0].Backend == target {
		res.Outcome = Unchanged
		res.Err = follow(s, r, target)
		return res
	}
	b, err := backend.Named(target, backend.Settings{NetNS: r.NetNS, Logger: log})
	if err != nil {
		res.Outcome, res.Err = Failed, err.Error()
		return res
	}
	res.Changes, err = backend.Migrate(ctx, b, r.Config, backend.Scope{NetNS: r.NetNS, Logger: log})
	if err != nil {
		res.Outcome, res.Err = Failed, err.Error()
		return res
	}
	res.Outcome = Migrated
	res.Err = follow(s, r, target)
	return res
}

// follow makes r's record name the backend that now holds the pod's rules, unless DEL removed the
// record meanwhile (the sandbox is going away). It returns what went wrong, or "".
func follow(s Store, r Record, target string) string {
	if r.Backend == target {
		return ""
	}
	if _, err := s.Get(r.ContainerID); err != nil {
		return ""
	}
	old := r.Backend
	r.Backend, r.Updated = target, time.Now().UTC()
	if err := s.Put(r); err != nil {
		return fmt.Sprintf("the rules are on %s, but the record still names %s: %v", target, old, err)
	}
	return ""
}
