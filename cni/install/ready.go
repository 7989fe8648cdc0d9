package install

import (
	"context"
	"os"
	"time"
)

// status is what readiness is made of.
type status struct {
	binOK, kubeOK bool
	entryOK       bool
	entryWhy      string // why the entry is not in place
	entryPath     string // file with our entry
	stopping      bool
	// conditions feeds the goroutine that keeps the Node condition (nil until the first state).
	conditions chan readyState
}

func (in *Installer) conditionStarted() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.status.conditions != nil || in.cfg.Client == nil
}

func (in *Installer) setStatus(f func(*status)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	f(&in.status)
}

// readiness reports whether the plugin is installed and verified, checking the conflist and the
// binary on disk, and why not.
func (in *Installer) readiness() (bool, string) {
	in.mu.Lock()
	s := in.status
	in.mu.Unlock()
	switch {
	case s.stopping:
		return false, "shutting down"
	case !s.binOK:
		return false, "plugin binary " + in.binPath + " not installed and verified"
	case !s.kubeOK:
		return false, "plugin kubeconfig " + in.cfg.KubeconfigFile + " not written"
	case !s.entryOK:
		return false, s.entryWhy
	}
	data, err := os.ReadFile(s.entryPath)
	if err != nil {
		return false, err.Error()
	}
	if _, same, err := FindEntry(data, in.entry); err != nil || !same {
		return false, "our entry is missing from " + s.entryPath
	}
	for _, b := range in.bins {
		if _, err := os.Stat(b.dst); err != nil {
			return false, err.Error()
		}
	}
	return true, "shunt-cni is installed in " + s.entryPath
}

// updateReady logs readiness changes and, the first time the plugin is ready, starts removing the
// node's startup taint.
func (in *Installer) updateReady(ctx context.Context) {
	ok, why := in.readiness()
	if ok == in.wasReady && in.conditionStarted() {
		return
	}
	in.wasReady = ok
	in.publishReady(ctx, ok, why)
	if !ok {
		in.metrics.ready.Set(0)
		in.log.Warn("shunt-cni not ready", "reason", why)
		return
	}
	in.metrics.ready.Set(1)
	in.log.Info("shunt-cni installed and ready", "conflist", in.status.entryPath, "binary", in.binPath,
		"kubeconfig", in.cfg.KubeconfigFile)
	if !in.readyOnce {
		in.readyOnce = true
		if in.cfg.Client != nil {
			in.wg.Go(func() { in.untaint(ctx) })
		}
		in.readyAt = time.Now()
		close(in.firstReady)
	}
}
