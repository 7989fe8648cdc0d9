package install

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/shuntmesh/shunt/cni"
)

// addWatches watches the directories of the config, the binary and the token: files in them are
// replaced by rename, which a watch on the file itself would not survive.
func (in *Installer) addWatches(w *fsnotify.Watcher) error {
	dirs := []string{in.cfg.NetDir, in.cfg.BinDir, filepath.Dir(in.cfg.KubeconfigFile), filepath.Dir(in.cfg.TokenFile)}
	if in.cfg.CAFile != "" {
		dirs = append(dirs, filepath.Dir(in.cfg.CAFile))
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watch %s: %w", d, err)
		}
	}
	return nil
}

// classify says what an event concerns.
func (in *Installer) classify(ev fsnotify.Event) dirty {
	dir, name := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	if strings.HasPrefix(name, tempPrefix) || ev.Op == fsnotify.Chmod {
		return 0
	}
	var d dirty
	if dir == filepath.Clean(in.cfg.BinDir) && name == cni.PluginType {
		d |= dirtyBinary
	}
	switch {
	case dir == filepath.Clean(in.cfg.NetDir) && isConfigFile(name),
		ev.Name == filepath.Clean(in.cfg.KubeconfigFile),
		dir == filepath.Dir(in.cfg.TokenFile),
		in.cfg.CAFile != "" && dir == filepath.Dir(in.cfg.CAFile):
		d |= dirtyFiles
	}
	return d
}

// loop reconciles on file events, after a failure, and every Resync, until ctx is done.
func (in *Installer) loop(ctx context.Context, w *fsnotify.Watcher) {
	pending := dirtyAll
	timer := time.NewTimer(0)
	defer timer.Stop()
	var wakeAt time.Time
	wake := func(d time.Duration) {
		if at := time.Now().Add(d); wakeAt.IsZero() || at.Before(wakeAt) {
			wakeAt = at
			timer.Reset(d)
		}
	}
	resync := time.NewTicker(in.cfg.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if d := in.classify(ev); d != 0 {
				in.log.Debug("file event", "file", ev.Name, "op", ev.Op.String())
				pending |= d
				wake(in.cfg.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			in.log.Warn("file watch", "error", err) // events may be lost: look at everything
			pending = dirtyAll
			wake(in.cfg.Debounce)
		case <-resync.C:
			if err := in.addWatches(w); err != nil {
				in.log.Warn("file watch", "error", err)
			}
			pending = dirtyAll
			wake(0)
		case <-timer.C:
			wakeAt = time.Time{}
			var retry time.Duration
			pending, retry = in.reconcile(ctx, pending)
			if retry > 0 {
				wake(retry)
			}
			in.updateReady(ctx)
		}
	}
}
