package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// measureRerun times, for each iptables variant of opts, the init container's second run (kubelet
// runs an init container again when the pod's sandbox survives) against a bare save of the same rules
// and the empty Go program (the floor of any Go binary), and a reconcile to another configuration
// against a fresh install of it. Each timed process gets a pod of its own, prepared untimed; rounds
// interleave the kinds in rotating order.
func measureRerun(ctx context.Context, opts *options) (map[string]map[string][]time.Duration, error) {
	out := map[string]map[string][]time.Duration{}
	b := &bench{opts: opts}
	dir, err := os.MkdirTemp("", "shunt-bench-rerun-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b.dir = dir
	for _, v := range opts.variants {
		if v == "native" {
			continue
		}
		out[v] = map[string][]time.Duration{}
	}
	init := func(variant string, extra ...string) *exec.Cmd {
		return exec.CommandContext(ctx, opts.shuntInit, append(binaryArgs(opts.shuntInit, variant), extra...)...)
	}
	for i := range opts.warmup + opts.n {
		for v := range out {
			for j := range rerunKinds {
				kind := rerunKinds[(i+j)%len(rerunKinds)]
				d, err := b.rerunRound(ctx, kind, v, init)
				if err != nil {
					return nil, fmt.Errorf("%s %s, round %d: %w", v, kind, i+1, err)
				}
				if i >= opts.warmup {
					out[v][kind] = append(out[v][kind], d)
				}
			}
		}
	}
	return out, nil
}

// rerunRound prepares a pod for kind, untimed, and times kind's process in it.
func (b *bench) rerunRound(ctx context.Context, kind, variant string, init func(string, ...string) *exec.Cmd) (time.Duration, error) {
	p, err := newPod()
	if err != nil {
		return 0, err
	}
	defer p.Close()
	tproxy := []string{"-m", "TPROXY"}
	if kind != kindFresh {
		if _, err := p.output(init(variant)); err != nil {
			return 0, err
		}
	}
	var cmd *exec.Cmd
	switch kind {
	case kindRerun:
		cmd = init(variant)
	case kindSave:
		cmd = exec.CommandContext(ctx, "iptables-"+variant+"-save")
	case kindEmptyGo:
		cmd = exec.CommandContext(ctx, b.opts.goEmpty)
	case kindReconcile:
		cmd = init(variant, append(tproxy, "--reconcile")...)
	case kindFresh:
		cmd = init(variant, tproxy...)
	default:
		return 0, errors.New("unknown kind " + kind)
	}
	return b.timed(p, cmd, os.DevNull)
}
